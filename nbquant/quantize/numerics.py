"""Quantization arithmetic as pure functions over numpy arrays.

Conventions follow ONNX QuantizeLinear: ``q = saturate(rint(x / scale) + zero_point)`` with
round-half-to-even, and ``x' = (q - zero_point) * scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UINT8 = (0, 255)
INT8 = (-128, 127)
UINT16 = (0, 65535)  # 16-bit activations (layer state a16w8)
INT16 = (-32768, 32767)


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor (arrays for per-channel), with its integer range."""

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int

    @property
    def dtype(self) -> type:
        if self.qmin >= 0:
            return np.uint8 if self.qmax <= UINT8[1] else np.uint16
        return np.int8 if self.qmax <= INT8[1] else np.int16

    @property
    def bits(self) -> int:
        return 8 * np.dtype(self.dtype).itemsize


def qparams_from_range(lo, hi, qrange=UINT8, symmetric=False) -> QParams:
    """Scale and zero point that map [lo, hi] (widened to hold 0) onto ``qrange``.

    >>> p = qparams_from_range(0.0, 6.0)
    >>> round(float(p.scale), 6), int(p.zero_point)
    (0.023529, 0)
    >>> p = qparams_from_range(-1.0, 1.0, INT8, symmetric=True)
    >>> round(float(p.scale), 6), int(p.zero_point)
    (0.007874, 0)
    """
    qmin, qmax = qrange
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if symmetric:
        amax = np.maximum(-lo, hi)
        zp = (qmin + qmax + 1) // 2
        scale = amax / min(qmax - zp, zp - qmin)
        zero_point = np.full_like(scale, zp)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zero_point = np.clip(np.rint(qmin - lo / safe), qmin, qmax)
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero tensor: any scale is exact
    return QParams(scale.astype(np.float32), zero_point.astype(np.int64), qmin, qmax)


def quantize(x: np.ndarray, p: QParams, axis: int | None = None) -> np.ndarray:
    """Integers for ``x`` (per-channel along ``axis`` when the params are arrays).

    >>> quantize(np.array([0.0, 0.01, 3.1, 9.0]), qparams_from_range(0.0, 6.0)).tolist()
    [0, 0, 132, 255]
    """
    scale, zero_point = _broadcast(p, x.ndim, axis)
    q = np.rint(x / scale) + zero_point
    return np.clip(q, p.qmin, p.qmax).astype(p.dtype)


def dequantize(q: np.ndarray, p: QParams, axis: int | None = None) -> np.ndarray:
    """Real values of the integers ``q``."""
    scale, zero_point = _broadcast(p, q.ndim, axis)
    return ((q.astype(np.float64) - zero_point) * scale).astype(np.float32)


def fake_quantize(x: np.ndarray, p: QParams, axis: int | None = None) -> np.ndarray:
    """Quantize then dequantize: the value a quantized model sees in place of ``x``."""
    return dequantize(quantize(x, p, axis), p, axis)


def weight_qparams(w: np.ndarray, per_channel: bool = True, axis: int = 0, weight_max: int = 127) -> QParams:
    """Symmetric int8 params mapping max |w| to ``weight_max``, per output channel (``axis``) or per tensor.

    >>> w = np.array([[0.5, -1.27], [0.01, 0.0]])
    >>> weight_qparams(w).scale.tolist()
    [0.009999999776482582, 7.874015864217654e-05]
    >>> weight_qparams(w, weight_max=64).scale.tolist()  # the pair-safe range: twice the step
    [0.019843749701976776, 0.00015624999650754035]
    """
    if per_channel:
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=reduce_axes)
    else:
        amax = np.max(np.abs(w))
    return qparams_from_range(-amax, amax, (-weight_max, weight_max), symmetric=True)


BIAS_LIMIT = 2 ** 30  # |int32 bias| at most this, leaving room in the int32 accumulator for the products


def bias_safe_weight_params(p: QParams, bias: np.ndarray | None, input_scale: float,
                            limit: int = BIAS_LIMIT) -> QParams:
    """Weight params whose scales are large enough for the bias to fit in int32 (below ``limit``).

    A channel with near-zero weights gets a tiny scale, and its bias in units of
    input_scale * weight_scale overflows int32; raising that channel's scale loses nothing
    (its weights round to the same few integers) and keeps the integer bias exact.

    >>> p = weight_qparams(np.array([[1.0], [1e-9]]))        # second channel: weights ~ 0
    >>> bool(bias_safe_weight_params(p, np.array([0.5, 0.5]), 0.02).scale[1] > p.scale[1])
    True
    """
    if bias is None:
        return p
    floor = np.abs(np.asarray(bias, np.float64)) / (float(input_scale) * limit)
    scale = np.asarray(p.scale, np.float64)
    if scale.size == 1:
        floor = floor.max(initial=0.0)
    safe = np.maximum(scale, floor).astype(np.float32).reshape(np.shape(p.scale))
    return QParams(safe, p.zero_point, p.qmin, p.qmax) if not np.array_equal(safe, p.scale) else p


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> np.ndarray:
    """Bias as int32 in units of input_scale * weight_scale, as integer conv kernels add it."""
    scale = np.float64(input_scale) * weight_scale.astype(np.float64)
    limit = np.iinfo(np.int32)
    return np.clip(np.rint(bias / scale), limit.min, limit.max).astype(np.int32)


def sqnr_db(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better, inf when exact)."""
    noise = float(np.sum((np.asarray(x, np.float64) - x_hat) ** 2))
    signal = float(np.sum(np.asarray(x, np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def _broadcast(p: QParams, ndim: int, axis: int | None):
    scale = np.asarray(p.scale, np.float64)
    zero_point = np.asarray(p.zero_point, np.float64)
    if scale.ndim == 1 and scale.size > 1:
        if axis is None:
            raise ValueError("per-channel params need the channel axis")
        shape = [1] * ndim
        shape[axis] = scale.size
        return scale.reshape(shape), zero_point.reshape(shape)
    return scale.reshape(()), zero_point.reshape(())
