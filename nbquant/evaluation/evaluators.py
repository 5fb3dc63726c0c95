"""Evaluators: what "accuracy" means for the auto calibration, and when a loss is acceptable.

The protocol is the reference tool's: ``evaluate(model) -> metric`` (model: an ONNX file
path or ModelProto) and ``metric_eval(original, new) -> (ok, loss)``; ``calibration(model)``
is accepted for compatibility but nbquant calibrates on images it is given. The built-in
:class:`LogitEvaluator` computes a metric of the model's outputs on cached images.
"""

from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ..cache import Cache, CacheKey, make_key
from ..data.binding import fingerprint
from ..data.images import ImageDataset
from ..data.pixel_cache import CachedImages, cache_images
from ..data.preprocess import Preprocess
from ..data.tensors import TensorDataset
from ..errors import ConfigError
from ..timing import timed
from .early_decision import HIT_METRICS, decision_order, hits, upper_bound
from .executors import as_pool
from .metrics import (
    CLASS_METRICS,
    Budget,
    cosine_similarity,
    default_metric,
    map_iou,
    map_threshold,
    metric_function,
    output_kind,
    parse_metric,
    sqnr_db,
)
from .shards import ImageFiles, batch_plan, collect, reference_outputs, run_plan

log = logging.getLogger(__name__)

THRESHOLD_METADATA = "nbquant.map_threshold"  # a map model's own threshold (e.g. a text detector's binarization)


def decoded_images(data: ImageDataset, pre: Preprocess, path: Path | None, progress: bool,
                   cache: Cache | None, data_key: CacheKey | None = None) -> CachedImages:
    """``data`` decoded once into uint8 pixels: from ``cache`` when these files were decoded before with this
    preprocessing, else into the file ``path`` (or memory) and, when it fits, into the cache. ``data_key``:
    the data's fingerprint key, when the caller has it already."""
    fits = cache is not None and cache.enabled and len(data) * pre.image_bytes < cache.max_bytes // 4
    if not fits:
        with timed("decoding images"):
            return cache_images(data, pre, path, progress=progress, desc="decode evaluation images")
    key = make_key("pixels", data_key or make_key("data", fingerprint(data)), pre)
    index = cache.get(make_key("pixels-index", key))
    pixels = cache.get(key, mmap=True) if index is not None else None
    if pixels is not None and len(pixels) == len(index["files"]):
        return CachedImages(pre, np.asarray(index["labels"], np.int64), index["files"], pixels=pixels)
    with timed("decoding images"):
        images = cache_images(data, pre, None, progress=progress, desc="decode evaluation images")
    if cache.put(key, images.pixels):
        cache.put(make_key("pixels-index", key), {"files": images.files, "labels": images.labels.tolist()})
    return images


class Evaluator(Protocol):
    def evaluate(self, model) -> object: ...

    def metric_eval(self, original, new) -> tuple[bool, float]: ...


class LogitEvaluator:
    """A metric of the model's outputs on a fixed set of images, with a loss budget.

    ``metric`` (see :mod:`.metrics`): ``"top1"`` (needs labels), ``"agreement"`` or ``"kl"`` for class
    scores; ``"cosine"``, ``"sqnr"`` or ``"iou"`` (``"iou@0.3"``: at threshold 0.3) for other outputs (all
    label-free fidelity to the float model); a callable ``f(logits, labels, reference_logits) -> float``;
    or None: chosen by :meth:`prepare` from the float model's output (:func:`~.metrics.output_kind`:
    top1 / agreement for class scores, iou for maps, cosine for the rest) and logged, with ``metric_why_``.
    An iou without threshold takes the model's metadata ``nbquant.map_threshold``, else 0.5 for
    probabilities, 0 for logits. ``data`` is an ImageDataset or a TensorDataset (arrays for models that do
    not take images).
    Images are decoded once; the float model's outputs are computed once. ``executor`` (a
    ``concurrent.futures.Executor`` or ``dask.distributed`` Client) runs the images in shards on
    its workers, with the same results (arrays travel with each shard; images are decoded there).
    """

    def __init__(self, data: ImageDataset | TensorDataset, metric=None, max_drop: float = 0.005,
                 relative: bool = False, batch_size: int = 16, executor=None):
        self.data = data
        self.requested = metric  # as given; ``metric`` is resolved by prepare
        self.metric = metric
        self.metric_why_ = "given" if metric is not None else None
        self.kind_: str | None = None  # the output's kind (scores, map, vectors), set by prepare
        self.budget = Budget(max_drop, relative)
        self.batch_size = batch_size
        self.pool = as_pool(executor)
        self.images_: ImageDataset | TensorDataset | ImageFiles | None = None  # set by prepare
        self.reference_: np.ndarray | None = None
        self.order_: np.ndarray | None = None
        self.data_key_: CacheKey | None = None  # the data's fingerprint, set by prepare when a cache is used
        self._float_model = None
        if isinstance(metric, str) and parse_metric(metric)[0] == "top1" and not data.labeled:
            raise ConfigError(f"metric top1 needs labels, but the samples in {data.root} are unlabeled; "
                              "use metric 'agreement', 'kl' or 'cosine' (fidelity to the float model)")
        elif metric is not None and not isinstance(metric, str) and not callable(metric):
            raise ConfigError(f"metric must be a metric name, a callable or None, got {metric!r}")

    def __repr__(self) -> str:
        metric = self.requested
        name = "auto" if metric is None else metric if isinstance(metric, str) else getattr(metric, "__name__",
                                                                                             "custom")
        kind = "relative" if self.budget.relative else "absolute"
        return f"LogitEvaluator(metric={name!r}, max_drop={self.budget.max_drop} {kind}, images={len(self.data)})"

    def prepare(self, float_model, pre: Preprocess | None, cache_file: Path | None = None, progress: bool = True,
                cache: Cache | None = None):
        """Decode the images once, compute the float model's outputs once and fix the order images
        are run in (see :attr:`order_`). With an executor the workers decode their own shards;
        arrays need no decoding (``pre`` None) and travel with each shard."""
        cached = cache is not None and cache.enabled
        self.data_key_ = make_key("data", fingerprint(self.data)) if cached else None  # stats every file once
        if isinstance(self.data, TensorDataset):
            self.images_ = self.data
        elif self.pool is None:
            self.images_ = decoded_images(self.data, pre, cache_file, progress, cache, self.data_key_)
        else:
            self.images_ = ImageFiles.of(self.data, pre)
        key = None
        if cached and self.pool is None:
            key = make_key("float-outputs", float_model, self.data_key_, pre, self.batch_size)
            self.reference_ = cache.get(key)
        if self.reference_ is None:
            with timed("float reference pass"):
                self.images_, self.reference_ = reference_outputs(float_model, self.images_, self.batch_size,
                                                                  self.pool, progress)
            if key is not None:
                cache.put(key, self.reference_)
        self.kind_ = output_kind(self.reference_, images=not isinstance(self.data, TensorDataset))
        self.metric, self.metric_why_ = self._resolve_metric(float_model)
        #: the order images run in: likely misses first for early decisions (see early_decision)
        self.order_ = (decision_order(self.metric, self.reference_, self.images_.labels) if self.decides_early
                       else np.arange(len(self.images_)))
        self._float_model = float_model
        return self

    def _resolve_metric(self, float_model) -> tuple[object, str]:
        """(metric, why): the requested one, or the default for the output's kind (logged either way); a
        class-score metric on a map is warned about."""
        requested, shape = self.requested, f"[N, {', '.join(map(str, self.reference_.shape[1:]))}]"
        if callable(requested):
            return requested, "given"
        name, threshold = parse_metric(requested) if requested is not None else (None, None)
        if name in CLASS_METRICS and self.kind_ == "map":
            log.warning("metric %s compares class scores, but the model's output %s is a map: iou, sqnr or cosine "
                        "compare maps (leave the metric unset for iou)", name, shape)
        if threshold is None and self.kind_ == "map":
            threshold = _model_threshold(float_model)
            threshold = map_threshold(self.reference_) if threshold is None else threshold
        if name is None:
            metric, why = default_metric(self.kind_, self.data.labeled, threshold)
        elif name == "iou" and threshold is not None:
            metric, why = f"iou@{threshold:g}", "given"
        else:
            metric, why = requested, "given"
        log.info("metric %s (%s; the output is %s)", metric, why, shape)
        return metric, why

    @property
    def distance(self) -> str:
        """The output distance a ranking by output sensitivity uses with this metric: softmax KL for class
        scores, cosine similarity for other outputs."""
        if isinstance(self.metric, str):
            return "kl" if parse_metric(self.metric)[0] in CLASS_METRICS else "cosine"
        return "cosine" if self.kind_ not in (None, "scores") else "kl"

    @property
    def identity(self) -> tuple | None:
        """What makes this evaluator's metric of a model reproducible (for the cache): the data, metric, batch
        size and run order; None for a callable metric, which nbquant cannot fingerprint."""
        if not isinstance(self.metric, str) or self.images_ is None:
            return None
        data_key = self.data_key_ or make_key("data", fingerprint(self.data))
        return (data_key, self.metric, self.batch_size, self.order_)

    def logits(self, model, simulate: bool | None = None) -> np.ndarray:
        """The model's first output for every image, in file order (run in :attr:`order_`)."""
        self._check_prepared()
        plan = batch_plan(self.order_, self.batch_size)
        return collect(run_plan(model, self.images_, plan, self.pool, simulate), len(self.images_))[0]

    def calibration(self, model) -> None:
        """Reference-tool compatibility; nbquant calibrates on the images it is given."""

    def evaluate(self, model) -> float:
        self._check_prepared()
        fn = metric_function(self.metric) if isinstance(self.metric, str) else self.metric
        logits = self.reference_ if model is self._float_model else self.logits(model)
        return float(fn(logits, self.images_.labels, self.reference_))

    @property
    def decides_early(self) -> bool:
        """Whether :meth:`decide` can stop early (hit metrics: top1, agreement)."""
        return isinstance(self.metric, str) and self.metric in HIT_METRICS

    def decide(self, model, original: float) -> tuple[float | None, int, float]:
        """(metric, images used, upper bound): the exact metric (and bound), or None once the images
        seen prove that the configuration misses the budget whatever the others give; the bound is
        then the best metric it could still have reached (see :mod:`nbquant.early_decision`)."""
        self._check_prepared()
        if not self.decides_early:
            metric = self.evaluate(model)
            return metric, len(self.images_), metric
        total, seen, hit_count = len(self.order_), 0, 0
        plan = batch_plan(self.order_, self.batch_size)
        with closing(run_plan(model, self.images_, plan, self.pool)) as batches:  # closing cancels the rest
            for picked, logits in batches:
                hit_count += int(hits(self.metric, logits, self.images_.labels[picked],
                                      self.reference_[picked]).sum())
                seen += len(picked)
                bound = upper_bound(hit_count, seen, total)
                if not self.budget.check(original, bound)[0]:
                    return None, seen, bound
        return hit_count / total, total, hit_count / total

    def metric_eval(self, original, new) -> tuple[bool, float]:
        return self.budget.check(original, new)

    def samples(self, model) -> pd.DataFrame:
        """The per-sample view of ``model`` against the float model, one row per sample (file order): for class
        scores the top-1 of both (and the label); for other outputs each dense metric (sqnr_db, cosine and,
        for maps, iou at the metric's threshold, with the share of the float map above it)."""
        self._check_prepared()
        outputs = self.reference_ if model is self._float_model else self.logits(model)
        ref, frame = self.reference_, pd.DataFrame({"file": [str(f) for f in self.images_.files]})
        if self.kind_ == "scores":
            flat = outputs.reshape(len(outputs), -1)
            frame["float_top1"] = ref.reshape(len(ref), -1).argmax(axis=1)
            frame["top1"] = flat.argmax(axis=1)
            frame["agrees"] = frame["top1"] == frame["float_top1"]
            if self.data.labeled:
                frame["label"] = self.images_.labels
            return frame
        frame["sqnr_db"] = sqnr_db(ref, outputs)
        frame["cosine"] = cosine_similarity(ref, outputs)
        if self.kind_ == "map":
            threshold = self.threshold
            frame["iou"] = map_iou(ref, outputs, threshold)
            frame["float_above"] = (ref.reshape(len(ref), -1) > threshold).mean(axis=1)
        return frame

    @property
    def threshold(self) -> float:
        """The map threshold of the metric (iou@T), else of the model's metadata or the outputs' range."""
        if isinstance(self.metric, str) and parse_metric(self.metric)[1] is not None:
            return parse_metric(self.metric)[1]
        given = _model_threshold(self._float_model)
        return map_threshold(self.reference_) if given is None else given

    def _check_prepared(self) -> None:
        if self.images_ is None:
            raise ConfigError("LogitEvaluator.prepare(float_model, preprocess) must run before evaluate")


def _model_threshold(model) -> float | None:
    """The map threshold a model records in its metadata (``nbquant.map_threshold``), if any."""
    props = getattr(model, "metadata_props", None)
    if props is None and isinstance(model, (str, Path)):
        import onnx
        props = onnx.load(str(model), load_external_data=False).metadata_props
    for prop in props or ():
        if prop.key == THRESHOLD_METADATA:
            try:
                return float(prop.value)
            except ValueError:
                raise ConfigError(f"model metadata {THRESHOLD_METADATA} must be a number, got {prop.value!r}") \
                    from None
    return None
