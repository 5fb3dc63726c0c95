"""Calibration: one streaming float pass collects activation histograms; scales follow from them."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
import pandas as pd

from . import clip_methods
from .config import QuantConfig
from .errors import NotFittedError
from .graph import Layer, _copy, constants, find_layers
from .histogram import DEFAULT_BINS, HistogramObserver
from .numerics import INT8, UINT8, QParams, qparams_from_range, weight_qparams

log = logging.getLogger(__name__)

ACTIVATION_OPS = ("Clip", "Relu")


@dataclass(frozen=True)
class LayerQuant:
    """The quantization of one enabled layer: its input activation and its weight."""

    layer: Layer
    activation: QParams
    weight: QParams
    clip: tuple[float, float]


def post_layer_tensor(model: onnx.ModelProto, layer: Layer) -> str:
    """The tensor an integer kernel would emit: the layer output, or that of its sole Clip/Relu."""
    users = [n for n in model.graph.node if layer.output in n.input]
    if len(users) == 1 and users[0].op_type in ACTIVATION_OPS and users[0].input[0] == layer.output:
        return users[0].output[0]
    return layer.output


def observed_tensors(model: onnx.ModelProto, layers: list[Layer]) -> list[str]:
    """Every activation calibration needs: each layer's input and post-layer tensor, once each."""
    names = []
    for layer in layers:
        for name in (layer.input, post_layer_tensor(model, layer)):
            if name not in names:
                names.append(name)
    return names


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Copy of ``model`` that also returns the named intermediate tensors."""
    model = _copy(model)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in names if name not in present)
    return model


def observe(session, names: list[str], batches, bins: int = DEFAULT_BINS) -> dict[str, HistogramObserver]:
    """Run ``session`` (a model made by :func:`with_outputs`) and histogram the named tensors."""
    input_name = session.get_inputs()[0].name
    observers = {name: HistogramObserver(bins) for name in names}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for batch in batches:
            outputs = session.run(names, {input_name: batch})
            list(pool.map(lambda pair: pair[0].partial_fit(pair[1]), zip(observers.values(), outputs)))
    return observers


class Calibrator:
    """Turns activation histograms and weights into scales and zero points for each layer.

    ``fit(model, observers)`` needs the histograms of :func:`observed_tensors`; afterwards
    ``quant_`` maps each enabled layer to its :class:`LayerQuant`, ``tensor_qparams_`` maps
    post-layer tensors to their params (for the deploy model) and ``table_`` is a DataFrame.
    """

    def __init__(self, config: QuantConfig):
        self.config = config

    def __repr__(self) -> str:
        return f"Calibrator(layers={len(self.config.layers)}, enabled={len(self.config.enabled)})"

    def fit(self, model: onnx.ModelProto, observers: dict[str, HistogramObserver]) -> "Calibrator":
        values = constants(model)
        self.layers_ = find_layers(model, values)
        self.config.check_layers([layer.name for layer in self.layers_], "the model")
        self.observers_ = observers
        self.quant_, self.tensor_qparams_, rows = {}, {}, []
        for layer in self.layers_:
            settings = self.config.layers[layer.name]
            quant = self._layer_quant(layer, settings, values)
            post = post_layer_tensor(model, layer)
            self.tensor_qparams_[post] = self._activation_qparams(post, settings)[0]
            if settings.enabled:
                self.quant_[layer.name] = quant
            rows.append(_table_row(layer, settings, quant, observers[layer.input]))
        self.table_ = pd.DataFrame(rows)
        return self

    def _layer_quant(self, layer: Layer, settings, values) -> LayerQuant:
        activation, clip = self._activation_qparams(layer.input, settings)
        weight = weight_qparams(values[layer.weight], settings.weight.per_channel, layer.weight_axis)
        return LayerQuant(layer, activation, weight, clip)

    def _activation_qparams(self, tensor: str, settings) -> tuple[QParams, tuple[float, float]]:
        act = settings.activation
        qrange = INT8 if act.symmetric else UINT8
        observer = self.observers_[tensor]
        counts, edges = observer.nonzero_histogram
        method = clip_methods.METHODS[act.method.value]
        lo, hi = method(counts, edges, qrange, act.symmetric, percentile=act.percentile,
                        observed=(observer.min_, observer.max_))
        return qparams_from_range(lo, hi, qrange, act.symmetric), (lo, hi)

    @property
    def table(self) -> pd.DataFrame:
        if not hasattr(self, "table_"):
            raise NotFittedError("this Calibrator is not fitted yet; call fit(model, observers) first")
        return self.table_


def _table_row(layer: Layer, settings, quant: LayerQuant, observer: HistogramObserver) -> dict:
    weight_scale = np.atleast_1d(quant.weight.scale)
    return {
        "layer": layer.name, "op": layer.op, "enabled": settings.enabled,
        "act_method": settings.activation.method.value,
        "act_min": observer.min_, "act_max": observer.max_,
        "clip_min": quant.clip[0], "clip_max": quant.clip[1],
        "act_scale": float(quant.activation.scale), "act_zero_point": int(quant.activation.zero_point),
        "act_dtype": np.dtype(quant.activation.dtype).name,
        "weight_per_channel": settings.weight.per_channel,
        "weight_scale_min": float(weight_scale.min()), "weight_scale_max": float(weight_scale.max()),
        "weight_channels": int(weight_scale.size),
    }
