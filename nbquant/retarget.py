"""Re-run the fallback search for a new accuracy target, evaluating each configuration once.

One calibration, one evaluator and one ranking are kept; every evaluated float-layer set
is cached with its metric, so a target whose search path is already known is answered
without running the model (the widget's instant answers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from .calibration import Calibrator
from .errors import ConfigError, NotFittedError
from .evaluators import METRICS, Budget, LogitEvaluator
from .qdq import make_fake_quant_model
from .search import STRATEGIES

ANSWER_COLUMNS = ["target", "relative", "strategy", "ok", "n_int8", "n_float", "metric", "loss",
                  "new_evaluations", "seconds"]


@dataclass
class SearchAnswer:
    """What one search found: the float layers, their metric and loss, and its cost."""

    target: float
    relative: bool
    strategy: str
    ok: bool
    float_layers: list[str]
    metric: float | None
    loss: float | None
    n_layers: int
    new_evaluations: int
    seconds: float
    visited: list[frozenset] = field(default_factory=list, repr=False)

    @property
    def n_int8(self) -> int:
        return self.n_layers - len(self.float_layers) if self.ok else 0

    def summary(self) -> pd.DataFrame:
        """One-row DataFrame with the ANSWER_COLUMNS."""
        row = {c: getattr(self, c) for c in ANSWER_COLUMNS if c not in ("n_float", "n_int8")}
        row.update(n_int8=self.n_int8, n_float=len(self.float_layers) if self.ok else None)
        return pd.DataFrame([row], columns=ANSWER_COLUMNS)


class FallbackExplorer:
    """Cached fallback search over ``ranked`` layers (most sensitive first).

    ``evaluate_config(float_layers: frozenset) -> metric`` runs the model with those layers
    in float; ``original_metric`` is the float model's. ``cache_`` maps each evaluated float
    set to its metric; ``evaluations_`` counts the model runs.
    """

    def __init__(self, ranked: list[str], evaluate_config: Callable[[frozenset], float], original_metric: float):
        if not ranked:
            raise ConfigError("FallbackExplorer needs at least one ranked layer, got none")
        self.ranked = list(ranked)
        self.evaluate_config = evaluate_config
        self.original_metric = float(original_metric)
        self.cache_: dict[frozenset, float] = {}
        self.evaluations_ = 0

    def __repr__(self) -> str:
        return (f"FallbackExplorer(layers={len(self.ranked)}, original={self.original_metric:.4f}, "
                f"cached={len(self.cache_)}, evaluations={self.evaluations_})")

    def seed(self, history: pd.DataFrame) -> "FallbackExplorer":
        """Add the metrics of an auto-calibration history (same evaluator!) to the cache."""
        for row in history.itertuples(index=False):
            if row.kind != "original" and pd.notna(row.metric):
                self.cache_[frozenset(row.float_layers)] = float(row.metric)
        return self

    def metric(self, float_layers: frozenset) -> float:
        """The metric of one configuration: from the cache, else evaluated once and cached."""
        float_layers = frozenset(float_layers)
        if float_layers not in self.cache_:
            self.cache_[float_layers] = float(self.evaluate_config(float_layers))
            self.evaluations_ += 1
        return self.cache_[float_layers]

    def search(self, max_drop: float, relative: bool = False, strategy: str = "refine") -> SearchAnswer:
        """The float set ``strategy`` settles on for this target (all int8 when that passes)."""
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        budget = Budget(max_drop, relative)
        start, before, visited = time.perf_counter(), self.evaluations_, []

        def check(float_layers: frozenset) -> bool:
            visited.append(frozenset(float_layers))
            return budget.check(self.original_metric, self.metric(float_layers))[0]

        found = frozenset() if check(frozenset()) else STRATEGIES[strategy](self.ranked, check)
        metric = self.cache_[found] if found is not None else None
        loss = budget.check(self.original_metric, metric)[1] if found is not None else None
        return SearchAnswer(float(max_drop), bool(relative), strategy, found is not None,
                            [n for n in self.ranked if found is not None and n in found], metric, loss,
                            len(self.ranked), self.evaluations_ - before, time.perf_counter() - start, visited)

    def points(self) -> pd.DataFrame:
        """Every cached configuration: n_float, n_int8, metric, float_layers (for plots)."""
        rows = [{"n_float": len(s), "n_int8": len(self.ranked) - len(s), "metric": m,
                 "float_layers": sorted(s)} for s, m in self.cache_.items()]
        return pd.DataFrame(rows, columns=["n_float", "n_int8", "metric", "float_layers"])


def model_evaluator(model, quant: dict, evaluator) -> Callable[[frozenset], float]:
    """``evaluate_config`` for a prepared float model, all layers' LayerQuant and an evaluator."""
    def evaluate_config(float_layers: frozenset) -> float:
        kept = {name: lq for name, lq in quant.items() if name not in float_layers}
        return evaluator.evaluate(make_fake_quant_model(model, kept))
    return evaluate_config


def full_quant(calibration) -> dict:
    """Every layer's LayerQuant from a calibration, including layers it had in float."""
    calibrator = calibration.calibrator
    if not hasattr(calibrator, "observers_"):
        raise NotFittedError("the calibration's calibrator is not fitted")
    config = calibration.config.with_float([])
    refit = Calibrator(config).fit(calibration.prepared.model, calibrator.observers_, calibrator.means_)
    return refit.quant_


def explorer_from_auto_result(result, data, eval_num: int | None = None, metric: str = "top1",
                              preprocess=None, progress: bool = False) -> FallbackExplorer:
    """A FallbackExplorer that reuses an auto calibration's calibration, ranking and history.

    ``data``, ``eval_num``, ``metric`` and ``preprocess`` must be those of the run (its built-in
    evaluator), so the cached metrics of its history stay valid.
    """
    if result.calibration is None:
        raise ConfigError("the auto calibration found no passing configuration, so it kept no calibration; "
                          "rerun auto_calibrate with a looser max_drop first")
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    from .pipeline import resolve_preprocess
    calibration = result.calibration
    prepared = calibration.prepared
    eval_data = data.subset(min(eval_num, len(data))) if eval_num else data
    pre = resolve_preprocess(prepared.model, preprocess)
    evaluator = LogitEvaluator(eval_data, metric).prepare(prepared.model, pre, progress=progress)
    ranked = list(result.ranking["layer"])
    quant = {name: lq for name, lq in full_quant(calibration).items() if name in set(ranked)}
    explorer = FallbackExplorer(ranked, model_evaluator(prepared.model, quant, evaluator), result.original_metric)
    return explorer.seed(result.history)
