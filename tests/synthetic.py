"""Tiny ONNX graphs for unit tests, written with onnx.parser and numpy_helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper, parser


def _with_weights(text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items())
    onnx.checker.check_model(model)
    return model


def conv_bn_model(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->4, 3x3) -> BatchNormalization -> Relu -> depthwise Conv(4, 3x3) -> Add(skip) -> output."""
    rng = np.random.default_rng(seed)
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
        c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
        bn = BatchNormalization <epsilon = 0.001> (c1, gamma, beta, mean, var)
        r = Relu (bn)
        c2 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3], group = 4> (r, w2, b2)
        y = Add (c2, r)
    }
    """
    weights = {
        "w1": rng.normal(0, 0.5, (4, 3, 3, 3)), "b1": rng.normal(0, 0.1, 4),
        "gamma": rng.uniform(0.5, 1.5, 4), "beta": rng.normal(0, 0.1, 4),
        "mean": rng.normal(0, 0.1, 4), "var": rng.uniform(0.5, 2.0, 4),
        "w2": rng.normal(0, 0.5, (4, 1, 3, 3)), "b2": rng.normal(0, 0.1, 4),
    }
    return _with_weights(text, weights)


def gemm_matmul_model(seed: int = 0) -> onnx.ModelProto:
    """Gemm(transB) -> Relu -> MatMul with a constant weight; one unnamed node."""
    rng = np.random.default_rng(seed)
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 6] x) => (float[N, 3] y) {
        h = Gemm <transB = 1> (x, wg, bg)
        r = Relu (h)
        y = MatMul (r, wm)
    }
    """
    return _with_weights(text, {"wg": rng.normal(0, 1, (5, 6)), "bg": rng.normal(0, 0.1, 5),
                                "wm": rng.normal(0, 1, (5, 3))})


def no_layer_model() -> onnx.ModelProto:
    """A graph with nothing to quantize."""
    return parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 8, 8] x) => (float[N, 3, 8, 8] y) { y = Relu (x) }
    """)


def shape_reads_layer_input_model(seed: int = 0) -> onnx.ModelProto:
    """As PyTorch exports attention: a Shape reads a MatMul's input before the MatMul, and the
    shape feeds a Reshape of the MatMul's output."""
    rng = np.random.default_rng(seed)
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 8] x) => (float[N, 4, 6] y) {
        s = Shape (x)
        idx = Constant <value = int64[1] {0}> ()
        n = Gather <axis = 0> (s, idx)
        rest = Constant <value = int64[2] {4, 6}> ()
        target = Concat <axis = 0> (n, rest)
        h = MatMul (x, w1)
        r = Relu (h)
        m = MatMul (r, w2)
        y = Reshape (m, target)
    }
    """
    return _with_weights(text, {"w1": rng.normal(0, 0.5, (8, 8)), "w2": rng.normal(0, 0.5, (8, 6))})
