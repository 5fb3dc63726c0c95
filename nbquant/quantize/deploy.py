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
onnxruntime drops it; no other numerics change.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph.helpers import constants, first_consumer, node_by_name, rename_inputs, set_bias
from ..graph.layers import post_layer_tensor
from .deploy_target import target_metadata
from .graph_edit import GraphEdit
from .layer_quant import LayerQuant
from .numerics import QParams, quantize_bias


def make_deploy_model(model: onnx.ModelProto, quant: dict[str, LayerQuant],
                      output_qparams: dict[str, QParams], target=None) -> onnx.ModelProto:
    """Float ``model`` rewritten with integer weights for every layer in ``quant``;
    ``target`` (the resolved deploy target) is recorded in the metadata with each layer's weight range."""
    edit = quantize_graph(model, quant, output_qparams, integer_bias=True)
    return edit.finish(metadata=target_metadata(quant, target))


def quantize_graph(model: onnx.ModelProto, quant: dict[str, LayerQuant], output_qparams: dict[str, QParams],
                   integer_bias: bool) -> GraphEdit:
    """The rewrite both quantized models share (unfinished): input Q/DQ, integer weights, output
    Q/DQ, consumers rerouted; biases int32 (deploy) or float (the fake-quant simulation)."""
    edit = GraphEdit(model)
    values = constants(edit.model)
    nodes = node_by_name(edit.model)
    dequantized: dict[str, str] = {}  # float tensor -> its dequantized twin
    dynamic = {name for name, lq in quant.items() if lq.dynamic}
    for name, lq in quant.items():
        node = nodes[name]
        if name in dynamic:
            _dynamic_matmul(edit, node, lq)
            continue
        # ahead of the tensor's first reader: other readers (a Shape, an Add) may come before the layer
        first = first_consumer(edit.model, lq.layer.input).name
        node.input[0] = edit.quantize_dequantize(first, lq.layer.input, f"{name}/input", lq.activation)
        dequantized.setdefault(lq.layer.input, node.input[0])
        node.input[1] = edit.integer_weight(name, f"{name}/weight", lq)
        if integer_bias:
            _integer_bias(edit, node, lq, values)
        elif lq.bias is not None:
            set_bias(node, edit.constant(f"{name}/corrected_bias", lq.bias))
    graph_outputs = {o.name for o in edit.model.graph.output}
    for name, lq in quant.items():
        if name in dynamic:  # its output is float: the next layer quantizes its own input
            continue
        post = post_layer_tensor(edit.model, lq.layer)
        if post not in dequantized and post not in graph_outputs:
            consumer = first_consumer(edit.model, post).name
            dequantized[post] = edit.quantize_dequantize(consumer, post, f"{name}/output", output_qparams[post])
    _reroute_consumers(edit.model, dequantized, set(quant))
    return edit


def _dynamic_matmul(edit: GraphEdit, node: onnx.NodeProto, lq: LayerQuant) -> None:
    """The layer as onnxruntime's dynamic quantization writes it, which it fuses into
    DynamicQuantizeMatMul: DynamicQuantizeLinear (uint8, range of this run's input), MatMulInteger with
    the int8 weights (exact int32 sums), Cast, and a Mul by input scale x weight scale. Both quantized
    models use it: it is exact integer arithmetic, so there is nothing to simulate."""
    name, output = node.name, node.output[0]
    x = node.input[0]
    q, scale, zero_point = (f"{name}/input_{part}" for part in ("quantized", "scale", "zero_point"))
    edit.add_node(name, helper.make_node("DynamicQuantizeLinear", [x], [q, scale, zero_point],
                                         name=f"{name}/input/DynamicQuantizeLinear"))
    weight_scale = np.asarray(lq.weight.scale, np.float32)
    weight_scale = weight_scale.reshape(-1) if weight_scale.size > 1 else weight_scale.reshape(())
    weight = edit.constant(f"{name}/weight_quantized", lq.weight_q)
    weight_zero = edit.constant(f"{name}/weight_zero_point", np.zeros(weight_scale.shape, lq.weight_q.dtype))
    node.op_type = "MatMulInteger"
    node.input[:] = [q, weight, zero_point, weight_zero]
    node.output[0] = f"{name}/int32"
    del node.attribute[:]
    combined = f"{name}/output_scale"
    edit.after.setdefault(name, []).extend([
        helper.make_node("Cast", [f"{name}/int32"], [f"{name}/float"], name=f"{name}/Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [scale, edit.constant(f"{name}/weight_scale", weight_scale)], [combined],
                         name=f"{name}/scale/Mul"),
        helper.make_node("Mul", [f"{name}/float", combined], [output], name=f"{name}/output/Mul"),
    ])


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


def _reroute_consumers(model: onnx.ModelProto, dequantized: dict[str, str], enabled: set[str]) -> None:
    """Every other reader of a tensor that is quantized anyway reads its dequantized value: ops
    like Add and pooling, so onnxruntime runs them in int8, and layers left in float, so the layer
    before them still fuses into an integer kernel (a float reader of its raw output would keep it
    in float, and cost a layout change on each side). A float layer thus sees its input rounded to
    8 bits, as behind any integer kernel."""
    rename_inputs((node for node in model.graph.node
                   if node.name not in enabled and node.op_type not in ("QuantizeLinear", "DequantizeLinear")),
                  dequantized)
