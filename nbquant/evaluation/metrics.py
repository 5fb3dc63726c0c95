"""Metrics of a model's outputs against labels or the float model's, and the loss budget."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..options import check_number
from .early_decision import hits


@dataclass(frozen=True)
class Budget:
    """How much a metric (higher is better) may drop: absolute, or relative to the original."""

    max_drop: float
    relative: bool = False

    def __post_init__(self):
        check_number("max_drop", self.max_drop)

    def check(self, original: float, new: float) -> tuple[bool, float]:
        """(ok, loss) with loss = original - new (divided by |original| when relative)."""
        loss = float(original) - float(new)
        if self.relative:
            loss = loss / abs(original) if original else (0.0 if loss == 0 else math.inf)
        return bool(loss <= self.max_drop + 1e-12), loss


def top1(logits, labels, reference=None) -> float:
    """Fraction of images whose highest logit is the label."""
    return float(np.mean(hits("top1", logits, labels, reference)))


def agreement(logits, labels, reference) -> float:
    """Fraction of images where the model's top-1 equals the float model's (label-free)."""
    return float(np.mean(hits("agreement", logits, labels, reference)))


def neg_kl(logits, labels, reference) -> float:
    """Minus the mean KL divergence of the softmax from the float model's (0 is perfect; label-free)."""
    return -mean_kl(reference, logits)


def mean_kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(logits))."""
    p_log = _log_softmax(reference)
    q_log = _log_softmax(logits)
    return float(np.mean(np.sum(np.exp(p_log) * (p_log - q_log), axis=1)))


def cosine(outputs, labels, reference) -> float:
    """Mean cosine similarity of each sample's output to the float model's (1 is perfect; label-free),
    e.g. for sentence embeddings."""
    return float(np.mean(cosine_similarity(reference, outputs)))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per sample (first axis), the cosine similarity of ``a`` and ``b`` flattened.

    >>> cosine_similarity(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]])).round(6).tolist()
    [1.0, -1.0]
    """
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-30)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


METRICS: dict[str, Callable] = {"top1": top1, "agreement": agreement, "kl": neg_kl, "cosine": cosine}
