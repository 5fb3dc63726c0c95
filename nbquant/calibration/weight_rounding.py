"""Weight rounding: nearest, or GPTQ (error-compensating rounding), chosen per layer on held-out data.

Rounding each weight to its nearest integer adds independent errors; GPTQ (Frantar et al.,
2023) rounds the input columns one at a time and moves each column's rounding error onto
the columns not yet rounded, weighted by the inverse input covariance, which minimises the
layer's output error ``E[((W_q - W) x)^2]`` for the calibration inputs; columns go in
decreasing input variance ("act order"), which measured slightly better on EfficientNet-Lite0. nbquant uses the
centred covariance: bias correction removes the mean part of the error afterwards.
On few or unrepresentative samples GPTQ can overfit, so :func:`choose_rounding` fits on one
half of the calibration batches, scores on the other (and the other way round), and keeps
nearest rounding unless a GPTQ damping wins on held-out data. The dampings are fitted together, in
one column loop, and the inverse covariance's Cholesky factor comes from one Cholesky factorisation
and a triangular inverse (about half the cost of one damping at a time with ``inv``; the same integers
on every layer of EfficientNet-Lite0 and MiniLM, see benchmarks/gptq.py).
"""

from __future__ import annotations

import numpy as np

DAMPING = (0.01, 0.1, 1.0)  # fractions of the mean input variance added to the covariance diagonal
BLOCK = 32  # columns updated together (GPTQ's lazy batch updates; 32: 15 % faster than 128 on Lite0, the same integers)


def round_nearest(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """Integers for ``w`` [out, in] with one scale per row (or a scalar).

    >>> round_nearest(np.array([[0.26, -0.74]]), np.array([0.5]), 1).tolist()
    [[1, -1]]
    """
    s = _row_scale(scale, w)
    return np.clip(np.rint(w / s), -qmax, qmax).astype(np.int64)


def round_gptq(w: np.ndarray, cov: np.ndarray, scale: np.ndarray, qmax: int, damping: float = 0.01) -> np.ndarray:
    """GPTQ integers for ``w`` [out, in] given the input covariance ``cov`` [in, in].

    With uncorrelated inputs it equals nearest rounding; with correlated ones a column's error is
    cancelled by its neighbours (here for x = [1, 1] the output is 0.5 as in float, not 0):

    >>> w, s = np.array([[0.25, 0.25]]), np.array([0.5])
    >>> round_gptq(w, np.eye(2), s, 1).tolist(), round_gptq(w, np.ones((2, 2)) + 1e-3 * np.eye(2), s, 1).tolist()
    ([[0, 0]], [[0, 1]])
    """
    return round_gptq_dampings(w, cov, scale, qmax, (damping,))[0]


def round_gptq_dampings(w: np.ndarray, cov: np.ndarray, scale: np.ndarray, qmax: int, dampings) -> np.ndarray:
    """:func:`round_gptq` for each damping at once, [dampings, out, in]: the act order and the column loop
    are shared, each step vectorised over the dampings (one Python loop instead of one per damping).

    With a damping that swamps the correlation it falls back to nearest rounding:

    >>> w, s = np.array([[0.2, 0.2]]), np.array([0.5])
    >>> round_gptq_dampings(w, np.ones((2, 2)) + 1e-3 * np.eye(2), s, 1, (0.01, 100.0)).tolist()
    [[[0, 1]], [[0, 0]]]
    """
    order = np.argsort(-np.diag(cov), kind="stable")  # act order: the highest-variance columns first
    s = _row_scale(scale, w)[:, 0]
    wt = np.array(np.asarray(w, np.float64).T[order])  # [in, out]: a column is a contiguous row here
    k = wt.shape[0]
    h = np.array(cov, np.float64)[np.ix_(order, order)]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    wt[dead] = 0.0
    mean_variance = max(float(np.mean(np.diag(h))), 1e-12)
    upper = inverse_cholesky(h, [damping * mean_variance for damping in dampings])
    diagonal = upper[:, np.arange(k), np.arange(k), None]
    wt = np.repeat(wt[None], len(dampings), axis=0)
    q = np.empty(wt.shape)
    for i1 in range(0, k, BLOCK):  # GPTQ's lazy batch updates: the columns after the block once per block
        i2 = min(i1 + BLOCK, k)
        block, errors = wt[:, i1:i2].copy(), np.empty((len(dampings), i2 - i1, wt.shape[2]))
        for i in range(i2 - i1):
            column = block[:, i]
            rounded = q[:, i1 + i] = np.minimum(np.maximum(np.rint(column / s), -qmax), qmax)
            errors[:, i] = (column - rounded * s) / diagonal[:, i1 + i]
            block[:, i:] -= upper[:, i1 + i, i1 + i:i2, None] * errors[:, i, None, :]
        if i2 < k:
            wt[:, i2:] -= upper[:, i1:i2, i2:].transpose(0, 2, 1) @ errors
    return q[:, np.argsort(order)].transpose(0, 2, 1).astype(np.int64, order="C")


def inverse_cholesky(h: np.ndarray, shifts) -> np.ndarray:
    """Upper-triangular ``U`` [shifts, k, k] with ``U.T @ U = inv(h + shift * I)`` for each shift, for
    a symmetric positive definite ``h``: the Cholesky factor of the reversed matrix, inverted and reversed
    back (a third of the work of inverting ``h`` and factoring the inverse).

    >>> u = inverse_cholesky(np.array([[4.0, 2.0], [2.0, 2.0]]), [0.0])[0]
    >>> np.allclose(u, np.triu(u)), np.allclose(u.T @ u, np.linalg.inv([[4.0, 2.0], [2.0, 2.0]]))
    (True, True)
    """
    k = h.shape[0]
    reversed_h = np.empty((len(shifts), k, k))
    reversed_h[:] = h[::-1, ::-1]
    reversed_h[:, np.arange(k), np.arange(k)] += np.asarray(shifts, np.float64)[:, None]
    return lower_inverse(np.linalg.cholesky(reversed_h))[:, ::-1, ::-1]


def lower_inverse(lower: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of lower-triangular matrices [..., k, k], by halves (numpy has no triangular solver).

    >>> lower_inverse(np.array([[2.0, 0.0], [1.0, 4.0]])).tolist()
    [[0.5, 0.0], [-0.125, 0.25]]
    """
    out = np.zeros_like(lower) if out is None else out
    k = lower.shape[-1]
    if k <= 64:
        out[...] = np.tril(np.linalg.inv(lower))
        return out
    m = k // 2
    lower_inverse(lower[..., :m, :m], out[..., :m, :m])
    lower_inverse(lower[..., m:, m:], out[..., m:, m:])
    out[..., m:, :m] = -(out[..., m:, m:] @ lower[..., m:, :m]) @ out[..., :m, :m]
    return out


def output_error(w: np.ndarray, q: np.ndarray, scale: np.ndarray, cov: np.ndarray) -> float:
    """``E[((W_q - W) x)^2]`` summed over outputs, for inputs of covariance ``cov``.

    >>> w, s, together = np.array([[0.25, 0.25]]), np.array([0.5]), np.ones((2, 2))
    >>> output_error(w, np.array([[0, 0]]), s, together), output_error(w, np.array([[0, 1]]), s, together)
    (0.25, 0.0)
    """
    return float(output_errors(w, q[None], scale, cov)[0])


def output_errors(w: np.ndarray, qs: np.ndarray, scale: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """:func:`output_error` of each candidate in ``qs`` [candidates, out, in], with one matrix product."""
    delta = qs * _row_scale(scale, w) - w
    product = (delta.reshape(-1, delta.shape[-1]) @ cov).reshape(delta.shape)
    return np.array([np.sum(p * d) for p, d in zip(product, delta)])


def choose_rounding(w: np.ndarray, scale: np.ndarray, qmax: int, covs: tuple[np.ndarray, np.ndarray],
                    cov_all: np.ndarray, dampings=DAMPING) -> tuple[np.ndarray, str]:
    """The integers and the name (``nearest`` or ``gptq(damping)``) of the rounding with the least
    held-out output error: each GPTQ candidate is fitted on the first covariance fold and scored on
    the second (nearest wins ties); the winner is refitted on ``cov_all``."""
    nearest = round_nearest(w, scale, qmax)
    candidates = np.concatenate([nearest[None], round_gptq_dampings(w, covs[0], scale, qmax, dampings)])
    errors = output_errors(w, candidates, scale, covs[1])
    best = int(np.argmin(np.where(np.isnan(errors), np.inf, errors)))  # the first of equal errors
    if best == 0:
        return nearest, "nearest"
    damping = dampings[best - 1]
    return round_gptq(w, cov_all, scale, qmax, damping), f"gptq({damping:g})"


def _row_scale(scale, w: np.ndarray) -> np.ndarray:
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    return np.broadcast_to(s, (w.shape[0], 1)) if s.size == 1 else s
