"""The quantization of one layer, as the calibrator gives it and the model builders take it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..graph.layers import Layer
from .numerics import (
    QParams,
)


@dataclass(frozen=True)
class LayerQuant:
    """The quantization of one layer: its input activation, its weight params and
    integer weights (both models use these integers), and its bias when bias correction
    changed it (None: the model's own bias is used)."""

    layer: Layer
    activation: QParams
    weight: QParams
    weight_q: np.ndarray = field(repr=False)
    clip: tuple[float, float]
    bias: np.ndarray | None = None
    rounding: str = "nearest"  # nearest, or gptq(damping) as weight_rounding.choose_rounding chose
    dynamic: bool = False  # the input is quantized on each run (MatMul, 2-D weight), not with ``activation``
