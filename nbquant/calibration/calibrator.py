"""Calibration: one streaming float pass collects activation histograms; scales follow from them."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import onnx
import pandas as pd

from ..errors import ConfigError, NotFittedError
from ..evaluation.session import feed
from ..graph.equalization import spread
from ..graph.helpers import attribute, constants, copy_model
from ..graph.layers import Layer, find_layers, post_layer_tensor
from ..quantize.layer_quant import LayerQuant
from ..quantize.numerics import (
    INT8,
    UINT8,
    QParams,
    bias_safe_weight_params,
    dequantize,
    qparams_from_range,
    quantize,
    weight_qparams,
)
from ..threads import map_threads
from ..timing import timed
from . import clip_methods
from .bias_correction import weight_error_shift
from .channel_mean import ChannelMeanObserver
from .config import QuantConfig, WeightRounding
from .histogram import DEFAULT_BINS, HistogramObserver
from .input_covariance import CovarianceObserver, from_weight_matrix, weight_matrix
from .weight_rounding import choose_rounding

log = logging.getLogger(__name__)


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
    model = copy_model(model)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in names if name not in present)
    return model


def observe(session, names: list[str], batches, bins: int = DEFAULT_BINS, mean_names=(),
            extra=()) -> tuple[dict, dict]:
    """Run ``session`` (a model made by :func:`with_outputs`) over ``batches``.

    Returns histograms of every named tensor and per-channel means of those in ``mean_names``;
    ``extra`` (tensor name, observer) pairs, e.g. input covariances, are fed in place.
    """
    observers = [(name, HistogramObserver(bins)) for name in names]
    observers += [(name, ChannelMeanObserver()) for name in mean_names]
    observers += list(extra)
    for batch in batches:
        outputs = dict(zip(names, session.run(names, feed(session, batch))))
        map_threads(lambda pair, out=outputs: pair[1].partial_fit(out[pair[0]]), observers,
                    cost=lambda pair, out=outputs: out[pair[0]].size)
    histograms = {n: o for n, o in observers if isinstance(o, HistogramObserver)}
    means = {n: o for n, o in observers if isinstance(o, ChannelMeanObserver)}
    return histograms, means


class Calibrator:
    """Turns activation histograms and weights into scales and zero points for each layer.

    ``fit(model, observers, means, covariances)`` needs the histograms of :func:`observed_tensors`
    (and, for bias correction, the channel means of the layer inputs; for GPTQ rounding, each
    layer's input covariance by layer name); afterwards
    ``quant_`` maps each enabled layer to its :class:`LayerQuant` (``layer_quant_``: every layer),
    ``tensor_qparams_`` maps post-layer tensors to their params (for the deploy model) and
    ``table_`` is a DataFrame. :meth:`with_config` gives the same fit for another set of enabled layers.
    """

    def __init__(self, config: QuantConfig, equalization: pd.DataFrame | None = None):
        self.config = config
        self.equalization = equalization  # what cross-layer equalization changed, per layer (table columns)

    def __repr__(self) -> str:
        return f"Calibrator(layers={len(self.config.layers)}, enabled={len(self.config.enabled)})"

    def fit(self, model: onnx.ModelProto, observers: dict[str, HistogramObserver],
            means: dict[str, ChannelMeanObserver] | None = None,
            covariances: dict[str, CovarianceObserver] | None = None,
            roundings: dict[str, tuple[np.ndarray, str]] | None = None) -> Calibrator:
        """``roundings`` (layer name -> integer weights and how they were rounded, e.g. a cached
        ``roundings_``) stand in for GPTQ's covariances where given."""
        values = constants(model)
        self.means_ = means or {}
        self.covariances_ = covariances or {}
        self._given_roundings = roundings or {}
        groups = {n.name: attribute(n, "group", 1) for n in model.graph.node}
        self.layers_ = find_layers(model, values)
        self.config.check_layers([layer.name for layer in self.layers_], "the model")
        self.observers_ = observers
        settings = [self.config.layers[layer.name] for layer in self.layers_]
        posts = [post_layer_tensor(model, layer) for layer in self.layers_]
        clips = list(dict.fromkeys([(layer.input, each.activation) for layer, each in zip(self.layers_, settings)]
                                   + [(post, each.activation) for post, each in zip(posts, settings)]))
        # every tensor's clip search once, on both cores (a layer's output is often the next layer's input)
        self._clip_memo = dict(zip(clips, map_threads(lambda key: self._search_clip(*key), clips)))
        params = [self._layer_params(layer, each, values) for layer, each in zip(self.layers_, settings)]
        with timed("weight rounding"):  # the layers in parallel: GPTQ's column loop keeps one core busy
            jobs = [(layer, values[layer.weight], p[2], each.weight.rounding)
                    for layer, p, each in zip(self.layers_, params, settings)]
            rounded = map_threads(lambda job: self._round(*job), jobs, cost=lambda job: _rounding_cost(job[1]))
        self.roundings_ = {layer.name: (q, how) for layer, (q, how, kept) in zip(self.layers_, rounded) if kept}
        quants = [self._layer_quant(layer, each, values, groups.get(layer.name, 1), *p, q, how)
                  for layer, each, p, (q, how, _) in zip(self.layers_, settings, params, rounded)]
        self.layer_quant_ = {layer.name: quant for layer, quant in zip(self.layers_, quants)}
        self.tensor_qparams_ = {}
        for post, each in zip(posts, settings):
            self.tensor_qparams_[post] = self._activation_qparams(post, each)[0]
        self._values = values
        return self._select()

    def _select(self) -> Calibrator:
        """``quant_`` and ``table_`` for the config's enabled layers."""
        self.quant_ = {name: lq for name, lq in self.layer_quant_.items() if self.config.layers[name].enabled}
        self.table_ = pd.DataFrame([
            _table_row(lq.layer, self.config.layers[name], lq, self.observers_[lq.layer.input], self._values)
            for name, lq in self.layer_quant_.items()])
        self.table_ = with_equalization(self.table_, self.equalization)
        return self

    def with_config(self, config: QuantConfig) -> Calibrator:
        """A fitted copy for ``config``, which may differ from this one only in which layers are
        enabled and in their precision: nothing is recomputed (the scales and integer weights do not
        depend on it)."""
        for name, layer in config.layers.items():
            if replace(layer, enabled=True, precision=None) != \
                    replace(self.config.layers[name], enabled=True, precision=None):
                raise ConfigError(f"with_config: layer {name!r} differs in more than quant_enable and precision; "
                                  "fit a new Calibrator")
        copy = Calibrator(config)
        copy.__dict__.update({k: v for k, v in self.__dict__.items() if k != "config"})
        return copy._select()

    def _layer_params(self, layer: Layer, settings, values) -> tuple[QParams, tuple[float, float], QParams]:
        """The layer's activation params, their clip range and its weight params (before rounding)."""
        activation, clip = self._activation_qparams(layer.input, settings)
        w = values[layer.weight]
        weight = weight_qparams(w, settings.weight.per_channel, layer.weight_axis, settings.weight.weight_max)
        model_bias = values[layer.bias] if layer.bias else None
        return activation, clip, bias_safe_weight_params(weight, model_bias, float(activation.scale))

    def _layer_quant(self, layer: Layer, settings, values, group: int, activation: QParams, clip, weight: QParams,
                     weight_q: np.ndarray, rounding: str) -> LayerQuant:
        w = values[layer.weight]
        bias = None
        if settings.weight.bias_correction and layer.input in self.means_:
            w_fq = dequantize(weight_q, weight, layer.weight_axis)
            bias = self._corrected_bias(layer, w_fq, values, group)
        dynamic = settings.activation.dynamic and layer.op == "MatMul" and w.ndim == 2
        observer = self.observers_[layer.input]  # its observed range: what 16-bit activations span
        return LayerQuant(layer, activation, weight, weight_q, clip, bias, rounding, dynamic,
                          (float(observer.min_), float(observer.max_)))

    def _round(self, layer: Layer, w: np.ndarray, weight: QParams, rounding: WeightRounding):
        """(integer weights, how they were rounded, whether GPTQ chose it): GPTQ where asked for and its
        statistics (or a given rounding) exist, else nearest. Runs on worker threads: reads ``self`` only."""
        if rounding is WeightRounding.GPTQ and layer.name in self._given_roundings:
            q, how = self._given_roundings[layer.name]
            return q.astype(weight.dtype), how, True
        observer = self.covariances_.get(layer.name)
        w2 = weight_matrix(layer, w)
        if rounding is not WeightRounding.GPTQ or observer is None or observer.folds < 2 or w2 is None:
            return quantize(w, weight, layer.weight_axis), "nearest", False
        covs = (observer.covariance(0), observer.covariance(1))
        q2, how = choose_rounding(w2, weight.scale, weight.qmax, covs, observer.covariance())
        return from_weight_matrix(layer, q2, w.shape).astype(weight.dtype), how, True

    def _corrected_bias(self, layer: Layer, w_fq: np.ndarray, values, group: int) -> np.ndarray | None:
        w = values[layer.weight]
        if layer.op == "Gemm" and layer.weight_axis == 1:
            w, w_fq = w.T, w_fq.T
        shift = weight_error_shift(w, w_fq, self.means_[layer.input].mean, layer.op, group)
        if shift is None:
            return None
        bias = values[layer.bias].astype(np.float64) if layer.bias else np.zeros(shift.shape)
        return (bias - shift).astype(np.float32)

    def _activation_qparams(self, tensor: str, settings) -> tuple[QParams, tuple[float, float]]:
        """A tensor's params and clip range, as :meth:`fit` searched them (once per tensor and settings)."""
        return self._clip_memo[(tensor, settings.activation)]

    def _search_clip(self, tensor: str, act) -> tuple[QParams, tuple[float, float]]:
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


def _rounding_cost(w: np.ndarray) -> float:
    """How long a weight's rounding takes, roughly (GPTQ: outputs x inputs^2), to start the longest first."""
    return float(w.size) * (w.size // w.shape[0])


def _table_row(layer: Layer, settings, quant: LayerQuant, observer: HistogramObserver, values) -> dict:
    weight_scale = np.atleast_1d(quant.weight.scale)
    old_bias = values[layer.bias] if layer.bias else 0.0
    return {
        "layer": layer.name, "op": layer.op, "kind": layer.kind, "enabled": settings.enabled,
        "act_method": "dynamic" if quant.dynamic else settings.activation.method.value,
        "act_min": observer.min_, "act_max": observer.max_,
        "clip_min": quant.clip[0], "clip_max": quant.clip[1],
        "act_scale": float(quant.activation.scale), "act_zero_point": int(quant.activation.zero_point),
        "act_dtype": np.dtype(quant.activation.dtype).name,
        "weight_per_channel": settings.weight.per_channel, "weight_max": settings.weight.weight_max,
        "weight_rounding": quant.rounding,
        "weight_scale_min": float(weight_scale.min()), "weight_scale_max": float(weight_scale.max()),
        "weight_channels": int(weight_scale.size),
        "weight_spread": spread(values[layer.weight], layer.weight_axis),
        "bias_shift_max": float(np.max(np.abs(quant.bias - old_bias))) if quant.bias is not None else 0.0,
    }


def with_equalization(table: pd.DataFrame, equalization: pd.DataFrame | None) -> pd.DataFrame:
    """The layer table with ``weight_spread_before`` (before cross-layer equalization; ``weight_spread`` is
    what was quantized), ``equalized_with`` and the scales and absorbed biases where it changed a layer."""
    if equalization is None or table.empty:
        return table
    extra = equalization.drop(columns=["weight_spread_after"])
    out = table.merge(extra, on="layer", how="left")
    out["weight_spread_before"] = out["weight_spread_before"].fillna(out["weight_spread"])
    out["equalized_with"] = out["equalized_with"].fillna("")
    return out.fillna({"cle_scale_min": 1.0, "cle_scale_max": 1.0, "bias_absorbed_max": 0.0})
