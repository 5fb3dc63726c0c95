"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", sec. 4.1 and 4.2): rescale the
channels between two Convs so each channel's weight range is shared evenly between them, which lets
one weight scale per tensor fit every channel; then absorb high biases into the next layer.

A pair is Conv ``first`` -> (Relu | Clip(0, m) | nothing) -> Conv ``second`` (group 1 or depthwise),
each tensor between them read by nothing else. Scaling output channel i of ``first`` by 1/s_i and
input channel i of ``second`` by s_i keeps the function, because Relu commutes with a positive
scale; a ReLU6's clip point does not: it becomes m/s_i, a different value per channel. nbquant
keeps the function exactly there: the Clip becomes Clip(0, max_i m/s_i) followed by a Min with the
per-channel points (``<clip>/per_channel_clip``). The quantized models move that Min behind the
next QuantizeLinear, onto uint8 values (exact: quantizing is monotonic, so it commutes with Min),
so the integer kernels still chain (see :mod:`nbquant.quantize.graph_edit`). On EfficientNet-Lite0 the
alternatives fail: one shared clip point after rescaling drops the float top-1 from 0.886 to 0.696 (the
largest point) or 0.001 (6); keeping 6 and limiting the scales to what the calibration images allow
(channels that reach 6 keep scale 1: a third of them, 7-85 % per layer) leaves the median weight spread
at 3.9 (3.8 before, 1.9 with per-channel points) and the per-tensor all-int8 top-1 at 0.869 (0.867
without, 0.883 with per-channel points). The Min costs time: an extra pass over each clipped tensor.
High-bias absorption moves a constant c_i <= every value the pre-activation of channel i takes
out of ``first``'s bias and adds ``second``'s response to it to ``second``'s bias; the lower bounds
come from the caller (nbquant's calibration measures them, see
:mod:`nbquant.calibration.equalization`). It is exact only where ``second`` has no zero padding,
so it is done only there. Nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import pandas as pd
from onnx import helper, numpy_helper

from .helpers import (
    attribute,
    attributes,
    constants,
    consumers,
    copy_model,
    drop_unused_initializers,
    input_channels,
    set_bias,
)
from .layers import find_layers

PER_CHANNEL_CLIP = "per_channel_clip"  # suffix of the Min node (and its constant) a rescaled ReLU6 gets


@dataclass
class Pair:
    """Two Convs with the activation between them; ``upper`` is the per-channel clip point (inf: none)."""

    first: str
    second: str
    activation: onnx.NodeProto | None
    upper: np.ndarray
    lower: float  # the activation's lower clip: 0 for Relu/Clip, -inf without activation
    scale: np.ndarray = field(default=None)  # product of every scaling applied, per channel
    absorbed: np.ndarray = field(default=None)


def spread(weight: np.ndarray, axis: int = 0) -> float:
    """How unevenly the output channels use the weight range: largest channel max|w| over the median.

    Per-tensor weights lose about ``spread`` times the resolution of per-channel ones on the median channel.

    >>> spread(np.array([[1.0, -1.0], [0.5, 0.2], [4.0, 0.0]]))
    4.0
    """
    ranges = np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).max(axis=1)
    median = float(np.median(ranges))
    return float(ranges.max() / median) if median > 0 else float("inf")


def find_pairs(model: onnx.ModelProto) -> list[Pair]:
    """Every Conv -> activation -> Conv pair CLE can rescale exactly, in graph order."""
    values = constants(model)
    layers = {layer.name: layer for layer in find_layers(model, values) if layer.op == "Conv"}
    nodes = {node.name: node for node in model.graph.node}
    users = consumers(model)
    outputs = {o.name for o in model.graph.output}
    by_input = {}
    for layer in layers.values():
        by_input.setdefault(layer.input, []).append(layer)

    def sole_reader(tensor):
        readers = users.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in outputs else None

    pairs = []
    for layer in layers.values():
        if not _scalable(nodes[layer.name], values) or (layer.bias and layer.bias not in values):
            continue
        reader, activation, lower, upper = sole_reader(layer.output), None, -np.inf, np.inf
        if reader is not None and reader.op_type in ("Relu", "Clip"):
            bounds = _relu_bounds(reader, values)
            if bounds is None:
                continue
            activation, (lower, upper) = reader, bounds
            reader = sole_reader(reader.output[0])
        if reader is None or reader.name not in layers or reader.input[0] != (
                activation.output[0] if activation is not None else layer.output):
            continue
        second = nodes[reader.name]
        channels = values[layer.weight].shape[0]
        if not _scalable(second, values) or input_channels(second, values[second.input[1]]) != channels:
            continue
        pairs.append(Pair(layer.name, reader.name, activation, np.full(channels, upper, np.float64), lower))
    return pairs


def equalize(model: onnx.ModelProto, lower_bounds: dict[str, np.ndarray] | None = None, iterations: int = 100,
             tolerance: float = 1e-4) -> tuple[onnx.ModelProto, pd.DataFrame]:
    """Copy of ``model`` with every pair of :func:`find_pairs` equalized, and one row per Conv it changed.

    Scales follow Nagel et al.: s_i = sqrt(r1_i / r2_i) (r1: output channel i's max|w| in the first
    Conv, r2: input channel i's in the second), applied pair after pair until no scale moves by more
    than ``tolerance`` (chains such as expand -> depthwise -> project share a layer).
    ``lower_bounds`` (first Conv name -> per-channel lower bound of its output, measured on the original
    model) turns on high-bias absorption for pairs whose second Conv has no padding.
    The table: ``layer``, ``equalized_with``, ``weight_spread_before``/``_after`` (:func:`spread`),
    ``cle_scale_min``/``_max`` (the factor on its output channels), ``bias_absorbed_max``.
    """
    model = copy_model(model)
    values = constants(model)
    nodes = {node.name: node for node in model.graph.node}
    pairs = find_pairs(model)
    weights = {name: values[nodes[name].input[1]].astype(np.float64)
               for pair in pairs for name in (pair.first, pair.second)}
    biases = {name: _bias(nodes[name], values, weights[name].shape[0]) for name in weights}
    before = {name: spread(w) for name, w in weights.items()}
    for pair in pairs:
        pair.scale, pair.absorbed = np.ones(pair.upper.size), np.zeros(pair.upper.size)
    for _ in range(iterations):
        moved = 0.0
        for pair in pairs:
            s = _pair_scales(weights[pair.first], _in_ranges(nodes[pair.second], weights[pair.second]))
            _apply(pair, s, weights, biases, nodes)
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
        if moved < tolerance:
            break
    for pair in pairs:
        if lower_bounds and pair.first in lower_bounds and np.isfinite(pair.lower) \
                and not _padded(nodes[pair.second]):
            _absorb(pair, np.asarray(lower_bounds[pair.first], np.float64) / pair.scale, weights, biases, nodes)
    for name in weights:
        _set_parameters(model, nodes[name], weights[name], biases[name])
    for pair in pairs:
        _set_clip(model, pair, nodes[pair.second])
    drop_unused_initializers(model)
    return model, _table(pairs, weights, before)


def _scalable(node: onnx.NodeProto, values) -> bool:
    """A Conv CLE can rescale: constant 4-D weight, group 1 or depthwise."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in values:
        return False
    weight, group = values[node.input[1]], attribute(node, "group", 1)
    return weight.ndim == 4 and (group == 1 or (weight.shape[1] == 1 and weight.shape[0] == group))


def _depthwise(node: onnx.NodeProto) -> bool:
    return attribute(node, "group", 1) > 1


def _relu_bounds(node: onnx.NodeProto, values) -> tuple[float, float] | None:
    """(lower, upper) of a Relu or a Clip with lower bound 0 and constant bounds; None for anything else."""
    if node.op_type == "Relu":
        return 0.0, np.inf
    attrs = attributes(node)
    lo, hi = attrs.get("min"), attrs.get("max", np.inf)
    if len(node.input) > 1:  # opset 11+: bounds are inputs
        given = list(node.input[1:3])
        if any(name and name not in values for name in given):
            return None
        lo = float(values[given[0]]) if given[0] else None
        hi = float(values[given[1]]) if len(given) > 1 and given[1] else np.inf
    return (0.0, float(hi)) if lo == 0.0 and hi > 0 else None


def _padded(node: onnx.NodeProto) -> bool:
    """Whether a Conv pads its input (zeros that a shifted input does not shift with it)."""
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return True
    return any(p != 0 for p in attribute(node, "pads", []))


def _bias(node: onnx.NodeProto, values, channels: int) -> np.ndarray:
    has = len(node.input) > 2 and node.input[2]
    return values[node.input[2]].astype(np.float64) if has else np.zeros(channels)


def _in_ranges(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """Per input channel max|w| of a group-1 or depthwise Conv weight."""
    if _depthwise(node):
        return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
    return np.abs(weight).transpose(1, 0, 2, 3).reshape(weight.shape[1], -1).max(axis=1)


def _pair_scales(first_weight: np.ndarray, in_ranges: np.ndarray) -> np.ndarray:
    """s_i = sqrt(r1_i / r2_i), 1 where either range is zero (a dead channel stays as it is)."""
    out_ranges = np.abs(first_weight).reshape(first_weight.shape[0], -1).max(axis=1)
    ok = (out_ranges > 0) & (in_ranges > 0)
    s = np.ones_like(out_ranges)
    s[ok] = np.sqrt(out_ranges[ok] / in_ranges[ok])
    return s


def _apply(pair: Pair, s: np.ndarray, weights, biases, nodes) -> None:
    """Output channel i of ``first`` divided by s_i, input channel i of ``second`` multiplied by it."""
    weights[pair.first] /= s[:, None, None, None]
    biases[pair.first] /= s
    if _depthwise(nodes[pair.second]):
        weights[pair.second] *= s[:, None, None, None]
    else:
        weights[pair.second] *= s[None, :, None, None]
    pair.upper /= s
    pair.scale *= s


def _absorb(pair: Pair, lower: np.ndarray, weights, biases, nodes) -> None:
    """High-bias absorption: c_i = max(0, lower_i), at most the clip point, out of ``first``'s bias and its
    response into ``second``'s (exact when channel i never goes below c_i and ``second`` does not pad)."""
    c = np.clip(lower, 0.0, pair.upper)
    c[~np.isfinite(c)] = 0.0
    biases[pair.first] -= c
    pair.upper = pair.upper - c
    second = weights[pair.second]
    if _depthwise(nodes[pair.second]):
        biases[pair.second] += second.reshape(second.shape[0], -1).sum(axis=1) * c
    else:
        biases[pair.second] += second.sum(axis=(2, 3)) @ c
    pair.absorbed = c


def _set_parameters(model: onnx.ModelProto, node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> None:
    """New initializers ``<node>/equalized_weight`` and ``_bias`` (others may share the old ones)."""
    weight_name, bias_name = f"{node.name}/equalized_weight", f"{node.name}/equalized_bias"
    model.graph.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), weight_name),
                                    numpy_helper.from_array(bias.astype(np.float32), bias_name)])
    node.input[1] = weight_name
    set_bias(node, bias_name)


def _set_clip(model: onnx.ModelProto, pair: Pair, second: onnx.NodeProto) -> None:
    """The activation's clip points after scaling: one scalar when they are equal, else
    Clip(0, largest) followed by a Min with each channel's point, which ``second`` reads."""
    clip = pair.activation
    if clip is None or clip.op_type != "Clip":
        return
    upper = pair.upper.astype(np.float32)
    if any(a.name in ("min", "max") for a in clip.attribute):  # opset < 11: bounds are attributes
        for a in [a for a in clip.attribute if a.name == "max"]:
            clip.attribute.remove(a)
        clip.attribute.append(helper.make_attribute("max", float(upper.max())))
    else:
        top, low = f"{clip.name}/equalized_max", f"{clip.name}/equalized_min"
        model.graph.initializer.extend([numpy_helper.from_array(np.array(upper.max(), np.float32), top),
                                        numpy_helper.from_array(np.array(0.0, np.float32), low)])
        del clip.input[1:]
        clip.input.extend([low, top])
    if np.all(upper == upper.max()):
        return
    points, output = f"{clip.name}/{PER_CHANNEL_CLIP}_points", f"{clip.name}/{PER_CHANNEL_CLIP}"
    model.graph.initializer.append(numpy_helper.from_array(upper.reshape(1, -1, 1, 1), points))
    second.input[0] = output
    position = list(model.graph.node).index(clip) + 1
    model.graph.node.insert(position, helper.make_node("Min", [clip.output[0], points], [output],
                                                       name=f"{clip.name}/{PER_CHANNEL_CLIP}"))


def _table(pairs: list[Pair], weights: dict, before: dict) -> pd.DataFrame:
    partners: dict[str, list[str]] = {}
    scales: dict[str, np.ndarray] = {}
    absorbed: dict[str, float] = {}
    for pair in pairs:
        partners.setdefault(pair.first, []).append(pair.second)
        partners.setdefault(pair.second, []).insert(0, pair.first)
        scales[pair.first] = 1.0 / pair.scale  # the factor on the first layer's output channels
        absorbed[pair.first] = float(np.max(pair.absorbed)) if pair.absorbed.size else 0.0
    rows = [{"layer": name, "equalized_with": ", ".join(partners[name]),
             "weight_spread_before": before[name], "weight_spread_after": spread(weights[name]),
             "cle_scale_min": float(scales[name].min()) if name in scales else 1.0,
             "cle_scale_max": float(scales[name].max()) if name in scales else 1.0,
             "bias_absorbed_max": absorbed.get(name, 0.0)} for name in weights]
    return pd.DataFrame(rows, columns=["layer", "equalized_with", "weight_spread_before", "weight_spread_after",
                                       "cle_scale_min", "cle_scale_max", "bias_absorbed_max"])
