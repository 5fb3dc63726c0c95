"""Small helpers over ONNX graphs: constants, copies, consumers, attributes, pruning."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def consumers(model) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for out in model.graph.output:
        users.setdefault(out.name, []).append(None)
    for node in model.graph.node:
        for out in node.output:
            users.setdefault(out, [])
    return users


def drop_unused_initializers(model) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant tensor of the graph (initializers and Constant node outputs) by name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def node_by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {node.name: node for node in model.graph.node}


def set_bias(node: onnx.NodeProto, name: str) -> None:
    """Make ``name`` the bias (third input) of a Conv/Gemm node, adding the input if absent."""
    if len(node.input) > 2:
        node.input[2] = name
    else:
        node.input.append(name)
