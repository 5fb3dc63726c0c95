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
        axes = tuple(i for i in range(x.ndim) if i != 1)
        total = x.sum(axis=axes, dtype=np.float64)
        count = x.size // x.shape[1]
        if not hasattr(self, "sum_"):
            self.sum_, self.count_ = np.zeros_like(total), 0
        self.sum_ += total
        self.count_ += count
        return self

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean of the values seen so far."""
        if not hasattr(self, "sum_"):
            raise NotFittedError("ChannelMeanObserver has seen no data yet; call partial_fit first")
        return self.sum_ / max(self.count_, 1)
