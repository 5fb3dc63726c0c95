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


def conv_chain_model(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8, 3x3) -> Relu -> pointwise Conv(8->8) -> Relu -> Conv(8->8, 3x3) -> Relu -> GlobalAveragePool
    -> Flatten -> Gemm(8->5, transB): a chain in which each layer reads the one before it."""
    rng = np.random.default_rng(seed)
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 8, 8] x) => (float[N, 5] y) {
        c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
        r1 = Relu (c1)
        c2 = Conv <kernel_shape = [1, 1]> (r1, w2, b2)
        r2 = Relu (c2)
        c3 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (r2, w3, b3)
        r3 = Relu (c3)
        p = GlobalAveragePool (r3)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, wg, bg)
    }
    """
    return _with_weights(text, {"w1": rng.normal(0, 0.5, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
                                "w2": rng.normal(0, 0.5, (8, 8, 1, 1)), "b2": rng.normal(0, 0.1, 8),
                                "w3": rng.normal(0, 0.3, (8, 8, 3, 3)), "b3": rng.normal(0, 0.1, 8),
                                "wg": rng.normal(0, 1, (5, 8)), "bg": rng.normal(0, 0.1, 5)})


def relu6_chain_model(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Conv(3->6, 3x3) -> ReLU6 -> depthwise Conv(6, 3x3) -> Relu -> Conv(6->4, 1x1): channel ranges
    spread over three orders of magnitude, one depthwise channel with a high bias."""
    rng = np.random.default_rng(seed)
    clip = "Clip <min = 0.0, max = 6.0> (c1)" if opset < 11 else "Clip (c1, zero, six)"
    text = f"""
    <ir_version: {6 if opset < 11 else 8}, opset_import: ["" : {opset}]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
        c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
        a1 = {clip}
        c2 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3], group = 6> (a1, w2, b2)
        a2 = Relu (c2)
        y = Conv <kernel_shape = [1, 1]> (a2, w3, b3)
    }}
    """
    model = parser.parse_model(text)
    for node, name in zip(model.graph.node, ("c1", "a1", "c2", "a2", "c3")):
        node.name = name
    out_scale = np.array([0.01, 0.1, 1.0, 3.0, 0.3, 0.05])[:, None, None, None]
    weights = {"w1": rng.normal(0, 1, (6, 3, 3, 3)) * out_scale, "b1": rng.normal(0, 0.5, 6),
               "w2": rng.normal(0, 1, (6, 1, 3, 3)) / np.sqrt(out_scale), "b2": np.array([50.0, 0.1, 0, 0.2, 0, 0]),
               "w3": rng.normal(0, 1, (4, 6, 1, 1)), "b3": rng.normal(0, 0.1, 4)}
    if opset >= 11:
        weights.update(zero=np.array(0.0), six=np.array(6.0))
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items())
    onnx.checker.check_model(model)
    return model
