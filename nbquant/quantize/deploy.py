"""The deploy model: int8 weights, int32 biases and requantized outputs, in the QDQ form
onnxruntime turns into integer kernels (QLinearConv, QGemm, QLinearAdd ...).

What the rewrite does (the fake-quant model shares it, with float biases):
- weights are stored as int8 (4x smaller) and biases as int32 in units of
  input_scale * weight_scale, as integer kernels add them;
- each enabled layer's output (after its Clip/Relu, when it has exactly one) is quantized
  too, with its own calibrated range, unless the next layer's input quantization already
  does it; the integer kernels need a quantized output to chain;
- other readers of a quantized tensor (Add, pooling, ..., and layers left in float) read its
  dequantized value, so onnxruntime can run them in int8 and the layers around a float layer
  still fuse into integer kernels.
A Clip/Relu right before a QuantizeLinear whose range lies inside it is exact to drop, and
onnxruntime drops it; no other numerics change. A float (or a16w8) Conv, ConvTranspose or Gemm reads its
8-bit (16-bit) input through a DequantizeLinear whose scale is repeated per channel: onnxruntime's
WeightBiasQuantization, on in every default session, leaves it alone then (see ``_private_dequantize``).
Layers in other states (:mod:`nbquant.quantize.layer_states`) read the raw tensor instead and emit a
float output: ``a16w8`` (its own 16-bit input Q/DQ, int8 weights, float bias), ``dynamic``
(DynamicQuantizeLinear + MatMulInteger) and ``float_raw`` (float, not rerouted to the 8-bit twin).
"""

from __future__ import annotations

import json
from collections.abc import Collection

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ConfigError
from ..graph.helpers import (
    constants,
    consumers,
    first_consumer,
    input_channels,
    node_by_name,
    rename_inputs,
    set_bias,
)
from ..graph.layers import find_layers, post_layer_tensor
from .deploy_target import target_metadata
from .graph_edit import GraphEdit
from .layer_quant import LayerQuant, LayerState
from .metadata import STATES_KEY
from .numerics import QParams, dequantize, quantize_bias


def make_deploy_model(model: onnx.ModelProto, quant: dict[str, LayerQuant],
                      output_qparams: dict[str, QParams], target=None,
                      raw_inputs: Collection[str] = ()) -> onnx.ModelProto:
    """Float ``model`` rewritten with integer weights for every layer in ``quant`` (each in its
    ``state``); ``raw_inputs``: float layers that read their producer's unrounded output (state
    ``float_raw``); ``target`` (the resolved deploy target) is recorded in the metadata with each
    layer's weight range."""
    edit = quantize_graph(model, quant, output_qparams, integer_bias=True, raw_inputs=raw_inputs)
    return edit.finish(metadata=target_metadata(quant, target))


def quantize_graph(model: onnx.ModelProto, quant: dict[str, LayerQuant], output_qparams: dict[str, QParams],
                   integer_bias: bool, raw_inputs: Collection[str] = ()) -> GraphEdit:
    """The rewrite both quantized models share (unfinished): input Q/DQ, integer weights, output
    Q/DQ, consumers rerouted; biases int32 (deploy) or float (the fake-quant simulation). Each
    layer's state (``nbquant.layer_states`` in the metadata) is its LayerQuant's, ``float_raw`` for
    ``raw_inputs`` and ``float`` for the other layers."""
    edit = GraphEdit(model)
    values = constants(edit.model)
    nodes = node_by_name(edit.model)
    raw = set(raw_inputs)
    edit.metadata[STATES_KEY] = _states_json(find_layers(edit.model, values), quant, raw)
    dequantized: dict[str, str] = {}  # float tensor -> its 8-bit dequantized twin
    twin_params: dict[str, tuple[str, QParams]] = {}  # float tensor -> its twin's prefix and 8-bit params
    for name, lq in quant.items():
        node, state = nodes[name], lq.state
        if state is LayerState.DYNAMIC:
            _dynamic_layer(edit, node, lq, values)
            continue
        # ahead of the tensor's first reader: other readers (a Shape, an Add) may come before the layer
        first = first_consumer(edit.model, lq.layer.input).name
        activation, axis = lq.activation, None
        if state is LayerState.A16W8:  # its bias stays float: out of WeightBiasQuantization's reach too
            activation, axis = _per_axis(node, values, activation)
        node.input[0] = edit.quantize_dequantize(first, lq.layer.input, f"{name}/input", activation, axis)
        if state is LayerState.INT8 and lq.layer.input not in dequantized:  # a 16-bit input is the layer's own
            dequantized[lq.layer.input] = node.input[0]
            twin_params[lq.layer.input] = (f"{name}/input", lq.activation)
        if state is LayerState.A16W8 and lq.layer.op == "MatMul":
            # onnxruntime rewrites DequantizeLinear -> MatMul into MatMulNBits, which rounds the input to 8 bits
            # per block (session.qdq_matmulnbits_accuracy_level 4): the int8 grid's values are stored as float
            node.input[1] = edit.constant(f"{name}/weight_on_int8_grid",
                                          dequantize(lq.weight_q, lq.weight, lq.layer.weight_axis))
        else:
            node.input[1] = edit.integer_weight(name, f"{name}/weight", lq)
        if integer_bias and state is LayerState.INT8:
            _integer_bias(edit, node, lq, values)
        elif lq.bias is not None:  # a16w8 has no integer kernel here: its bias stays float in both models
            set_bias(node, edit.constant(f"{name}/corrected_bias", lq.bias))
    graph_outputs = {o.name for o in edit.model.graph.output}
    for name, lq in quant.items():
        if lq.state is not LayerState.INT8:  # a float output: the next layer quantizes its own input
            continue
        post = post_layer_tensor(edit.model, lq.layer)
        if post in dequantized or post in graph_outputs:
            continue
        readers = consumers(edit.model).get(post, [])
        if any(reader.name not in raw for reader in readers):  # else no one would read the requantized output
            dequantized[post] = edit.quantize_dequantize(readers[0].name, post, f"{name}/output",
                                                         output_qparams[post])
            twin_params[post] = (f"{name}/output", output_qparams[post])
    private = _private_dequantize(edit, values, set(quant) | raw, twin_params)
    _reroute_consumers(edit.model, dequantized, set(quant) | raw | private)
    return edit


def _private_dequantize(edit: GraphEdit, values, skip: set[str], twins: dict[str, tuple[str, QParams]]) -> set[str]:
    """Each float Conv, ConvTranspose or Gemm layer (not in ``skip``) that reads an 8-bit twin gets a
    DequantizeLinear of its own, with the twin's scale and zero point repeated along the channel axis.
    Same values; but onnxruntime's WeightBiasQuantization pass, on by default in every session, quantizes
    the float weights (per tensor, int8) of such a layer when its input comes from a per-tensor
    DequantizeLinear and its output reaches a QuantizeLinear: it would turn a layer kept in float for
    accuracy back into a coarser int8 one (Lite0, the first depthwise Conv in float: top-1 0.858 in a
    plain session against 0.884). A per-axis scale is not the scalar the pass requires. Returns the
    layers given one."""
    done = set()
    for node in list(edit.model.graph.node):
        if node.name in skip or not node.input or node.input[0] not in twins:
            continue
        prefix, p = twins[node.input[0]]
        repeated, axis = _per_axis(node, values, p)
        if axis is None:
            continue
        scale, zero_point = edit.qparam_inputs(f"{node.name}/input_private", repeated)
        node.input[0] = edit.dequantize(node.name, f"{prefix}_quantized", f"{node.name}/input_private", scale,
                                        zero_point, {"axis": 1})
        done.add(node.name)
    return done


def _repeated(p: QParams, channels: int) -> QParams:
    """Per-tensor ``p`` as a per-axis QParams of ``channels`` equal scales and zero points."""
    return QParams(np.full(channels, float(p.scale), np.float32), np.full(channels, int(p.zero_point)),
                   p.qmin, p.qmax)


def _per_axis(node: onnx.NodeProto, values, p: QParams) -> tuple[QParams, int | None]:
    """``p`` repeated along the input's channel axis (1) where onnxruntime's WeightBiasQuantization could
    rewrite ``node`` (a Conv, ConvTranspose or Gemm with a constant weight), else ``p`` as it is."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 2 or node.input[1] not in values:
        return p, None
    channels = input_channels(node, values[node.input[1]])
    return (p, None) if channels is None else (_repeated(p, channels), 1)


def _states_json(layers, quant: dict[str, LayerQuant], raw: set[str]) -> str:
    """Every layer's state as JSON (graph order); ConfigError for a ``raw`` name that is no float layer."""
    names = {layer.name for layer in layers}
    for name in sorted(raw):
        if name not in names or name in quant:
            why = "it is quantized too" if name in quant else "it is not a quantizable layer of the model"
            raise ConfigError(f"layer {name!r} cannot read its raw input in float (state float_raw): {why}")
    states = {layer.name: (quant[layer.name].state if layer.name in quant else
                           LayerState.FLOAT_RAW if layer.name in raw else LayerState.FLOAT).value
              for layer in layers}
    return json.dumps(states, separators=(",", ":"))


def _dynamic_layer(edit: GraphEdit, node: onnx.NodeProto, lq: LayerQuant, values) -> None:
    """A MatMul (2-D weight) or Gemm as onnxruntime's dynamic quantization writes it, which it fuses
    into DynamicQuantizeMatMul: DynamicQuantizeLinear (uint8, range of this run's input), MatMulInteger
    with the int8 weights ([K, N]: a Gemm's transB weight transposed), exact int32 sums, Cast, a Mul by
    input scale x weight scale and, for a Gemm, an Add of its (float, bias-corrected) bias. Both
    quantized models use it: it is exact integer arithmetic, so there is nothing to simulate."""
    name, output, layer = node.name, node.output[0], lq.layer
    x = node.input[0]
    q, scale, zero_point = (f"{name}/input_{part}" for part in ("quantized", "scale", "zero_point"))
    edit.add_node(name, helper.make_node("DynamicQuantizeLinear", [x], [q, scale, zero_point],
                                         name=f"{name}/input/DynamicQuantizeLinear"))
    weight_scale = np.asarray(lq.weight.scale, np.float32)
    weight_scale = weight_scale.reshape(-1) if weight_scale.size > 1 else weight_scale.reshape(())
    weight_q = lq.weight_q.T if layer.op == "Gemm" and layer.weight_axis == 0 else lq.weight_q
    weight = edit.constant(f"{name}/weight_quantized", np.ascontiguousarray(weight_q))
    weight_zero = edit.constant(f"{name}/weight_zero_point", np.zeros(weight_scale.shape, lq.weight_q.dtype))
    bias = None
    if layer.op == "Gemm":
        bias = lq.bias if lq.bias is not None else (values[layer.bias] if layer.bias else None)
    node.op_type = "MatMulInteger"
    node.input[:] = [q, weight, zero_point, weight_zero]
    node.output[0] = f"{name}/int32"
    del node.attribute[:]
    combined, scaled = f"{name}/output_scale", output if bias is None else f"{name}/scaled"
    after = [
        helper.make_node("Cast", [f"{name}/int32"], [f"{name}/float"], name=f"{name}/Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [scale, edit.constant(f"{name}/weight_scale", weight_scale)], [combined],
                         name=f"{name}/scale/Mul"),
        helper.make_node("Mul", [f"{name}/float", combined], [scaled], name=f"{name}/output/Mul"),
    ]
    if bias is not None:
        after.append(helper.make_node("Add", [scaled, edit.constant(f"{name}/float_bias",
                                                                    np.asarray(bias, np.float32))],
                                      [output], name=f"{name}/bias/Add"))
    edit.after.setdefault(name, []).extend(after)


def _integer_bias(edit: GraphEdit, node: onnx.NodeProto, lq: LayerQuant, values) -> None:
    """The bias as int32 in units of input_scale * weight_scale, behind a DequantizeLinear."""
    name, layer = node.name, lq.layer
    axis = {"axis": layer.weight_axis} if np.size(lq.weight.scale) > 1 else {}
    bias = lq.bias if lq.bias is not None else (values[layer.bias] if layer.bias else None)
    if bias is None:
        return
    bias_scale = (np.float32(lq.activation.scale) * np.asarray(lq.weight.scale, np.float32)).astype(np.float32)
    bias_q = quantize_bias(bias, float(lq.activation.scale), np.asarray(lq.weight.scale))
    if bias_scale.size == 1 and bias_q.size > 1:
        bias_scale, axis = bias_scale.reshape(()), {}
    edit.constant(f"{name}/bias_quantized", bias_q)
    edit.constant(f"{name}/bias_scale", bias_scale.reshape(-1) if bias_scale.size > 1 else bias_scale)
    edit.constant(f"{name}/bias_zero_point", np.zeros(bias_scale.shape, np.int32))
    set_bias(node, edit.dequantize(name, f"{name}/bias_quantized", f"{name}/bias",
                                   f"{name}/bias_scale", f"{name}/bias_zero_point", axis))


def _reroute_consumers(model: onnx.ModelProto, dequantized: dict[str, str], keep: set[str]) -> None:
    """Every reader of a tensor that is quantized anyway reads its dequantized value, except those in
    ``keep`` (the quantized layers, which quantize their own input, and the float_raw ones): ops
    like Add and pooling, so onnxruntime runs them in int8, and layers left in float, so the layer
    before them still fuses into an integer kernel (a float reader of its raw output would keep it
    in float, and cost a layout change on each side). A float layer thus sees its input rounded to
    8 bits, as behind any integer kernel; a float_raw one pays that cost to read it unrounded."""
    rename_inputs((node for node in model.graph.node
                   if node.name not in keep and node.op_type not in ("QuantizeLinear", "DequantizeLinear")),
                  dequantized)
