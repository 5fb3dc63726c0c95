"""The layers nbquant quantizes: found in a graph, described in tables, and the tensor each one's
integer kernel emits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pandas as pd

from .helpers import attribute, attributes, constants, consumers, node_by_name

ACTIVATION_OPS = ("Clip", "Relu")
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

FLOAT_REASONS = {
    "Clip": "activation: absorbed by the next layer's input quantization",
    "Relu": "activation: absorbed by the next layer's input quantization",
    "Min": "runs on the quantized values where it clips a layer output by a constant (an equalized ReLU6)",
    "Add": "no weights: runs in float on dequantized inputs",
    "Mul": "no weights: runs in float on dequantized inputs",
    "GlobalAveragePool": "no weights: runs in float",
    "AveragePool": "no weights: runs in float",
    "MaxPool": "no weights: runs in float",
    "Flatten": "reshapes only",
    "Reshape": "reshapes only",
    "Constant": "holds a constant",
}


@dataclass(frozen=True)
class Layer:
    """One quantizable node: where its activation input, weight and output are."""

    name: str
    op: str
    input: str
    weight: str
    bias: str | None
    output: str
    weight_axis: int  # the output-channel axis of the weight, for per-channel scales
    kind: str  # kernel kind: conv, pointwise, grouped, depthwise, gemm, matmul, conv_transpose


def kernel_kind(op: str, weight_shape, group: int = 1) -> str:
    """Which onnxruntime int8 kernel family a layer runs on (they differ in exactness, see cpu_probe).

    >>> kernel_kind("Conv", (32, 1, 3, 3), 32), kernel_kind("Conv", (64, 32, 1, 1)), kernel_kind("Gemm", (10, 4))
    ('depthwise', 'pointwise', 'gemm')
    """
    if op == "Conv":
        if group > 1:
            return "depthwise" if weight_shape[1] == 1 and weight_shape[0] == group else "grouped"
        return "pointwise" if all(k == 1 for k in weight_shape[2:]) else "conv"
    return {"ConvTranspose": "conv_transpose", "Gemm": "gemm", "MatMul": "matmul"}[op]


def post_layer_tensor(model: onnx.ModelProto, layer: Layer) -> str:
    """The tensor an integer kernel would emit: the layer output, or that of its sole Clip/Relu, or of
    the per-channel clip (a Min with a constant) after it, which the quantized models apply to the
    integers (an equalized ReLU6, see :mod:`nbquant.graph.equalization`)."""
    users = consumers(model)
    readers = users.get(layer.output, [])
    if len(readers) == 1 and readers[0].op_type in ACTIVATION_OPS and readers[0].input[0] == layer.output:
        tensor = readers[0].output[0]
        after = users.get(tensor, [])
        if len(after) == 1 and after[0].output[0] in constant_mins(model, after):
            return after[0].output[0]
        return tensor
    return layer.output


def constant_mins(model: onnx.ModelProto, nodes=None) -> dict[str, tuple[str, str]]:
    """Min nodes (of ``nodes``, default all) of a computed tensor and a value no node computes (a constant,
    or a graph input standing for one in a cut-out region): output -> (tensor, that value's name).
    Quantizing is monotonic, so ``Q(Min(x, c)) == Min(Q(x), Q(c))``: such a Min can run on the integers."""
    computed = {out for node in model.graph.node if node.op_type != "Constant" for out in node.output}
    return {node.output[0]: (node.input[0], node.input[1])
            for node in (model.graph.node if nodes is None else nodes)
            if node.op_type == "Min" and len(node.input) == 2 and node.input[0] in computed
            and node.input[1] not in computed}


def find_layers(model: onnx.ModelProto, values: dict | None = None) -> list[Layer]:
    """The quantizable layers in graph order: Conv, ConvTranspose, Gemm, MatMul with constant weight."""
    values = constants(model) if values is None else values
    layers = []
    for node in model.graph.node:
        layer = _as_layer(node, values)
        if layer is not None:
            layers.append(layer)
    return layers


def _as_layer(node: onnx.NodeProto, values: dict) -> Layer | None:
    if node.op_type not in LAYER_OPS or len(node.input) < 2 or node.input[1] not in values:
        return None
    attrs = attributes(node)
    weight = values[node.input[1]]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "Conv":
        axis = 0
    elif node.op_type == "ConvTranspose":
        axis = 1
    elif node.op_type == "Gemm":
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        if bias is not None and bias not in values:
            return None
        axis = 0 if attrs.get("transB", 0) else 1
    else:  # MatMul
        if weight.ndim not in (2, 3) or node.input[0] in values:
            return None
        axis, bias = weight.ndim - 1, None
    if bias is not None and bias not in values:
        return None
    kind = kernel_kind(node.op_type, weight.shape, attrs.get("group", 1))
    return Layer(node.name, node.op_type, node.input[0], node.input[1], bias, node.output[0], axis, kind)


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Inferred shape of every tensor, with symbolic (batch) dimensions left as strings."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return shapes


def layer_table(model: onnx.ModelProto) -> pd.DataFrame:
    """One row per quantizable layer: names, shapes, parameters, MACs (batch 1), depthwise."""
    values = constants(model)
    shapes = tensor_shapes(model)
    nodes = node_by_name(model)
    rows = []
    for layer in find_layers(model, values):
        weight = values[layer.weight]
        group = attribute(nodes[layer.name], "group", 1)
        out_shape = shapes.get(layer.output)
        rows.append({
            "layer": layer.name, "op": layer.op, "kind": layer.kind,
            "input": layer.input, "weight": layer.weight, "bias": layer.bias, "output": layer.output,
            "input_shape": shapes.get(layer.input), "weight_shape": list(weight.shape),
            "output_shape": out_shape,
            "params": int(weight.size + (values[layer.bias].size if layer.bias else 0)),
            "macs": _macs(layer, weight, out_shape, shapes.get(layer.input), group),
            "depthwise": bool(layer.op == "Conv" and group > 1 and weight.shape[1] == 1),
        })
    return pd.DataFrame(rows, columns=[
        "layer", "op", "kind", "input", "weight", "bias", "output", "input_shape", "weight_shape",
        "output_shape", "params", "macs", "depthwise"])


def float_op_table(model: onnx.ModelProto) -> pd.DataFrame:
    """The nodes left in float, grouped by op type, with why."""
    values = constants(model)
    layer_names = {layer.name for layer in find_layers(model, values)}
    rows = {}
    for node in model.graph.node:
        if node.name in layer_names:
            continue
        if node.op_type == "MatMul" and not any(i in values for i in node.input):
            reason = ("activation x activation (e.g. attention): kept float; in int8 it was not reliably "
                      "faster on MiniLM (docs/models.md)")
        elif node.op_type in LAYER_OPS:
            reason = "weight is not a constant (or Gemm with transA/alpha/beta): not quantized"
        else:
            reason = FLOAT_REASONS.get(node.op_type, "no quantized kernel in nbquant: runs in float")
        row = rows.setdefault(node.op_type, {"op": node.op_type, "count": 0, "reason": reason})
        row["count"] += 1
    return pd.DataFrame(list(rows.values()), columns=["op", "count", "reason"])


def _macs(layer: Layer, weight: np.ndarray, out_shape, in_shape, group: int) -> int | None:
    def known(shape):
        return [d if isinstance(d, int) and d > 0 else 1 for d in shape] if shape else None

    out_shape, in_shape = known(out_shape), known(in_shape)
    if layer.op == "Conv" and out_shape:
        return int(np.prod(out_shape) * np.prod(weight.shape[1:]))
    if layer.op == "ConvTranspose" and in_shape:
        return int(np.prod(in_shape) * np.prod(weight.shape[1:]))
    if layer.op in ("Gemm", "MatMul") and out_shape:
        k = weight.shape[1] if layer.op == "Gemm" and layer.weight_axis == 0 else weight.shape[-2]
        return int(np.prod(out_shape) * k)
    return None
