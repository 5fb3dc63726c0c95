"""Accuracy of an ONNX classifier on an ImageDataset; onnxruntime is used only here.

``evaluate`` gives top-1/top-5 plus one DataFrame row per image; ``predictions`` gives the
raw logits, for comparing a quantized model with its float original.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from tqdm.auto import tqdm

from ..data.images import Batch, ImageDataset
from ..data.preprocess import DEFAULT_PRESET, Preprocess, check_input_shape, fit_to_input, get_preset
from ..errors import ModelError
from ..options import check_int
from .session import ModelLike, make_session

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32  # images per inference batch


def _model_name(model: ModelLike) -> str:
    if isinstance(model, onnx.ModelProto):
        return model.graph.name or "<in-memory model>"
    if isinstance(model, ort.InferenceSession):
        return "<session>"
    return str(model)


def _run(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """First output for ``images``; a model with a fixed batch size b runs in padded chunks of b."""
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
    if fixed is None or fixed == len(images):
        return session.run(None, {inp.name: images})[0]
    outs = []
    for start in range(0, len(images), fixed):
        chunk = images[start:start + fixed]
        pad = np.zeros((fixed - len(chunk),) + chunk.shape[1:], dtype=chunk.dtype)
        outs.append(session.run(None, {inp.name: np.concatenate([chunk, pad])})[0][:len(chunk)])
    return np.concatenate(outs)


def run_batches(session: ort.InferenceSession, dataset: ImageDataset, pre: Preprocess,
                batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
                desc: str = "evaluating") -> Iterator[tuple[np.ndarray, Batch]]:
    """Yield (logits [B, classes], batch) for each batch of ``dataset``, with a progress bar."""
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress) as bar:
        for batch in dataset.iter_batches(pre, batch_size):
            logits = _run(session, batch.images)
            bar.update(len(batch.files))
            yield logits, batch


def _prepare(model: ModelLike, pre: Preprocess | None) -> tuple[ort.InferenceSession, Preprocess]:
    """Session plus preprocessing (default: the default preset fitted to the model's input shape),
    checked against the model's input."""
    session = model if isinstance(model, ort.InferenceSession) else make_session(model)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(
            f"model {_model_name(model)} has {len(inputs)} inputs; nbquant evaluates "
            "single-input image classifiers")
    if pre is None:
        pre = fit_to_input(get_preset(DEFAULT_PRESET), inputs[0].shape)[0]
    check_input_shape(pre, inputs[0].shape, _model_name(model))
    return session, pre


def _limited(dataset: ImageDataset, limit: int | None) -> ImageDataset:
    """The first ``limit`` images of ``dataset`` (all of them when limit is None or larger)."""
    if limit is None:
        return dataset
    limit = check_int("limit", limit)
    return dataset if limit >= len(dataset) else dataset.subset(limit)


def predictions(model: ModelLike, dataset: ImageDataset, pre: Preprocess | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None,
                progress: bool = True) -> np.ndarray:
    """Raw model outputs [N, classes] in file order (skipped files left out); images not kept."""
    session, pre = _prepare(model, pre)
    parts = [logits for logits, _ in run_batches(
        session, _limited(dataset, limit), pre, batch_size, progress, desc="predicting")]
    return np.concatenate(parts)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row, whether ``labels`` is among the ``k`` largest logits (ties: lower index first).

    Example: logits [[0.1, 0.7, 0.2]], labels [2] gives [False] for k=1, [True] for k=2.
    Label -1 (unlabeled) or a NaN label logit gives False.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"need logits [N, C] and labels [N], got {logits.shape} and {labels.shape}")
    k = check_int("k", k)
    valid = (labels >= 0) & (labels < logits.shape[1])
    safe = np.where(valid, labels, 0)
    target = logits[np.arange(len(labels)), safe][:, None]
    ties_before = (logits == target) & (np.arange(logits.shape[1]) < safe[:, None])
    rank = (logits > target).sum(axis=1) + ties_before.sum(axis=1)
    return valid & ~np.isnan(target[:, 0]) & (rank < k)


@dataclass
class EvalResult:
    """Accuracy of one evaluation run; ``samples`` has one row per decoded image.

    ``samples`` columns: file (path relative to the dataset root), label (-1 if unlabeled),
    prediction (argmax class), correct, top5_correct (False when unlabeled).
    """

    top1: float
    top5: float
    n: int
    seconds: float
    samples: pd.DataFrame = field(repr=False)

    def __repr__(self) -> str:
        return (f"EvalResult(top1={self.top1:.4f}, top5={self.top5:.4f}, n={self.n}, "
                f"seconds={self.seconds:.1f})")


def _accuracy(flags: np.ndarray, labeled: bool) -> float:
    return float(flags.mean()) if labeled and len(flags) else float("nan")


def evaluate(model: ModelLike, dataset: ImageDataset, pre: Preprocess | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None, progress: bool = True) -> EvalResult:
    """Top-1/top-5 accuracy of ``model`` on (the first ``limit`` images of) ``dataset``.

    ``seconds`` is the wall time including session creation and image decoding.
    """
    start = time.perf_counter()
    session, pre = _prepare(model, pre)
    data = _limited(dataset, limit)
    preds, top5, labels, files = [], [], [], []
    for logits, batch in run_batches(session, data, pre, batch_size, progress):
        preds.append(logits.argmax(axis=1))
        top5.append(topk_correct(logits, batch.labels, min(5, logits.shape[1])))
        labels.append(batch.labels)
        files += [p.relative_to(data.root).as_posix() for p in batch.files]
    label, pred, in_top5 = (np.concatenate(x) for x in (labels, preds, top5))
    samples = pd.DataFrame({"file": files, "label": label, "prediction": pred.astype(np.int64),
                            "correct": (pred == label) & (label >= 0), "top5_correct": in_top5})
    correct = samples["correct"].to_numpy()
    return EvalResult(top1=_accuracy(correct, data.labeled), top5=_accuracy(in_top5, data.labeled),
                      n=len(samples), seconds=time.perf_counter() - start, samples=samples)
