"""Exact early decisions: stop evaluating a configuration once the remaining images cannot save it.

For metrics that are a mean of per-image hits (top-1 accuracy, top-1 agreement with the float
model), after ``seen`` of ``total`` images with ``hits`` so far the final value lies in
``[hits / total, (hits + total - seen) / total]``. When even the upper end misses the budget,
the verdict is certain: the configuration fails, whatever the other images give. Images that
are likely misses go first (those the float model gets wrong, then the smallest float top-1
margins), so failing configurations are decided after a fraction of the images. Passing
configurations run to the end: a pass is provable only after most images anyway, and the
record needs their exact metric.
"""

from __future__ import annotations

import numpy as np

HIT_METRICS = ("top1", "agreement")


def hits(metric: str, logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image 0/1 of a hit metric (``top1``: the label; ``agreement``: the float model's top-1)."""
    target = labels if metric == "top1" else _flat(reference).argmax(axis=1)
    return (_flat(logits).argmax(axis=1) == target).astype(np.int64)


def _flat(outputs: np.ndarray) -> np.ndarray:
    """[N, C, 1, 1] and the like as [N, C]."""
    return outputs.reshape(len(outputs), -1)


def upper_bound(hit_count: int, seen: int, total: int) -> float:
    """The best final metric still possible: every image not seen yet a hit.

    >>> upper_bound(90, seen=100, total=1000)
    0.99
    """
    return (hit_count + total - seen) / total


def decision_order(metric: str, reference: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Image indices, likely misses first: the float model's misses, then ascending top-1 margin.

    >>> ref = np.array([[3.0, 1.0], [1.0, 1.5], [2.0, 0.0]])
    >>> decision_order("top1", ref, np.array([0, 0, 0])).tolist()  # image 1: float wrong; 0 before 2
    [1, 0, 2]
    """
    top2 = np.sort(_flat(reference), axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    float_hit = hits(metric, reference, labels, reference) if metric == "top1" else np.ones(len(reference), int)
    return np.lexsort((margin, float_hit))
