"""Graph rewriting for the quantized models: insert Q/DQ and integer constants ahead of nodes,
keep the node order topological, check the result. Names derive from the node names, e.g.
``<layer>/input/QuantizeLinear`` and ``<layer>/weight_scale``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.helpers import copy_model, drop_unused_initializers, model_metadata
from .layer_quant import LayerQuant
from .numerics import QParams

MIN_OPSET = 13  # per-channel QuantizeLinear (axis) needs opset 13


class GraphEdit:
    """Collects new nodes (inserted before a given node) and initializers for one rewrite."""

    def __init__(self, model: onnx.ModelProto):
        self.model = upgrade_opset(copy_model(model))
        self.before: dict[str, list[onnx.NodeProto]] = {}
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.initializers: list[onnx.TensorProto] = []

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
        """Insert Q and DQ of ``tensor`` ahead of node ``before``; return the dequantized name."""
        scale, zero_point = self.qparam_inputs(prefix, p)
        kwargs = {"axis": axis} if axis is not None and np.size(p.scale) > 1 else {}
        self.add_node(before, helper.make_node("QuantizeLinear", [tensor, scale, zero_point],
                                               [f"{prefix}_quantized"], name=f"{prefix}/QuantizeLinear", **kwargs))
        return self.dequantize(before, f"{prefix}_quantized", prefix, scale, zero_point, kwargs)

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
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(self.initializers)
        drop_unused_initializers(self.model)
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
