"""Small helpers over ONNX graphs, the one home of each for every stage: constants, attributes,
copies, node and reader look-ups, input rewiring, bias inputs, metadata, initializer pruning."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant tensor of the graph (initializers and Constant node outputs) by name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def attributes(node: onnx.NodeProto) -> dict:
    """Every attribute of ``node`` by name, as Python values (ints, floats, lists, tensors)."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def attribute(node: onnx.NodeProto, name: str, default):
    """The value of one attribute of ``node``, or ``default`` when the node does not set it.

    >>> attribute(onnx.helper.make_node("Conv", ["x", "w"], ["y"], group=4), "group", 1)
    4
    """
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of ``model``, for rewrites that must leave the caller's model as it was."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def node_by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The nodes of the graph by name (names are unique once :func:`~nbquant.graph.load.name_nodes` ran)."""
    return {node.name: node for node in model.graph.node}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Every tensor a node reads or writes -> the nodes that read it, in graph order, each once.

    Graph outputs are not readers: check ``model.graph.output`` where a tensor leaving the graph matters.
    """
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for out in node.output:
            users.setdefault(out, [])
        for name in node.input:
            readers = users.setdefault(name, [])
            if not readers or readers[-1] is not node:
                readers.append(node)
    return users


def first_consumer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    """The first node in graph order that reads ``tensor``: where to insert what must come before
    every reader of it."""
    readers = consumers(model).get(tensor)
    if not readers:
        raise ModelError(f"no node of graph {model.graph.name!r} reads tensor {tensor!r}")
    return readers[0]


def rename_inputs(nodes: Iterable[onnx.NodeProto], renames: dict[str, str]) -> None:
    """Make each of ``nodes`` read ``renames[name]`` wherever it read a tensor ``name`` in ``renames``."""
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


def set_bias(node: onnx.NodeProto, name: str) -> None:
    """Make ``name`` the bias (third input) of a Conv/Gemm node, adding the input if absent."""
    if len(node.input) > 2:
        node.input[2] = name
    else:
        node.input.append(name)


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove, in place, the initializers that no node reads and that are not graph outputs."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def input_channels(node: onnx.NodeProto, weight) -> int | None:
    """The size of axis 1 of a Conv, ConvTranspose or Gemm's first input, from its weight's shape (None for a
    Gemm with transA, whose axis 1 is the batch).

    >>> input_channels(onnx.helper.make_node("Conv", ["x", "w"], ["y"], group=4), np.zeros((8, 2, 3, 3)))
    8
    """
    if node.op_type == "Conv":
        return int(weight.shape[1]) * attribute(node, "group", 1)
    if node.op_type == "ConvTranspose":
        return int(weight.shape[0])
    if attribute(node, "transA", 0):
        return None
    return int(weight.shape[1] if attribute(node, "transB", 0) else weight.shape[0])
