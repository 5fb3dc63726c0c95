"""Calibration statistics and weight roundings as flat dicts of arrays, the form the cache keeps them in.

Keys are ``<part>/<tensor or layer name>/<field>``; a name may itself contain ``/`` (ONNX names often do),
so the field is the last part and the name everything between the first and the last.
"""

from __future__ import annotations

import numpy as np

from .channel_mean import ChannelMeanObserver
from .histogram import HistogramObserver


def pack_statistics(histograms: dict[str, HistogramObserver], means: dict[str, ChannelMeanObserver]) -> dict:
    """Histograms and channel means of one calibration pass as arrays."""
    arrays = {}
    for part, observers in (("histogram", histograms), ("mean", means)):
        for name, observer in observers.items():
            state = observer.state() or {"unfitted": np.zeros(0)}
            arrays.update({f"{part}/{name}/{field}": value for field, value in state.items()})
    return arrays


def unpack_statistics(arrays: dict, bins: int) -> tuple[dict[str, HistogramObserver], dict[str, ChannelMeanObserver]]:
    """The observers :func:`pack_statistics` packed, in their original order."""
    states: dict[tuple[str, str], dict] = {}
    for key, value in arrays.items():
        part, rest = key.split("/", 1)
        name, field = rest.rsplit("/", 1)
        states.setdefault((part, name), {})[field] = value
    histograms, means = {}, {}
    for (part, name), state in states.items():
        state = None if "unfitted" in state else state
        if part == "histogram":
            histograms[name] = HistogramObserver.from_state(bins, state)
        else:
            means[name] = ChannelMeanObserver.from_state(state)
    return histograms, means


def pack_roundings(roundings: dict[str, tuple[np.ndarray, str]]) -> dict:
    """Each layer's integer weights and how they were rounded (``nearest``, ``gptq(0.01)``...) as arrays."""
    arrays = {}
    for name, (q, how) in roundings.items():
        arrays[f"rounding/{name}/q"], arrays[f"rounding/{name}/how"] = q, np.array(how)
    return arrays


def unpack_roundings(arrays: dict) -> dict[str, tuple[np.ndarray, str]]:
    """The roundings :func:`pack_roundings` packed."""
    names = dict.fromkeys(key.split("/", 1)[1].rsplit("/", 1)[0] for key in arrays)
    return {name: (np.array(arrays[f"rounding/{name}/q"]), str(arrays[f"rounding/{name}/how"])) for name in names}
