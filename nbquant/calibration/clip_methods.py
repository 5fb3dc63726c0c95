"""Activation clipping methods: each turns a histogram into the range [lo, hi] to quantize.

All take ``counts`` and ``edges`` (from :class:`nbquant.histogram.HistogramObserver`),
the integer range and whether the scale is symmetric, and return ``(lo, hi)``.
"""

from __future__ import annotations

import numpy as np

from ..quantize.numerics import UINT8, fake_quantize, qparams_from_range

N_CANDIDATES = 200


def minmax_range(counts, edges, qrange=UINT8, symmetric=False, observed=None, **_):
    """The observed extremes (exact when ``observed`` = (min, max) is given, else the bin edges).

    >>> counts, edges = np.array([1.0, 0, 1]), np.array([0.0, 1, 2, 3])
    >>> minmax_range(counts, edges)
    (0.0, 3.0)
    """
    if observed is not None:
        return float(observed[0]), float(observed[1])
    nonzero = np.flatnonzero(counts)
    return float(edges[nonzero[0]]), float(edges[nonzero[-1] + 1])


def percentile_range(counts, edges, qrange=UINT8, symmetric=False, percentile=99.99, **_):
    """Clip to the given percentile of the values (and 100 - percentile below zero).

    >>> counts, edges = np.ones(100), np.arange(101.0)
    >>> percentile_range(counts, edges, percentile=99.0)
    (0.0, 99.0)
    """
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / np.sum(counts)
    hi = float(np.interp(percentile / 100.0, cdf, edges))
    lo = float(np.interp(1.0 - percentile / 100.0, cdf, edges)) if edges[0] < 0 else float(edges[0])
    return lo, hi


def candidate_ranges(counts, edges, n=N_CANDIDATES, smallest=0.05, observed=None):
    """Shrinking ranges ``f * [lo, hi]`` for f from 1 down to ``smallest``, as (lo, hi) arrays."""
    lo, hi = minmax_range(counts, edges, observed=observed)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    factors = np.linspace(1.0, smallest, n)
    return lo * factors, hi * factors


def mse_range(counts, edges, qrange=UINT8, symmetric=False, observed=None, **_):
    """The clip range with the least squared quantize-dequantize error (IFMR-style search).

    Error is summed over bin centres weighted by counts; candidates shrink the observed range.
    """
    centers = 0.5 * (edges[:-1] + edges[1:])
    used = counts > 0
    centers, weights = centers[used], counts[used]
    los, his = candidate_ranges(counts, edges, observed=observed)
    params = qparams_from_range(los, his, qrange, symmetric)
    scale = params.scale.astype(np.float64)[:, None]
    zero_point = params.zero_point[:, None]
    q = np.clip(np.rint(centers[None, :] / scale) + zero_point, params.qmin, params.qmax)
    err = (((q - zero_point) * scale - centers[None, :]) ** 2) @ weights
    best = int(np.argmin(err))
    return float(los[best]), float(his[best])


def kl_range(counts, edges, qrange=UINT8, symmetric=False, bins_per_level=8, observed=None, **_):
    """The clip range whose quantized histogram is closest in KL divergence (TensorRT-style).

    Each candidate range is re-binned onto ``levels * bins_per_level`` bins, so every
    candidate is judged at the same resolution.
    """
    levels = qrange[1] - qrange[0] + 1
    cdf = np.concatenate([[0.0], np.cumsum(counts)])
    los, his = candidate_ranges(counts, edges, observed=observed)
    scores = []
    for lo, hi in zip(los, his):
        grid = np.linspace(lo, hi, levels * bins_per_level + 1)
        inside = np.diff(np.interp(grid, edges, cdf))
        below, above = np.interp(lo, edges, cdf), cdf[-1] - np.interp(hi, edges, cdf)
        scores.append(_kl_of_clip(inside, below, above, levels))
    best = int(np.argmin(scores))
    return float(los[best]), float(his[best])


def _kl_of_clip(inside, below, above, levels):
    """KL(P || Q): P folds the clipped-off mass into the edge bins, Q is the in-range part
    merged into ``levels`` groups and spread back evenly over its non-empty bins."""
    p = inside.copy()
    p[0] += below
    p[-1] += above
    starts = (np.arange(levels) * inside.size) // levels
    group = np.repeat(np.arange(levels), np.diff(np.append(starts, inside.size)))
    sums = np.add.reduceat(inside, starts)
    nonzero = np.add.reduceat((inside > 0).astype(np.float64), starts)
    q = np.where(inside > 0, (sums / np.maximum(nonzero, 1.0))[group], 0.0)
    p, q = p / p.sum(), q / max(q.sum(), 1e-300)
    mask = p > 0
    q = np.maximum(q[mask], 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q)))


METHODS = {
    "minmax": minmax_range,
    "percentile": percentile_range,
    "mse": mse_range,
    "kl": kl_range,
}


def clip_error(counts, edges, lo, hi, qrange=UINT8, symmetric=False) -> float:
    """Mean squared quantize-dequantize error of the histogram's values for range [lo, hi]."""
    centers = 0.5 * (edges[:-1] + edges[1:])
    err = (fake_quantize(centers, qparams_from_range(lo, hi, qrange, symmetric)) - centers) ** 2
    return float(err @ counts / max(counts.sum(), 1.0))
