"""What one auto calibration run carries from step to step: its model, data, evaluator, settings,
files and record, in one place instead of a dozen parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..cache import Cache, CacheKey
from ..calibration.config import QuantConfig
from ..calibration.run import CalibrationSettings
from ..data.images import ImageDataset
from ..data.preprocess import Preprocess
from ..data.tensors import TensorDataset
from ..files import RunPaths
from ..graph.prepare import PreparedModel
from ..timing import StageTimes
from .auto_settings import AutoSettings
from .measure import SearchEvaluator
from .record import SearchRecord


@dataclass
class RunContext:
    """One run's inputs and where it writes; ``record`` and ``temp`` are set once the record is opened
    and the scratch folder made. ``start`` is the run's ``time.perf_counter()`` at its beginning."""

    prepared: PreparedModel
    eval_data: ImageDataset | TensorDataset
    calib_set: ImageDataset | TensorDataset
    pre: Preprocess | None
    evaluator: SearchEvaluator
    settings: AutoSettings
    calib_settings: CalibrationSettings
    config: QuantConfig
    paths: RunPaths
    progress: bool
    start: float
    times: StageTimes = field(default_factory=StageTimes, repr=False)  # seconds per stage
    cache: Cache = field(default_factory=lambda: Cache(enabled=False), repr=False)  # results kept across runs
    calibration_key: CacheKey | None = field(default=None, repr=False)  # names the fitted calibrator in the cache
    record: SearchRecord = field(init=False, repr=False)
    temp: Path = field(init=False, repr=False)
