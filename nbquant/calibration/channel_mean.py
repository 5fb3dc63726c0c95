"""Streaming per-channel mean of an activation, for bias correction."""

from __future__ import annotations

import numpy as np

from ..errors import NotFittedError


class ChannelMeanObserver:
    """Mean of each channel (axis 1) over every other axis and every batch seen."""

    def __repr__(self) -> str:
        return f"ChannelMeanObserver(channels={self.sum_.size if hasattr(self, 'sum_') else None})"

    def partial_fit(self, x: np.ndarray) -> ChannelMeanObserver:
        x = np.asarray(x, dtype=np.float64 if x.dtype == np.float64 else np.float32)
        # each sample's channel sum along its contiguous values (pairwise, so float32 stays exact to ~1e-7),
        # then the samples in float64: a third of the time of one float64 sum over the strided axes
        total = x.reshape(x.shape[0], x.shape[1], -1).sum(axis=2).sum(axis=0, dtype=np.float64)
        count = x.size // x.shape[1]
        if not hasattr(self, "sum_"):
            self.sum_, self.count_ = np.zeros_like(total), 0
        self.sum_ += total
        self.count_ += count
        return self

    def state(self) -> dict[str, np.ndarray] | None:
        """What was fitted, as arrays (kept in the cache); None before any data."""
        return None if not hasattr(self, "sum_") else {"sum": self.sum_, "count": np.array([self.count_])}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray] | None) -> ChannelMeanObserver:
        """The observer :meth:`state` describes (unfitted for None)."""
        observer = cls()
        if state is not None:
            observer.sum_, observer.count_ = np.array(state["sum"]), int(state["count"][0])
        return observer

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean of the values seen so far."""
        if not hasattr(self, "sum_"):
            raise NotFittedError("ChannelMeanObserver has seen no data yet; call partial_fit first")
        return self.sum_ / max(self.count_, 1)
