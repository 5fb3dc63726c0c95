"""The quantization of one layer, as the calibrator gives it and the model builders take it, and the
closed set of states (precisions) a layer can be built in."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..graph.layers import Layer
from ..options import Choice
from .numerics import (
    UINT8,
    QParams,
)


class LayerState(Choice):
    """The precision one layer runs at (see :mod:`nbquant.quantize.layer_states`): ``int8`` (8-bit input,
    int8 weights: onnxruntime's integer kernels), ``a16w8`` (16-bit input, int8 weights), ``dynamic``
    (MatMul/Gemm input quantized on each run), ``float`` (float weights, reading the 8-bit output its
    int8 producer emits) or ``float_raw`` (float, reading its producer's unrounded output: the producer
    then leaves the integer kernels too)."""

    INT8 = "int8"
    A16W8 = "a16w8"
    DYNAMIC = "dynamic"
    FLOAT = "float"
    FLOAT_RAW = "float_raw"

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return {"int16": "a16w8", "w8a16": "a16w8", "float_raw_input": "float_raw"}

    @property
    def quantized(self) -> bool:
        """Whether the layer keeps int8 weights (quant_enable true in the config)."""
        return self in (LayerState.INT8, LayerState.A16W8, LayerState.DYNAMIC)


@dataclass(frozen=True)
class LayerQuant:
    """The quantization of one layer: its input activation, its weight params and
    integer weights (both models use these integers), and its bias when bias correction
    changed it (None: the model's own bias is used). ``input_range`` is the observed
    (min, max) of the input, which 16-bit activations span (None: the 8-bit clip range)."""

    layer: Layer
    activation: QParams
    weight: QParams
    weight_q: np.ndarray = field(repr=False)
    clip: tuple[float, float]
    bias: np.ndarray | None = None
    rounding: str = "nearest"  # nearest, or gptq(damping) as weight_rounding.choose_rounding chose
    dynamic: bool = False  # the input is quantized on each run (MatMul, 2-D weight), not with ``activation``
    input_range: tuple[float, float] | None = None

    @property
    def state(self) -> LayerState:
        """``dynamic``, ``a16w8`` (a 16-bit ``activation``) or ``int8``."""
        if self.dynamic:
            return LayerState.DYNAMIC
        return LayerState.A16W8 if self.activation.qmax - self.activation.qmin > UINT8[1] else LayerState.INT8
