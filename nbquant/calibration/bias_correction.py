"""Bias correction: cancel the mean output shift that rounding the weights causes.

Rounding a weight changes every output by ``(W_q - W) x``; on average that is
``(W_q - W) E[x]`` per output channel, which the bias can absorb exactly. Zero padding
at the borders makes it an approximation for Conv.
"""

from __future__ import annotations

import numpy as np


def weight_error_shift(weight: np.ndarray, weight_fq: np.ndarray, input_mean: np.ndarray,
                       op: str, group: int = 1) -> np.ndarray | None:
    """Expected output shift per output channel, ``sum (W_q - W) E[x]``; None where not supported.

    >>> w = np.array([[[[1.0]], [[2.0]]]])            # Conv 2 -> 1 channel, 1x1
    >>> wq = np.array([[[[1.5]], [[2.0]]]])
    >>> weight_error_shift(w, wq, np.array([2.0, 9.0]), "Conv").tolist()
    [1.0]
    """
    error = weight_fq.astype(np.float64) - weight.astype(np.float64)
    mean = np.asarray(input_mean, np.float64)
    if op == "Conv":
        out_channels, in_per_group = error.shape[:2]
        per_group_out = out_channels // group
        group_of = np.arange(out_channels) // per_group_out
        channel = group_of[:, None] * in_per_group + np.arange(in_per_group)[None, :]
        return np.einsum("oc,oc->o", error.reshape(out_channels, in_per_group, -1).sum(axis=2), mean[channel])
    if op == "Gemm":  # weight axis 0: [out, in]; handled by the caller transposing when needed
        return error @ mean
    return None
