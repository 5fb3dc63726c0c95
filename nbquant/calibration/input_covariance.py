"""Input covariance of a layer's weight columns, streamed over calibration batches (for GPTQ rounding).

A layer computes ``W @ rows``, where a row is what one output position sees: for a Conv the
im2col patch (in channel, kernel y, kernel x order, as the weight reshapes to [out, in]), for
Gemm/MatMul the input vector. The observer keeps ``rows.T @ rows``, the row sums and counts in
two folds (alternate batches), so the rounding can be chosen on held-out data; at most
``max_rows`` random rows per batch keep high-resolution layers cheap. Memory: 2 * in^2 float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import NotFittedError
from ..graph.layers import Layer


@dataclass(frozen=True)
class ConvGeometry:
    """What maps a Conv's input to its im2col rows."""

    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)


def conv_geometry(node: onnx.NodeProto, weight_shape) -> ConvGeometry | None:
    """The geometry of a 2-D, group-1 Conv with explicit pads; None for anything else."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if len(weight_shape) != 4 or attrs.get("group", 1) != 1 or auto_pad not in (b"NOTSET", "NOTSET"):
        return None
    return ConvGeometry(tuple(weight_shape[2:]), tuple(attrs.get("strides", (1, 1))),
                        tuple(attrs.get("pads", (0, 0, 0, 0))), tuple(attrs.get("dilations", (1, 1))))


def conv_rows(x: np.ndarray, geometry: ConvGeometry, positions: np.ndarray | None = None) -> np.ndarray:
    """im2col rows [M, C * kh * kw] of ``x`` [N, C, H, W] at flat output ``positions`` (all when None).

    >>> x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    >>> conv_rows(x, ConvGeometry((2, 2))).tolist()
    [[0.0, 1.0, 3.0, 4.0], [1.0, 2.0, 4.0, 5.0], [3.0, 4.0, 6.0, 7.0], [4.0, 5.0, 7.0, 8.0]]
    """
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = (geometry.kernel, geometry.strides, geometry.pads,
                                                      geometry.dilations)
    n, c = x.shape[:2]
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any((pt, pl, pb, pr)) else x
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    out_h = (padded.shape[2] - span_h) // sh + 1
    out_w = (padded.shape[3] - span_w) // sw + 1
    if positions is None:
        positions = np.arange(n * out_h * out_w)
    b, rest = np.divmod(positions, out_h * out_w)
    oy, ox = np.divmod(rest, out_w)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    patches = windows[b, :, oy * sh, ox * sw][:, :, ::dh, ::dw]
    return patches.reshape(len(positions), c * kh * kw)


def output_positions(x: np.ndarray, geometry: ConvGeometry | None) -> int:
    """How many rows ``x`` gives: output positions of a Conv, else vectors of the last axis."""
    if geometry is None:
        return int(np.prod(x.shape[:-1]))
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = (geometry.kernel, geometry.strides, geometry.pads,
                                                      geometry.dilations)
    out_h = (x.shape[2] + pt + pb - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return x.shape[0] * out_h * out_w


class CovarianceObserver:
    """Streams a layer's input rows into per-fold Gram matrices; ``covariance(fold)`` is centred.

    ``geometry`` None means a Gemm/MatMul input (rows are vectors of the last axis).
    """

    def __init__(self, geometry: ConvGeometry | None = None, max_rows: int = 4096, seed: int = 0):
        self.geometry, self.max_rows = geometry, max_rows
        self._rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"CovarianceObserver(geometry={self.geometry}, max_rows={self.max_rows})"

    def partial_fit(self, x: np.ndarray) -> CovarianceObserver:
        total = output_positions(x, self.geometry)
        picked = (np.sort(self._rng.choice(total, self.max_rows, replace=False)) if total > self.max_rows
                  else None)
        if self.geometry is not None:
            rows = conv_rows(x, self.geometry, picked)
        else:
            rows = x.reshape(-1, x.shape[-1])
            rows = rows if picked is None else rows[picked]
        rows = np.ascontiguousarray(rows, np.float32)
        if not hasattr(self, "gram_"):
            k = rows.shape[1]
            self.gram_, self.sum_, self.count_ = np.zeros((2, k, k)), np.zeros((2, k)), np.zeros(2)
            self.batches_ = 0
        fold = self.batches_ % 2
        self.gram_[fold] += rows.T @ rows
        self.sum_[fold] += rows.sum(axis=0, dtype=np.float64)
        self.count_[fold] += len(rows)
        self.batches_ += 1
        return self

    @property
    def folds(self) -> int:
        """How many folds hold data (2 once two batches were seen)."""
        return int((getattr(self, "count_", np.zeros(2)) > 0).sum())

    def covariance(self, fold: int | None = None) -> np.ndarray:
        """Centred input covariance of one fold (0 or 1), or of both when None."""
        if not hasattr(self, "gram_"):
            raise NotFittedError("this CovarianceObserver has seen no batch yet; call partial_fit(x) first")
        pick = slice(None) if fold is None else slice(fold, fold + 1)
        n = self.count_[pick].sum()
        mean = self.sum_[pick].sum(axis=0) / n
        return self.gram_[pick].sum(axis=0) / n - np.outer(mean, mean)


def weight_matrix(layer: Layer, w: np.ndarray) -> np.ndarray | None:
    """The weight as [out, in] columns matching the observer's rows; None where GPTQ does not apply."""
    if layer.kind in ("conv", "pointwise"):
        return w.reshape(w.shape[0], -1)
    if layer.kind == "gemm":
        return w if layer.weight_axis == 0 else w.T
    if layer.kind == "matmul" and w.ndim == 2:
        return w.T
    return None


def from_weight_matrix(layer: Layer, q2: np.ndarray, shape) -> np.ndarray:
    """Inverse of :func:`weight_matrix` for integer weights."""
    if layer.kind in ("conv", "pointwise"):
        return q2.reshape(shape)
    return q2 if layer.kind == "gemm" and layer.weight_axis == 0 else q2.T
