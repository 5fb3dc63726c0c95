"""Small models with the structures users bring, built with onnx.helper (no download, no torch).

Random weights scaled to keep activations in a sane range; 32x32 RGB inputs so a test runs
each through calibrate and auto-calibrate in seconds. Each builder returns a checked model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 32
CLASSES = 10


class Builder:
    """Accumulates nodes and initializers; names are derived from a running counter."""

    def __init__(self, seed: int, opset: int):
        self.rng, self.opset = np.random.default_rng(seed), opset
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str | None = None, outputs: int = 1, **attrs) -> str | list:
        names = [self.name(prefix or op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{names[0]}/{op}", **attrs))
        return names[0] if outputs == 1 else names

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, pad: int | None = None) -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0, 1.5 / np.sqrt(fan_in), (cout, cin // group, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.1, cout).astype(np.float32)
        return self.node("Conv", [x, self.const(w, "w"), self.const(b, "b")], "conv", kernel_shape=[k, k],
                         strides=[stride, stride], pads=[k // 2 if pad is None else pad] * 4, group=group)

    def relu6(self, x: str) -> str:
        if self.opset < 11:
            return self.node("Clip", [x], min=0.0, max=6.0)
        return self.node("Clip", [x, self.const(np.float32(0.0)), self.const(np.float32(6.0))])

    def matmul(self, x: str, din: int, dout: int, bias: bool = True) -> str:
        w = self.rng.normal(0, 1.0 / np.sqrt(din), (din, dout)).astype(np.float32)
        y = self.node("MatMul", [x, self.const(w, "w")])
        return self.node("Add", [y, self.const(self.rng.normal(0, 0.05, dout).astype(np.float32))]) if bias else y

    def head(self, x: str, channels: int) -> str:
        """GlobalAveragePool, Flatten, Gemm to CLASSES."""
        pooled = self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)
        w = self.rng.normal(0, 1.0 / np.sqrt(channels), (CLASSES, channels)).astype(np.float32)
        return self.node("Gemm", [pooled, self.const(w, "w"), self.const(np.zeros(CLASSES, np.float32))], transB=1)

    def model(self, x_shape: list, y: str, name: str, inputs: list | None = None, y_dim: int = CLASSES
              ) -> onnx.ModelProto:
        """The checked model with input ``x`` of ``x_shape`` (or the given ``inputs``) and output ``y``."""
        self.nodes[-1].output[0] = "y"
        for node in self.nodes:  # the last output was renamed
            node.input[:] = ["y" if i == y else i for i in node.input]
        inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
        graph = helper.make_graph(self.nodes, name, inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, y_dim])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 7
        onnx.checker.check_model(model, full_check=True)
        return model


def mobilenet_v2(seed: int = 0) -> onnx.ModelProto:
    """As PyTorch exports MobileNet-V2 at opset 11 (BN folded, ReLU6 as Clip with min/max inputs)."""
    b = Builder(seed, 11)
    x = b.relu6(b.conv("x", 3, 16, 3, 2))
    for cin, cout, stride in ((16, 16, 1), (16, 24, 2), (24, 24, 1)):
        h = b.relu6(b.conv(x, cin, cin * 4, 1))
        h = b.relu6(b.conv(h, cin * 4, cin * 4, 3, stride, group=cin * 4))
        h = b.conv(h, cin * 4, cout, 1)
        x = b.node("Add", [x, h]) if stride == 1 and cin == cout else h
    x = b.relu6(b.conv(x, 24, 64, 1))
    return b.model([None, 3, SIZE, SIZE], b.head(x, 64), "mobilenet_v2_opset11")


def resnet(seed: int = 0) -> onnx.ModelProto:
    """ResNet-style: 7x7 stem, MaxPool, basic blocks with Relu and a residual Add."""
    b = Builder(seed, 13)
    x = b.node("Relu", [b.conv("x", 3, 16, 7, 2)])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for _ in range(2):
        h = b.conv(b.node("Relu", [b.conv(x, 16, 16, 3)]), 16, 16, 3)
        x = b.node("Relu", [b.node("Add", [x, h])])
    return b.model([None, 3, SIZE, SIZE], b.head(x, 16), "resnet_style")


def nhwc(seed: int = 0) -> onnx.ModelProto:
    """A channels-last input ([N, H, W, 3]) transposed inside, as TensorFlow exports do."""
    b = Builder(seed, 13)
    x = b.node("Transpose", ["x"], perm=[0, 3, 1, 2])
    x = b.node("Relu", [b.conv(x, 3, 16, 3, 2)])
    x = b.node("Relu", [b.conv(x, 16, 32, 3, 2)])
    return b.model([None, SIZE, SIZE, 3], b.head(x, 32), "nhwc_input")


def softmax_output(seed: int = 0) -> onnx.ModelProto:
    """A classifier whose output is already a softmax."""
    b = Builder(seed, 13)
    x = b.node("Relu", [b.conv("x", 3, 16, 3, 2)])
    x = b.node("Relu", [b.conv(x, 16, 32, 3, 2)])
    return b.model([None, 3, SIZE, SIZE], b.node("Softmax", [b.head(x, 32)], axis=1), "softmax_output")


def encoder_block(b: Builder, x: str, tokens: int, dim: int, heads: int) -> str:
    """One pre-norm transformer block as PyTorch exports it (Shape/Gather read the layer input)."""
    head_dim = dim // heads
    h = b.node("LayerNormalization", [x, b.const(np.ones(dim, np.float32)), b.const(np.zeros(dim, np.float32))],
               axis=-1)
    batch = b.node("Gather", [b.node("Shape", [h]), b.const(np.array(0, np.int64))], axis=0)
    split_shape = b.node("Concat", [b.node("Unsqueeze", [batch, b.const(np.array([0], np.int64))]),
                                    b.const(np.array([tokens, 3, heads, head_dim], np.int64))], axis=0)
    qkv = b.node("Reshape", [b.matmul(h, dim, 3 * dim), split_shape])     # [N, T, 3, H, d]
    qkv = b.node("Transpose", [qkv], perm=[2, 0, 3, 1, 4])                 # [3, N, H, T, d]
    q, k, v = (b.node("Gather", [qkv, b.const(np.array(i, np.int64))], axis=0) for i in range(3))
    scores = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = b.node("Mul", [scores, b.const(np.float32(head_dim ** -0.5))])
    attn = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])      # [N, H, T, d]
    merge_shape = b.node("Concat", [b.node("Unsqueeze", [batch, b.const(np.array([0], np.int64))]),
                                    b.const(np.array([tokens, dim], np.int64))], axis=0)
    attn = b.node("Reshape", [b.node("Transpose", [attn], perm=[0, 2, 1, 3]), merge_shape])
    x = b.node("Add", [x, b.matmul(attn, dim, dim)])
    h = b.node("LayerNormalization", [x, b.const(np.ones(dim, np.float32)), b.const(np.zeros(dim, np.float32))],
               axis=-1)
    h = b.matmul(h, dim, 2 * dim)
    gelu = b.node("Mul", [b.node("Mul", [h, b.const(np.float32(0.5))]),
                          b.node("Add", [b.node("Erf", [b.node("Div", [h, b.const(np.float32(2 ** 0.5))])]),
                                         b.const(np.float32(1.0))])])
    x = b.node("Add", [x, b.matmul(gelu, 2 * dim, dim)])
    return x


def vit(seed: int = 0, depth: int = 2, dim: int = 32, heads: int = 2) -> onnx.ModelProto:
    """A ViT block stack as PyTorch exports it: Conv patch embedding, LayerNormalization, MatMul
    with constant weights, Erf-GELU, Softmax attention with activation x activation MatMuls, and
    Shape/Gather nodes that read a layer's input before the layer."""
    b = Builder(seed, 17)
    patch, tokens = 4, (SIZE // 4) ** 2
    x = b.conv("x", 3, dim, patch, patch, pad=0)                               # [N, dim, 8, 8]
    x = b.node("Transpose", [b.node("Reshape", [x, b.const(np.array([0, dim, tokens], np.int64))])],
               perm=[0, 2, 1])                                                 # [N, T, dim]
    for _ in range(depth):
        x = encoder_block(b, x, tokens, dim, heads)
    pooled = b.node("ReduceMean", [x], axes=[1], keepdims=0)
    w = b.rng.normal(0, 1.0 / np.sqrt(dim), (CLASSES, dim)).astype(np.float32)
    y = b.node("Gemm", [pooled, b.const(w, "w"), b.const(np.zeros(CLASSES, np.float32))], transB=1)
    return b.model([None, 3, SIZE, SIZE], y, "vit_blocks")


TEXT_TOKENS, TEXT_VOCAB = 16, 50


def text_encoder(seed: int = 0, depth: int = 2, dim: int = 32, heads: int = 2) -> onnx.ModelProto:
    """A sentence encoder that takes no image: int64 ``input_ids`` and ``attention_mask`` [N, 16],
    token and position embeddings (Gather), transformer blocks, masked mean pooling; its output is
    an embedding [N, dim], not class scores."""
    b = Builder(seed, 17)
    table = b.rng.normal(0, 1.0, (TEXT_VOCAB, dim)).astype(np.float32)
    positions = b.rng.normal(0, 0.3, (1, TEXT_TOKENS, dim)).astype(np.float32)
    x = b.node("Add", [b.node("Gather", [b.const(table, "embeddings"), "input_ids"], axis=0), b.const(positions)])
    for _ in range(depth):
        x = encoder_block(b, x, TEXT_TOKENS, dim, heads)
    mask = b.node("Unsqueeze", [b.node("Cast", ["attention_mask"], to=TensorProto.FLOAT),
                                b.const(np.array([2], np.int64))])                 # [N, T, 1]
    total = b.node("ReduceSum", [b.node("Mul", [x, mask]), b.const(np.array([1], np.int64))], keepdims=0)
    count = b.node("ReduceSum", [mask, b.const(np.array([1], np.int64))], keepdims=0)
    y = b.node("Div", [total, b.node("Max", [count, b.const(np.float32(1e-9))])])
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, [None, TEXT_TOKENS])
              for name in ("input_ids", "attention_mask")]
    return b.model([], y, "text_encoder", inputs, dim)


def text_samples(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random token sequences with 4 to 16 real tokens (the rest padding) for :func:`text_encoder`."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, TEXT_TOKENS + 1, n)
    mask = (np.arange(TEXT_TOKENS)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, TEXT_VOCAB, (n, TEXT_TOKENS)) * mask, "attention_mask": mask}


STRUCTURES = {"mobilenet_v2_opset11": mobilenet_v2, "resnet_style": resnet, "vit_blocks": vit,
              "nhwc_input": nhwc, "softmax_output": softmax_output}


def probability_map(seed: int = 0, size: tuple | None = None, threshold: str | None = None) -> onnx.ModelProto:
    """A DBNet-like dense model: Conv stride 2, Relu, Conv, ConvTranspose back to the input size, Sigmoid: a
    [N, 1, H, W] probability map; H and W free unless ``size`` (height, width) fixes them; ``threshold``:
    the map threshold recorded in the metadata (nbquant.map_threshold)."""
    b = Builder(seed, 13)
    x = b.node("Relu", [b.conv("x", 3, 8, 3, 2)])
    x = b.node("Relu", [b.conv(x, 8, 8, 3)])
    w = b.rng.normal(0, 0.5, (8, 1, 2, 2)).astype(np.float32)
    x = b.node("ConvTranspose", [x, b.const(w, "w"), b.const(np.array([0.0], np.float32))], strides=[2, 2])
    b.node("Sigmoid", [x])
    b.nodes[-1].output[0] = "y"
    dims = ["N", 3, *(size or ("H", "W"))]
    graph = helper.make_graph(b.nodes, "probability_map", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, *dims[2:]])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    if threshold is not None:
        model.metadata_props.add(key="nbquant.map_threshold", value=threshold)
    onnx.checker.check_model(model, full_check=True)
    return model
