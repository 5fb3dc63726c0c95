"""Metrics of a model's outputs against labels or the float model's, and the loss budget.

Class scores: ``top1`` (labels), ``agreement`` and ``kl`` (label-free). Other outputs, label-free,
each exactly at its best value for the float model itself (empty, constant and tiny outputs too):
``cosine`` (embeddings), ``sqnr`` (any output: signal over error power in dB) and ``iou`` (maps:
the thresholded map against the float model's, ``iou@0.3`` for threshold 0.3).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
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


def sqnr(outputs, labels, reference) -> float:
    """Mean over samples of :func:`sqnr_db` (``SQNR_LIMIT_DB`` is perfect; label-free)."""
    return float(np.mean(sqnr_db(reference, outputs)))


def iou(outputs, labels, reference, threshold: float = 0.5) -> float:
    """Mean over samples of :func:`map_iou` at ``threshold`` (1 is perfect; label-free)."""
    return float(np.mean(map_iou(reference, outputs, threshold)))


CHUNK_VALUES = 1 << 22  # values per chunk of rows: the float64 copies stay near 32 MB whatever the outputs' size


def _row_chunks(a, b, per_row: bool):
    """``a`` and ``b`` as [N, -1] in chunks of rows ``(rows, a64, b64)``, float64 and divided by their largest
    magnitude (each row's when ``per_row``): the dense metrics do not depend on scale, so tiny or huge outputs
    then neither underflow nor overflow when squared; chunks keep large maps' copies small."""
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ConfigError(f"outputs of shape {b.shape} cannot be compared with the float model's {a.shape}")
    size = max(1, CHUNK_VALUES // max(1, a.shape[1]))
    peaks = [np.maximum(np.abs(a[i:i + size]).max(axis=1, initial=0), np.abs(b[i:i + size]).max(axis=1, initial=0))
             for i in range(0, len(a), size)]
    peak = np.concatenate(peaks).astype(np.float64) if peaks else np.zeros(0)
    if not per_row and len(peak):
        peak = np.full_like(peak, peak.max())
    peak = np.where((peak > 0) & np.isfinite(peak), peak, 1.0)[:, None]
    for i in range(0, len(a), size):
        rows = slice(i, i + size)
        yield rows, a[rows].astype(np.float64) / peak[rows], b[rows].astype(np.float64) / peak[rows]


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per sample (first axis), the cosine similarity of ``a`` and ``b`` flattened: exactly 1 where they are
    equal (two zero outputs too), 0 where only one of them is zero.

    >>> cosine_similarity(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]])).round(6).tolist()
    [1.0, -1.0]
    >>> cosine_similarity(np.zeros((2, 3)), np.array([[0.0, 0, 0], [0, 1e-30, 0]])).tolist()
    [1.0, 0.0]
    """
    out = np.zeros(len(a))
    for rows, x, y in _row_chunks(a, b, per_row=True):
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            similarity = np.clip((x * y).sum(axis=1) / norms, -1.0, 1.0)
        out[rows] = np.where((x == y).all(axis=1), 1.0, np.where(norms > 0, similarity, 0.0))
    return out


SQNR_LIMIT_DB = 60.0
"""Per-sample SQNR is clipped to [-60, 60] dB: 60 dB is below the float model's own roundoff and above what 8-bit
outputs reach (about 50 dB for a full-scale signal), so the float model scores exactly 60 and an empty output
that stays empty scores 60 too."""


def sqnr_db(reference: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Per sample, ``10 log10(signal power / error power)`` in dB, clipped to +-``SQNR_LIMIT_DB``.

    The signal is the float model's output (``reference``), the error ``outputs - reference``. A sample's
    signal power counts as at least the mean over all samples, so a (nearly) empty map is judged by the
    error power against a typical sample's signal, not divided by its own zero; no error at all
    (two zero outputs included) is the limit.

    >>> ref = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    >>> sqnr_db(ref, ref + np.array([[0.1, 0.1], [0.0, 0.0], [0.01, 0.0]])).round(2).tolist()
    [20.0, 60.0, 38.24]
    """
    signal, error = np.zeros(len(reference)), np.zeros(len(reference))
    for rows, ref, out in _row_chunks(reference, outputs, per_row=False):
        signal[rows] = np.mean(ref * ref, axis=1)
        error[rows] = np.mean((out - ref) ** 2, axis=1)
    floor = float(np.mean(signal)) if len(signal) else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10 * np.log10(np.maximum(signal, floor) / error)
    db = np.where(error == 0, SQNR_LIMIT_DB, db)
    return np.clip(db, -SQNR_LIMIT_DB, SQNR_LIMIT_DB)


def map_iou(reference: np.ndarray, outputs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per sample, the intersection over union of ``outputs > threshold`` and ``reference > threshold`` over
    every element (every channel of a map); 1 where both are empty.

    >>> ref = np.array([[0.9, 0.8, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
    >>> map_iou(ref, np.array([[0.7, 0.2, 0.6, 0.0], [0.0, 0.1, 0.0, 0.0]])).tolist()
    [0.3333333333333333, 1.0]
    """
    ref = np.asarray(reference).reshape(len(reference), -1) > threshold
    out = np.asarray(outputs).reshape(len(outputs), -1) > threshold
    inter = (ref & out).sum(axis=1)
    union = (ref | out).sum(axis=1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


METRICS: dict[str, Callable] = {"top1": top1, "agreement": agreement, "kl": neg_kl, "cosine": cosine,
                                "sqnr": sqnr, "iou": iou}
CLASS_METRICS = ("top1", "agreement", "kl")  # compare class scores: meaningless on a map
DENSE_METRICS = ("sqnr", "iou", "cosine")  # what the per-sample view reports for outputs other than class scores
BEST = {"top1": 1.0, "agreement": 1.0, "kl": 0.0, "cosine": 1.0, "sqnr": SQNR_LIMIT_DB, "iou": 1.0}


def parse_metric(spec: str) -> tuple[str, float | None]:
    """(name, threshold) of a metric spec: ``"iou@0.3"`` is IoU at threshold 0.3; a plain name has none.

    >>> parse_metric("iou@0.3"), parse_metric("sqnr")
    (('iou', 0.3), ('sqnr', None))
    """
    name, _, value = str(spec).partition("@")
    if name not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)} (iou@T: threshold T) or a callable, "
                          f"got {spec!r}")
    if not value:
        return name, None
    if name != "iou":
        raise ConfigError(f"only iou takes a threshold (iou@0.3), got {spec!r}")
    try:
        threshold = float(value)
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        raise ConfigError(f"the threshold of {spec!r} must be a finite number, e.g. iou@0.3")
    return name, threshold


def metric_function(spec: str) -> Callable:
    """The function ``f(outputs, labels, reference) -> float`` of a metric spec (see :func:`parse_metric`)."""
    name, threshold = parse_metric(spec)
    fn = METRICS[name]
    return functools.partial(fn, threshold=threshold) if threshold is not None else fn


def output_kind(outputs: np.ndarray, images: bool) -> str:
    """What a model's output is, by its shape: ``scores`` (class scores: [N, C] or [N, C, 1, 1] from images),
    ``map`` ([N, C, H, W] and larger, H * W > 1) or ``vectors`` (embeddings, sequences, box lists, ...).

    >>> output_kind(np.zeros((2, 10)), True), output_kind(np.zeros((2, 1, 8, 8)), True)
    ('scores', 'map')
    >>> output_kind(np.zeros((2, 384)), False), output_kind(np.zeros((2, 84, 100)), True)
    ('vectors', 'vectors')
    """
    shape = np.shape(outputs)
    if len(shape) >= 4 and math.prod(shape[2:]) > 1:
        return "map"
    if images and math.prod(shape[2:]) == 1:
        return "scores"
    return "vectors"


def default_metric(kind: str, labeled: bool, threshold: float) -> tuple[str, str]:
    """(metric spec, why) for an output of ``kind`` (see :func:`output_kind`)."""
    if kind == "scores":
        return ("top1", "class scores with labels") if labeled else ("agreement", "class scores without labels")
    if kind == "map":
        return f"iou@{threshold:g}", f"a map: IoU of the map thresholded at {threshold:g} with the float model's"
    return "cosine", "not class scores: cosine similarity to the float model's output"


def map_threshold(reference: np.ndarray) -> float:
    """The default threshold of a map: 0.5 for probabilities (every value in [0, 1]), else 0 (logits)."""
    ref = np.asarray(reference)
    return 0.5 if ref.size and float(ref.min()) >= 0.0 and float(ref.max()) <= 1.0 else 0.0
