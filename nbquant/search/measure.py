"""The evaluator as the search sees it: one interface over a user's evaluator and the built-in one.

A user's evaluator keeps the reference tool's protocol (``evaluate(model_path)``,
``metric_eval(original, new)``); :class:`FileEvaluator` writes each model to a file for it.
:class:`BuiltinEvaluator` runs ModelProtos in memory on cached images, counts the images and
decides early. The search talks to either through the same methods and gets a
:class:`Measurement` back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..data.images import ImageDataset
from ..data.pixel_cache import CachedImages, pixels_of
from ..data.preprocess import Preprocess
from ..errors import NbquantError
from ..evaluation.evaluators import LogitEvaluator
from ..files import save_model


class EvaluatorError(NbquantError, RuntimeError):
    """The user's evaluator raised or returned an unusable metric."""


@dataclass(frozen=True)
class Measurement:
    """One evaluation: the metric (None when ``decided_early`` to miss the budget), the images the model
    ran on (None when the evaluator does not say) and ``upper``, the best metric it could have reached
    (the metric itself when the evaluation ran to the end)."""

    metric: object
    images: int | None
    upper: object
    decided_early: bool = False


class SearchEvaluator(Protocol):
    """What the search asks of an evaluator; :func:`search_evaluator` gives it for any evaluator."""

    evaluator: object  # the evaluator given (a user's, or the built-in LogitEvaluator)
    pool: object  # where the evaluator runs its shards (None: in this process)
    distance: str  # the output distance an output-sensitivity ranking uses for this evaluator's metric

    def prepare(self, float_model, pre: Preprocess | None, folder: Path, progress: bool, cache=None) -> None: ...

    @property
    def identity(self) -> tuple | None: ...  # what keys this evaluator's metrics in the cache (None: never cached)

    def run_order(self) -> tuple[list[str], str] | None: ...

    def with_decoded(self, data): ...  # ``data`` carrying the pixels the evaluator decoded already, where it can

    def evaluate(self, model, name: str, saved: Path | None = None) -> Measurement: ...

    def decide(self, model, name: str, original) -> Measurement: ...

    def metric_eval(self, original, new) -> tuple[bool, float]: ...


class FileEvaluator:
    """A user's evaluator behind the search's interface: each model is written to a file in the run's
    scratch folder and its path evaluated. No early decisions, no image counts, no pool."""

    pool = None

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.folder: Path | None = None

    @property
    def distance(self) -> str:
        """The output distance an output-sensitivity ranking uses for this evaluator's metric."""
        return "cosine" if getattr(self.evaluator, "metric", None) == "cosine" else "kl"

    identity = None  # a user's evaluator is opaque: its metrics are never taken from the cache

    def prepare(self, float_model, pre: Preprocess | None, folder: Path, progress: bool, cache=None) -> None:
        self.folder = folder

    def run_order(self) -> tuple[list[str], str] | None:
        """The evaluation images in the order they run, and the rule; None: this evaluator does not say."""
        return None

    def with_decoded(self, data):
        """``data`` as it is: a user's evaluator decodes its own images."""
        return data

    def evaluate(self, model, name: str, saved: Path | None = None) -> Measurement:
        """Evaluate ``model`` from ``<folder>/<name>.onnx`` (removed after), or from ``saved`` where it is
        already written."""
        path = saved if saved is not None else save_model(model, self.folder / f"{name}.onnx")
        metric = self.evaluator.evaluate(str(path))
        if saved is None:
            path.unlink(missing_ok=True)
        return Measurement(metric, None, metric)

    def decide(self, model, name: str, original) -> Measurement:
        """:meth:`evaluate`: a user's evaluator always runs to the end."""
        return self.evaluate(model, name)

    def metric_eval(self, original, new) -> tuple[bool, float]:
        return self.evaluator.metric_eval(original, new)


class BuiltinEvaluator:
    """:class:`~nbquant.evaluation.evaluators.LogitEvaluator` behind the search's interface: models are
    evaluated in memory; :meth:`decide` stops early where the metric allows it and ``early`` asks."""

    def __init__(self, evaluator: LogitEvaluator, early: bool = True):
        self.evaluator = evaluator
        self.early = early

    @property
    def pool(self):
        return self.evaluator.pool

    @property
    def distance(self) -> str:
        return self.evaluator.distance

    def prepare(self, float_model, pre: Preprocess | None, folder: Path, progress: bool, cache=None) -> None:
        """Decode the images into ``folder`` (or take them from ``cache``) and compute the float model's
        outputs, once."""
        self.evaluator.prepare(float_model, pre, folder / "evaluation_pixels.u8", progress, cache)

    @property
    def identity(self) -> tuple | None:
        return None if self.evaluator.identity is None else (self.evaluator.identity, self.early)

    def run_order(self) -> tuple[list[str], str]:
        files = self.evaluator.images_.files
        rule = ("the float model's misses first, then ascending float top-1 margin" if self.evaluator.decides_early
                else "file order")
        return [files[i] for i in self.evaluator.order_], rule

    def with_decoded(self, data):
        """``data`` with its pixels taken from the decoded evaluation images when they hold all of its images
        (the calibration and ranking images usually are evaluation images): no image is decoded twice."""
        images = self.evaluator.images_
        if not isinstance(images, CachedImages) or not isinstance(data, ImageDataset):
            return data
        pixels = pixels_of(images, self.evaluator.data.root, data)
        return data if pixels is None else data.with_pixels(images.pre, pixels)

    def evaluate(self, model, name: str, saved: Path | None = None) -> Measurement:
        metric = self.evaluator.evaluate(model)
        return Measurement(metric, len(self.evaluator.images_), metric)

    def decide(self, model, name: str, original) -> Measurement:
        """The exact metric, or (early decisions) None once the images seen prove a miss."""
        if not (self.early and self.evaluator.decides_early):
            return self.evaluate(model, name)
        metric, images, upper = self.evaluator.decide(model, original)
        return Measurement(metric, images, upper, decided_early=metric is None)

    def metric_eval(self, original, new) -> tuple[bool, float]:
        return self.evaluator.metric_eval(original, new)


def search_evaluator(evaluator, early: bool = True) -> SearchEvaluator:
    """``evaluator`` behind the search's interface (``early``: allow early decisions)."""
    if isinstance(evaluator, LogitEvaluator):
        return BuiltinEvaluator(evaluator, early)
    return FileEvaluator(evaluator)
