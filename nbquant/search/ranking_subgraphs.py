"""Group models: several one-layer fake-quant models run as one, each only from where it departs
from the float model.

The ``output`` ranking quantizes one layer at a time, and everything its model computes before
the layer's input is the float model's. A group model computes those float nodes once and, per
layer, only the layer's *region*: the nodes that read the layer's input and every node downstream
of them, rewritten by :func:`~nbquant.quantize.fake_quant.make_fake_quant_model` exactly as in the
whole one-layer model (input and output Q/DQ, other readers rerouted). Its first output stacks the
layers' first outputs on axis 1 (``[N, layers, ...]``), so it runs wherever a model runs: in this
process or in shards on a pool. On EfficientNet-Lite0 the stacked outputs are bit-identical to the
whole one-layer models' (benchmarks/ranking_speed.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quantize.fake_quant import make_fake_quant_model
from ..quantize.graph_edit import upgrade_opset
from ..quantize.layer_quant import LayerQuant
from ..quantize.metadata import SIMULATE_KEY


def has_subgraphs(model: onnx.ModelProto) -> bool:
    """Whether a node holds a graph (If, Loop, Scan): its reads are not all in ``node.input``, so
    regions cannot be cut by following inputs; such models rank with whole one-layer models."""
    kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in kinds for node in model.graph.node for a in node.attribute)


class FloatGraph:
    """Look-ups over the float model that every region of a group reads."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.readers: dict[str, set[int]] = {}  # tensor -> positions of the nodes that read it
        for position, node in enumerate(self.nodes):
            for t in node.input:
                self.readers.setdefault(t, set()).add(position)
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.constant_nodes = {node.output[0]: node for node in self.nodes if node.op_type == "Constant"}
        graph = model.graph
        self.types = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
        self.names = ({t for node in self.nodes for t in (*node.input, *node.output)}
                      | set(self.initializers) | set(self.types))

    def region(self, tensor: str) -> list[onnx.NodeProto]:
        """The readers of ``tensor`` and every node downstream of them, in graph order."""
        seeds = self.readers.get(tensor, set())
        produced, nodes = set(), []
        for position, node in enumerate(self.nodes):
            if position in seeds or any(t in produced for t in node.input):
                nodes.append(node)
                produced.update(node.output)
        return nodes

    def region_model(self, nodes: list[onnx.NodeProto]) -> tuple[onnx.ModelProto, list[str]]:
        """``nodes`` as a model of their own, and the float tensors they read (the cut). The float
        weights are declared as inputs, not copied: the group model reads the float model's."""
        produced = {t for node in nodes for t in node.output}
        seen, pulled, inputs, cut = set(produced), [], [], []
        for node in nodes:
            for t in node.input:
                if not t or t in seen:
                    continue
                seen.add(t)
                if t in self.constant_nodes:
                    pulled.append(self.constant_nodes[t])
                elif t in self.initializers:
                    init = self.initializers[t]
                    inputs.append(helper.make_tensor_value_info(t, init.data_type, init.dims))
                else:  # an unknown type only has to pass the checker: this model is rewritten, never run
                    inputs.append(self.types.get(t) or helper.make_tensor_value_info(t, TensorProto.FLOAT, []))
                    cut.append(t)
        outputs = [o for o in self.model.graph.output if o.name in produced]
        graph = helper.make_graph(pulled + nodes, f"{self.model.graph.name}/region", inputs, outputs)
        return self.wrap(graph), cut

    def wrap(self, graph: onnx.GraphProto) -> onnx.ModelProto:
        """``graph`` with the float model's opsets, IR version and local functions."""
        return helper.make_model(graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version,
                                 functions=self.model.functions)

    def producers_of(self, tensors: set[str]) -> list[onnx.NodeProto]:
        """The float nodes that compute ``tensors``, with everything they need, in graph order."""
        needed, kept = set(tensors), []
        for node in reversed(self.nodes):
            if any(t in needed for t in node.output):
                kept.append(node)
                needed.update(node.input)
        return kept[::-1]

    def unique_prefix(self, stem: str) -> str:
        """``<stem>/`` (longer when a float tensor name starts with it): names made under it cannot
        clash with the float model's."""
        prefix = f"{stem}/"
        while any(t.startswith(prefix) for t in self.names):
            prefix = f"{prefix[:-1]}_/"
        return prefix


class Renamed:
    """One region's rewritten nodes and constants under a prefix; tensors it reads from the float
    model keep their names."""

    def __init__(self, model: onnx.ModelProto, prefix: str, types: dict[str, onnx.ValueInfoProto]):
        own = {t for node in model.graph.node for t in node.output if t} | {i.name for i in model.graph.initializer}
        self.names = {t: prefix + t for t in own}
        self.nodes = []
        for node in model.graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = prefix + node.name
            copy.input[:] = [self.names.get(t, t) for t in node.input]
            copy.output[:] = [self.names.get(t, t) for t in node.output]
            self.nodes.append(copy)
        self.initializers = []
        for init in model.graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = self.names[init.name]
            self.initializers.append(copy)
        self.value_info = [_renamed_info(types[t], new) for t, new in self.names.items() if t in types]


def _renamed_info(info: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    return copy


def group_model(model: onnx.ModelProto, quant: dict[str, LayerQuant], output_qparams: dict) -> onnx.ModelProto:
    """One model whose first output is ``[N, len(quant), ...]``: at ``[:, i]`` the first output of
    ``make_fake_quant_model(model, {layer i: quant[layer i]}, output_qparams)``."""
    model = upgrade_opset(model)  # as make_fake_quant_model does; unchanged (not copied) from opset 13 on
    graph = FloatGraph(model)
    first = model.graph.output[0].name
    regions, stacked, needed = [], [], set()
    own = graph.unique_prefix("ranking")  # the group's own names: the stacking axis and output
    for name, lq in quant.items():
        region, cut = graph.region_model(graph.region(lq.layer.input))
        prefix = graph.unique_prefix(f"{name}/alone")
        renamed = Renamed(make_fake_quant_model(region, {name: lq}, output_qparams), prefix, graph.types)
        needed.update(cut)
        if first not in renamed.names:  # the layer does not reach the first output: it stays the float one
            needed.add(first)
        stacked.append(helper.make_node("Unsqueeze", [renamed.names.get(first, first), f"{own}axes"],
                                        [f"{prefix}{first}/stacked"], name=f"{prefix}{first}/stacked/Unsqueeze"))
        regions.append(renamed)
    nodes = graph.producers_of(needed) + [n for r in regions for n in r.nodes] + stacked
    nodes.append(helper.make_node("Concat", [n.output[0] for n in stacked], [f"{own}stacked"],
                                  name=f"{own}stacked/Concat", axis=1))
    return _assemble(graph, nodes, regions, own)


def _assemble(graph: FloatGraph, nodes: list[onnx.NodeProto], regions: list[Renamed], own: str) -> onnx.ModelProto:
    """The checked group model over ``nodes``: the float initializers they read, each region's own."""
    model = graph.model
    read = {t for node in nodes for t in node.input}
    produced = {t for node in nodes for t in node.output}
    initializers = [init for init in model.graph.initializer if init.name in read]
    initializers += [init for r in regions for init in r.initializers]
    initializers.append(numpy_helper.from_array(np.array([1], np.int64), f"{own}axes"))
    inputs = [i for i in model.graph.input if i.name not in graph.initializers]
    first = model.graph.output[0].type.tensor_type
    stacked = helper.make_tensor_value_info(f"{own}stacked", first.elem_type or TensorProto.FLOAT,
                                            [None] * (len(first.shape.dim) + 1))
    value_info = [v for v in model.graph.value_info if v.name in produced]
    value_info += [v for r in regions for v in r.value_info]
    out = graph.wrap(helper.make_graph(nodes, f"{model.graph.name}/ranking", inputs, [stacked], initializers,
                                       value_info=value_info))
    helper.set_model_props(out, {SIMULATE_KEY: "1"})
    onnx.checker.check_model(out)
    return out


def chunks(names: Iterable[str], size: int) -> list[list[str]]:
    """``names`` cut, in order, into the fewest runs of at most ``size``, as even as they come.

    >>> chunks("abcdefg", 3)
    [['a', 'b'], ['c', 'd'], ['e', 'f', 'g']]
    """
    names = list(names)
    count = -(-len(names) // size)
    return [names[i * len(names) // count:(i + 1) * len(names) // count] for i in range(count)]
