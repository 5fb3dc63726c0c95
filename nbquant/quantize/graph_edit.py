"""Graph rewriting for the quantized models: insert Q/DQ and integer constants ahead of nodes,
keep the node order topological, check the result. Names derive from the node names, e.g.
``<layer>/input/QuantizeLinear`` and ``<layer>/weight_scale``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.helpers import copy_model, drop_unused_initializers, model_metadata
from ..graph.layers import constant_mins
from .layer_quant import LayerQuant
from .numerics import QParams, quantize

MIN_OPSET = 13  # per-channel QuantizeLinear (axis) needs opset 13
INT16_OPSET = 21  # ONNX QuantizeLinear/DequantizeLinear take 16-bit integers from opset 21
CONTRIB_DOMAIN = "com.microsoft"  # onnxruntime's Q/DQ, 16-bit in any opset (as its own quantizer writes them)


class GraphEdit:
    """Collects new nodes (inserted before a given node) and initializers for one rewrite."""

    def __init__(self, model: onnx.ModelProto):
        self.model = upgrade_opset(copy_model(model))
        self.before: dict[str, list[onnx.NodeProto]] = {}
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.initializers: list[onnx.TensorProto] = []
        initializers = {init.name for init in self.model.graph.initializer}
        # Min(x, constant) outputs: quantized as Min(Q(x), Q(constant)), on the integers
        self.mins = {out: (x, c) for out, (x, c) in constant_mins(self.model).items() if c in initializers}
        self.sunk: set[str] = set()  # those quantized so: their float Min goes where nothing else reads it
        self.metadata: dict[str, str] = {}  # written into the model by finish, with finish's own

    def constant(self, name: str, value: np.ndarray) -> str:
        """Add ``value`` as an initializer named ``name``; return the name."""
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qparam_inputs(self, prefix: str, p: QParams) -> tuple[str, str]:
        """``<prefix>_scale`` and ``<prefix>_zero_point`` initializers for ``p`` (0-d when per-tensor)."""
        scale = np.asarray(p.scale, np.float32)
        zero_point = np.asarray(p.zero_point).astype(p.dtype)
        return (self.constant(f"{prefix}_scale", scale.reshape(-1) if scale.size > 1 else scale.reshape(())),
                self.constant(f"{prefix}_zero_point",
                              zero_point.reshape(-1) if zero_point.size > 1 else zero_point.reshape(())))

    def add_node(self, before: str, node: onnx.NodeProto) -> None:
        """Insert ``node`` ahead of the node named ``before`` (after those added before it)."""
        self.before.setdefault(before, []).append(node)

    def quantize_dequantize(self, before: str, tensor: str, prefix: str, p: QParams,
                            axis: int | None = None) -> str:
        """Insert Q and DQ of ``tensor`` ahead of node ``before``; return the dequantized name. 16-bit
        params below opset 21 use onnxruntime's com.microsoft Q/DQ (the model keeps its opset). When ``tensor``
        is a Min of a tensor and a constant (an equalized ReLU6's per-channel clip), the Min moves behind the
        QuantizeLinear onto the 8-bit integers (exact: quantizing is monotonic), so the layer before it still
        fuses into an integer kernel."""
        scale, zero_point = self.qparam_inputs(prefix, p)
        kwargs = {"axis": axis} if axis is not None and np.size(p.scale) > 1 else {}
        if p.bits > 8 and self.opset < INT16_OPSET:
            kwargs["domain"] = CONTRIB_DOMAIN
        source, points = tensor, None
        if tensor in self.mins and p.bits == 8 and np.size(p.scale) == 1:  # the Min moves onto the integers
            source, points = self.mins[tensor]
        quantized = f"{prefix}_quantized" if points is None else f"{prefix}_unclipped"
        self.add_node(before, helper.make_node("QuantizeLinear", [source, scale, zero_point],
                                               [quantized], name=f"{prefix}/QuantizeLinear", **kwargs))
        if points is not None:
            self.sunk.add(tensor)
            value = numpy_helper.to_array(next(i for i in self.model.graph.initializer if i.name == points))
            bounds = self.constant(f"{prefix}_clip_points", quantize(value, p))
            self.add_node(before, helper.make_node("Min", [quantized, bounds], [f"{prefix}_quantized"],
                                                   name=f"{prefix}/Min"))
        return self.dequantize(before, f"{prefix}_quantized", prefix, scale, zero_point, kwargs)

    @property
    def opset(self) -> int:
        """The model's ONNX opset."""
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)

    def integer_weight(self, before: str, prefix: str, lq: LayerQuant) -> str:
        """Store ``lq``'s integer weights and insert their DequantizeLinear ahead of ``before``."""
        kwargs = {"axis": lq.layer.weight_axis} if np.size(lq.weight.scale) > 1 else {}
        quantized = self.constant(f"{prefix}_quantized", lq.weight_q)
        scale, zero_point = self.qparam_inputs(prefix, lq.weight)
        return self.dequantize(before, quantized, prefix, scale, zero_point, kwargs)

    def dequantize(self, before, quantized, prefix, scale, zero_point, kwargs) -> str:
        """Insert a DequantizeLinear of ``quantized`` ahead of ``before``; return ``<prefix>_dequantized``."""
        self.add_node(before, helper.make_node("DequantizeLinear", [quantized, scale, zero_point],
                                               [f"{prefix}_dequantized"], name=f"{prefix}/DequantizeLinear",
                                               **kwargs))
        return f"{prefix}_dequantized"

    def finish(self, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        """Apply the edit: nodes in topological order, unused initializers dropped, ``metadata``
        added to the model's, model checked."""
        graph = self.model.graph
        nodes = []
        for node in graph.node:
            nodes.extend(self.before.get(node.name, []))
            nodes.append(node)
            nodes.extend(self.after.get(node.name, []))
        read = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
        added = {id(node) for group in (*self.before.values(), *self.after.values()) for node in group}
        # a sunk Min nothing reads, and an added DequantizeLinear whose readers all got one of their own
        # (onnxruntime would run it anyway)
        nodes = [node for node in nodes if node.output[0] in read or not (
            (node.op_type == "Min" and node.output[0] in self.sunk)
            or (node.op_type == "DequantizeLinear" and id(node) in added))]
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(self.initializers)
        drop_unused_initializers(self.model)
        if any(n.domain == CONTRIB_DOMAIN for n in nodes) and \
                not any(o.domain == CONTRIB_DOMAIN for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
        metadata = {**self.metadata, **(metadata or {})}
        if metadata:
            onnx.helper.set_model_props(self.model, {**model_metadata(self.model), **metadata})
        onnx.checker.check_model(self.model)
        return self.model


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert models older than opset 13 so per-channel Q/DQ nodes are valid."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset < MIN_OPSET:
        model = onnx.version_converter.convert_version(model, MIN_OPSET)
    return model
