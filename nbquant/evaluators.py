"""Evaluators: what "accuracy" means for the auto calibration, and when a loss is acceptable.

The protocol is the reference tool's: ``evaluate(model) -> metric`` (model: an ONNX file
path or ModelProto) and ``metric_eval(original, new) -> (ok, loss)``; ``calibration(model)``
is accepted for compatibility but nbquant calibrates on images it is given. The built-in
:class:`LogitEvaluator` computes a metric of the model's outputs on cached images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .datasets import ImageDataset
from .early_decision import HIT_METRICS, decision_order, hits, upper_bound
from .errors import ConfigError
from .evaluation import make_session
from .image_cache import CachedImages, cache_images
from .preprocess import Preprocess


class Evaluator(Protocol):
    def evaluate(self, model) -> object: ...

    def metric_eval(self, original, new) -> tuple[bool, float]: ...


@dataclass(frozen=True)
class Budget:
    """How much a metric (higher is better) may drop: absolute, or relative to the original."""

    max_drop: float
    relative: bool = False

    def __post_init__(self):
        value = self.max_drop
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"max_drop must be a number >= 0, got {value!r}")

    def check(self, original: float, new: float) -> tuple[bool, float]:
        """(ok, loss) with loss = original - new (divided by |original| when relative)."""
        loss = float(original) - float(new)
        if self.relative:
            loss = loss / abs(original) if original else (0.0 if loss == 0 else math.inf)
        return bool(loss <= self.max_drop + 1e-12), loss


def top1(logits, labels, reference=None) -> float:
    """Fraction of images whose highest logit is the label."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def agreement(logits, labels, reference) -> float:
    """Fraction of images where the model's top-1 equals the float model's (label-free)."""
    return float(np.mean(np.argmax(logits, axis=1) == np.argmax(reference, axis=1)))


def neg_kl(logits, labels, reference) -> float:
    """Minus the mean KL divergence of the softmax from the float model's (0 is perfect; label-free)."""
    return -mean_kl(reference, logits)


def mean_kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(logits))."""
    p_log = _log_softmax(reference)
    q_log = _log_softmax(logits)
    return float(np.mean(np.sum(np.exp(p_log) * (p_log - q_log), axis=1)))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


METRICS: dict[str, Callable] = {"top1": top1, "agreement": agreement, "kl": neg_kl}


class LogitEvaluator:
    """A metric of the model's outputs on a fixed set of images, with a loss budget.

    ``metric`` is ``"top1"`` (needs labels), ``"agreement"`` or ``"kl"`` (label-free fidelity
    to the float model), or a callable ``f(logits, labels, reference_logits) -> float``.
    Images are decoded once; the float model's outputs are computed once.
    """

    def __init__(self, data: ImageDataset, metric="top1", max_drop: float = 0.005, relative: bool = False,
                 batch_size: int = 16):
        self.data = data
        self.metric = metric
        self.budget = Budget(max_drop, relative)
        self.batch_size = batch_size
        if isinstance(metric, str) and metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)} or a callable, got {metric!r}")
        if metric == "top1" and not data.labeled:
            raise ConfigError(f"metric top1 needs labels, but the images in {data.root} are unlabeled; "
                              "use metric 'agreement' or 'kl' (fidelity to the float model)")

    def __repr__(self) -> str:
        name = self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "custom")
        kind = "relative" if self.budget.relative else "absolute"
        return f"LogitEvaluator(metric={name!r}, max_drop={self.budget.max_drop} {kind}, images={len(self.data)})"

    def prepare(self, float_model, pre: Preprocess, cache_file: Path | None = None, progress: bool = True):
        """Decode the images once and compute the float model's outputs once."""
        self.images_: CachedImages = cache_images(self.data, pre, cache_file, progress=progress,
                                                  desc="decode evaluation images")
        self.reference_ = self.logits(float_model, simulate=False)
        return self

    def logits(self, model, simulate: bool | None = None) -> np.ndarray:
        session = make_session(model, simulate=simulate)
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: x})[0] for x in self.images_.batches(self.batch_size)])

    def calibration(self, model) -> None:
        """Reference-tool compatibility; nbquant calibrates on the images it is given."""

    def evaluate(self, model) -> float:
        if not hasattr(self, "images_"):
            raise ConfigError("LogitEvaluator.prepare(float_model, preprocess) must run before evaluate")
        fn = METRICS[self.metric] if isinstance(self.metric, str) else self.metric
        return float(fn(self.logits(model), self.images_.labels, self.reference_))

    @property
    def decides_early(self) -> bool:
        """Whether :meth:`decide` can stop early (hit metrics: top1, agreement)."""
        return isinstance(self.metric, str) and self.metric in HIT_METRICS

    def decide(self, model, original: float) -> tuple[float | None, int, float]:
        """(metric, images used, upper bound): the exact metric (and bound), or None once the images
        seen prove that the configuration misses the budget whatever the others give; the bound is
        then the best metric it could still have reached (see :mod:`nbquant.early_decision`)."""
        if not self.decides_early:
            metric = self.evaluate(model)
            return metric, len(self.images_), metric
        order = decision_order(self.metric, self.reference_, self.images_.labels)
        session = make_session(model)
        name = session.get_inputs()[0].name
        total, seen, hit_count = len(order), 0, 0
        for start in range(0, total, self.batch_size):
            picked = order[start:start + self.batch_size]
            logits = session.run(None, {name: self.images_.gather(picked)})[0]
            hit_count += int(hits(self.metric, logits, self.images_.labels[picked], self.reference_[picked]).sum())
            seen += len(picked)
            bound = upper_bound(hit_count, seen, total)
            if not self.budget.check(original, bound)[0]:
                return None, seen, bound
        return hit_count / total, total, hit_count / total

    def metric_eval(self, original, new) -> tuple[bool, float]:
        return self.budget.check(original, new)
