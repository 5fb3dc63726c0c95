"""Streaming activation histogram: memory stays flat however many images are calibrated."""

from __future__ import annotations

import numpy as np

from ..errors import NotFittedError

DEFAULT_BINS = 4096


SAMPLE = 1 << 20  # values of a batch binned at least; a larger tensor's are binned every (size // SAMPLE)-th


class HistogramObserver:
    """Accumulates a fixed-size histogram of a tensor's values over batches.

    The range grows as batches arrive; when it does, the counts seen so far are
    redistributed onto the new bins through the cumulative distribution (HFMG-style
    merging), so no raw activations are kept. The range is exact (every value); a batch of more
    than 2 * ``sample`` values is binned every ``size // sample``-th value: on EfficientNet-Lite0
    the largest tensors then bin a third of their values and every calibrated range stays the same
    (benchmarks/auto_calibration.py). ``count_`` and ``zeros_`` count the binned values.
    """

    def __init__(self, bins: int = DEFAULT_BINS, sample: int = SAMPLE):
        self.bins = bins
        self.sample = sample

    def __repr__(self) -> str:
        fitted = hasattr(self, "counts_")
        extra = f", range=[{self.min_:.4g}, {self.max_:.4g}], n={self.count_}" if fitted else ""
        return f"HistogramObserver(bins={self.bins}{extra})"

    def partial_fit(self, x: np.ndarray) -> HistogramObserver:
        """Add the values of one batch (non-finite values are ignored)."""
        x = np.asarray(x, dtype=np.float32).ravel()
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            x = x[np.isfinite(x)]
            lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if x.size == 0:
            return self
        if not hasattr(self, "counts_"):
            self.min_, self.max_, self.count_, self.zeros_ = lo, hi, 0, 0
            self.counts_ = np.zeros(self.bins, dtype=np.float64)
            self.edges_ = _edges(lo, hi, self.bins)
        elif lo < self.edges_[0] or hi > self.edges_[-1]:
            self._widen(min(lo, self.edges_[0]), max(hi, self.edges_[-1]))
        self.min_, self.max_ = min(self.min_, lo), max(self.max_, hi)
        step = x.size // self.sample
        x = x[::step] if step > 1 else x
        self.count_ += x.size
        self.zeros_ += int(np.count_nonzero(x == 0))
        self.counts_ += _bin_counts(x, self.edges_[0], self.edges_[-1], self.bins)
        return self

    def state(self) -> dict[str, np.ndarray] | None:
        """What was fitted, as arrays (kept in the cache); None before any data. :meth:`from_state` inverts it."""
        if not hasattr(self, "counts_"):
            return None
        return {"counts": self.counts_, "edges": self.edges_,
                "scalars": np.array([self.min_, self.max_, self.count_, self.zeros_], np.float64)}

    @classmethod
    def from_state(cls, bins: int, state: dict[str, np.ndarray] | None) -> HistogramObserver:
        """The observer :meth:`state` describes (unfitted for None)."""
        observer = cls(bins)
        if state is not None:
            observer.counts_, observer.edges_ = np.array(state["counts"]), np.array(state["edges"])
            lo, hi, count, zeros = (float(v) for v in state["scalars"])
            observer.min_, observer.max_, observer.count_, observer.zeros_ = lo, hi, int(count), int(zeros)
        return observer

    def fit(self, batches) -> HistogramObserver:
        """Histogram of every batch in ``batches`` (an iterable of arrays)."""
        for key in ("counts_", "edges_", "min_", "max_", "count_", "zeros_"):
            self.__dict__.pop(key, None)
        for x in batches:
            self.partial_fit(x)
        return self

    @property
    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of the values seen so far."""
        if not hasattr(self, "counts_"):
            raise NotFittedError("HistogramObserver has seen no data yet; call partial_fit first")
        return self.counts_, self.edges_

    @property
    def nonzero_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) without the exact zeros (ReLU's spike), which quantize exactly
        whatever the range; clip searches judge only the values that can suffer."""
        counts, edges = self.histogram
        counts = counts.copy()
        if edges[0] <= 0.0 <= edges[-1]:
            i = min(int(np.searchsorted(edges, 0.0, side="right")) - 1, len(counts) - 1)
            counts[i] = max(counts[i] - self.zeros_, 0.0)
        return counts, edges

    def _widen(self, lo: float, hi: float) -> None:
        # Grow by at least a quarter of the width so a slowly creeping range re-bins rarely.
        width = self.edges_[-1] - self.edges_[0]
        lo = min(lo, self.edges_[0] - 0.25 * width) if lo < self.edges_[0] else lo
        hi = max(hi, self.edges_[-1] + 0.25 * width) if hi > self.edges_[-1] else hi
        new_edges = _edges(lo, hi, self.bins)
        cdf = np.concatenate([[0.0], np.cumsum(self.counts_)])
        new_cdf = np.interp(new_edges, self.edges_, cdf, left=0.0, right=cdf[-1])
        self.counts_ = np.diff(new_cdf)
        self.edges_ = new_edges


def _edges(lo: float, hi: float, bins: int) -> np.ndarray:
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-12)
    return np.linspace(lo, hi, bins + 1)


CHUNK = 1 << 16  # elements binned at a time: the temporaries stay in the core's cache (a third faster on Lite0)


def _bin_counts(x: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts of float32 ``x`` (every value at least ``lo``) in ``bins`` equal bins over [lo, hi]; a few times
    faster than np.histogram."""
    counts = np.zeros(bins, np.int64)
    scale = np.float32(bins / (hi - lo))
    low = np.float32(lo)  # no float32 value lies in [lo, low): the values are at least low
    values, index = np.empty(min(CHUNK, x.size), np.float32), np.empty(min(CHUNK, x.size), np.intp)
    for start in range(0, x.size, CHUNK):
        chunk = x[start:start + CHUNK]
        part, where = values[:chunk.size], index[:chunk.size]
        np.subtract(chunk, low, out=part)  # >= 0: no lower clip needed
        part *= scale
        np.minimum(part, bins - 1, out=part)
        where[...] = part
        counts += np.bincount(where, minlength=bins)
    return counts
