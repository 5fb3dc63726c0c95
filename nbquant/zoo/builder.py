"""Writing an ONNX graph from a checkpoint's weights, node by node, as ``torch.onnx.export`` names it.

:class:`GraphBuilder` is what every zoo model shares: weights read by key and checked for shape,
initializers registered once, nodes appended in order, the unread weights listed, the result
wrapped into a checked model. The architectures (``efficientnet_lite``, ``minilm``) add their layers.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError

IR_VERSION = 8
PRODUCER = "nbquant.zoo"


def torch_scope(module: str) -> str:
    """Module path as torch.onnx writes node scopes: ``encoder.layer.0.output`` -> ``/encoder/layer.0/output``.

    >>> torch_scope("encoder.layer.0.attention.self"), torch_scope("_blocks.3._bn1")
    ('/encoder/layer.0/attention/self', '/_blocks.3/_bn1')
    """
    return "/" + re.sub(r"\.(?!\d)", "/", module)


class GraphBuilder:
    """Collects the nodes and initializers of one graph, reading each weight from a state dict by its key.

    ``prefix`` goes before every key looked up (``bert.`` for a checkpoint with a task head);
    ``used`` records each key read with its shape. Subclasses word the errors for their
    checkpoints with ``missing_hint`` and ``shape_hint``.
    """

    missing_hint = "is it the right checkpoint?"
    shape_hint = "is it the right checkpoint?"

    def __init__(self, weights: dict[str, np.ndarray], source: str, prefix: str = ""):
        self.weights, self.source, self.prefix = weights, source, prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.used: dict[str, tuple[int, ...]] = {}

    def weight(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """The float32 array under ``prefix + key``, which must have ``shape``."""
        full = self.prefix + key
        if full not in self.weights:
            raise ModelError(f"{self.source} has no weight {full!r}; {self.missing_hint}")
        value = np.asarray(self.weights[full])
        if value.shape != shape:
            raise ModelError(f"{self.source}: weight {full!r} has shape {value.shape}, expected {shape}; "
                             f"{self.shape_hint}")
        self.used[full] = shape
        return value.astype(np.float32)

    def constant(self, name: str, value: np.ndarray) -> str:
        """Register an initializer (once) and return its name."""
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def param(self, key: str, shape: tuple[int, ...]) -> str:
        """The weight under ``key`` as an initializer named like the key (as torch.onnx names parameters)."""
        return self.constant(key, self.weight(key, shape))

    def scalar(self, name: str, value, dtype=np.float32) -> str:
        """A shared 0-d constant."""
        return self.constant(name, np.array(value, dtype))

    def ints(self, name: str, values) -> str:
        """A shared int64 vector constant (axes, shapes)."""
        return self.constant(name, np.array(values, np.int64))

    def node(self, op: str, name: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        """Append a node named ``name``; its output is ``<name>_output_0`` unless given."""
        output = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def unused(self, expected: Callable[[str], bool] = lambda key: True) -> list[str]:
        """The keys of the state dict, among those ``expected`` to be read, that the graph never read, sorted."""
        return sorted(key for key in self.weights if key not in self.used and expected(key))

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              opset: int, doc_string: str, props: dict[str, str]) -> onnx.ModelProto:
        """The nodes and initializers as a model of the default-domain ``opset``, with ``props`` as
        metadata, checked with full shape inference."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                                  producer_name=PRODUCER, doc_string=doc_string)
        helper.set_model_props(model, props)
        onnx.checker.check_model(model, full_check=True)
        return model
