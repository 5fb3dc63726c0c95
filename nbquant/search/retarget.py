"""Re-run the fallback search for a new accuracy target, evaluating each configuration once.

One calibration, one evaluator and one ranking are kept; every evaluated float-layer set
is cached with its metric, so a target whose search path is already known is answered
without running the model (the widget's instant answers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from ..calibration.calibrator import Calibrator
from ..errors import ConfigError, NotFittedError
from ..evaluation.evaluators import LogitEvaluator
from ..evaluation.latency_model import LayerCosts, predict_latency
from ..evaluation.metrics import METRICS, Budget
from .auto_settings import AutoSettings
from .steps import config_model
from .strategies import STRATEGIES

ANSWER_COLUMNS = ["target", "relative", "strategy", "ok", "n_int8", "n_float", "metric", "loss",
                  "deploy_metric", "predicted_ms", "new_evaluations", "seconds"]


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
    deploy_metric: float | None = None
    predicted_ms: float | None = None  # the deploy model's latency at the cost table's batch, on its CPU

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
    in float; ``original_metric`` is the float model's. With ``evaluate_deploy`` (the same
    for the deploy model) a configuration passes only when both meet the target, as in
    ``auto_calibrate``. ``cache_`` / ``deploy_cache_`` map each evaluated float set to its
    metric; ``evaluations_`` counts the model runs. With ``costs`` (an auto calibration's cost table) each
    answer carries its deploy model's predicted latency; layers the table has and ``ranked`` lacks count as
    float (the config kept them there).
    """

    def __init__(self, ranked: list[str], evaluate_config: Callable[[frozenset], float], original_metric: float,
                 evaluate_deploy: Callable[[frozenset], float] | None = None, costs: LayerCosts | None = None):
        if not ranked:
            raise ConfigError("FallbackExplorer needs at least one ranked layer, got none")
        self.ranked = list(ranked)
        self.evaluate_config = evaluate_config
        self.evaluate_deploy = evaluate_deploy
        self.original_metric = float(original_metric)
        self.cache_: dict[frozenset, float] = {}
        self.deploy_cache_: dict[frozenset, float] = {}
        self.upper_: dict[frozenset, float] = {}  # configurations decided early: their metric is at most this
        self.evaluations_ = 0
        self.costs = costs

    def __repr__(self) -> str:
        return (f"FallbackExplorer(layers={len(self.ranked)}, original={self.original_metric:.4f}, "
                f"cached={len(self.cache_)}, evaluations={self.evaluations_})")

    def seed(self, history: pd.DataFrame) -> FallbackExplorer:
        """Add the metrics of an auto-calibration history (same evaluator!) to the cache."""
        for row in history.itertuples(index=False):
            if row.kind != "original" and pd.notna(row.metric):
                self.cache_[frozenset(row.float_layers)] = float(row.metric)
            if row.kind != "original" and pd.notna(getattr(row, "deploy_metric", None)):
                self.deploy_cache_[frozenset(row.float_layers)] = float(row.deploy_metric)
            if pd.isna(row.metric) and pd.notna(getattr(row, "metric_upper", None)):
                self.upper_[frozenset(row.float_layers)] = float(row.metric_upper)
        return self

    def metric(self, float_layers: frozenset) -> float:
        """The metric of one configuration: from the cache, else evaluated once and cached."""
        return self._cached(self.cache_, self.evaluate_config, float_layers)

    def deploy_metric(self, float_layers: frozenset) -> float:
        """The deploy model's metric of one configuration, cached like :meth:`metric`."""
        return self._cached(self.deploy_cache_, self.evaluate_deploy, float_layers)

    def _cached(self, cache: dict, evaluate: Callable[[frozenset], float], float_layers) -> float:
        float_layers = frozenset(float_layers)
        if float_layers not in cache:
            cache[float_layers] = float(evaluate(float_layers))
            self.evaluations_ += 1
        return cache[float_layers]

    def search(self, max_drop: float, relative: bool = False, strategy: str = AutoSettings.strategy) -> SearchAnswer:
        """The float set ``strategy`` settles on for this target (all int8 when that passes)."""
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        budget = Budget(max_drop, relative)
        start, before, visited = time.perf_counter(), self.evaluations_, []

        def check(float_layers: frozenset) -> bool:
            visited.append(frozenset(float_layers))
            upper = self.upper_.get(frozenset(float_layers))
            if frozenset(float_layers) not in self.cache_ and upper is not None \
                    and not budget.check(self.original_metric, upper)[0]:
                return False  # decided early in the run: even its best possible metric misses this target
            if not budget.check(self.original_metric, self.metric(float_layers))[0]:
                return False
            return (self.evaluate_deploy is None
                    or budget.check(self.original_metric, self.deploy_metric(float_layers))[0])

        found = frozenset() if check(frozenset()) else STRATEGIES[strategy](self.ranked, check)
        metric = self.cache_[found] if found is not None else None
        loss = budget.check(self.original_metric, metric)[1] if found is not None else None
        deploy = self.deploy_cache_.get(found) if found is not None else None
        return SearchAnswer(float(max_drop), bool(relative), strategy, found is not None,
                            [n for n in self.ranked if found is not None and n in found], metric, loss,
                            len(self.ranked), self.evaluations_ - before, time.perf_counter() - start, visited,
                            deploy, self.predicted_ms(found) if found is not None else None)

    def predicted_ms(self, float_layers) -> float | None:
        """The predicted latency of the deploy model with ``float_layers`` in float (None without costs)."""
        if self.costs is None:
            return None
        kept = set(self.costs.layers.index) - set(self.ranked)
        return float(predict_latency(self.costs, set(float_layers) | kept))

    def points(self) -> pd.DataFrame:
        """Every cached configuration: n_float, n_int8, metric, deploy_metric, float_layers (for plots)."""
        rows = [{"n_float": len(s), "n_int8": len(self.ranked) - len(s), "metric": m,
                 "deploy_metric": self.deploy_cache_.get(s, float("nan")), "float_layers": sorted(s)}
                for s, m in self.cache_.items()]
        return pd.DataFrame(rows, columns=["n_float", "n_int8", "metric", "deploy_metric", "float_layers"])


def model_evaluator(model, quant: dict, evaluator, output_qparams: dict, deploy: bool = False,
                    target=None) -> Callable[[frozenset], float]:
    """``evaluate_config`` for a prepared float model, all layers' LayerQuant, their output params
    (a calibrator's ``tensor_qparams_``) and an evaluator; fake-quant models, or deploy models."""
    def evaluate_config(float_layers: frozenset) -> float:
        return evaluator.evaluate(config_model(model, quant, float_layers, output_qparams, target, deploy))
    return evaluate_config


def full_calibrator(calibration) -> Calibrator:
    """A calibration's calibrator refit with every layer enabled (same statistics)."""
    calibrator = calibration.calibrator
    if not hasattr(calibrator, "observers_"):
        raise NotFittedError("the calibration's calibrator is not fitted")
    return calibrator.with_config(calibration.config.with_float([]))


def full_quant(calibration) -> dict:
    """Every layer's LayerQuant from a calibration, including layers it had in float."""
    return full_calibrator(calibration).quant_


def explorer_from_auto_result(result, data, eval_num: int | None = None, metric: str = "top1",
                              preprocess=None, progress: bool = False) -> FallbackExplorer:
    """A FallbackExplorer that reuses an auto calibration's calibration, ranking and history.

    ``data``, ``eval_num``, ``metric`` and ``preprocess`` must be those of the run (its built-in
    evaluator), so the cached metrics of its history stay valid. It judges the models the run
    judged (see ``judged`` in its history): deploy models, or fake-quant models; its answers carry the
    latency the run's cost table predicts (none when the run needed no cost table: all int8 passed).
    """
    if result.calibration is None:
        raise ConfigError("the auto calibration found no passing configuration, so it kept no calibration; "
                          "rerun auto_calibrate with a looser max_drop first")
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    from ..data.binding import resolve_preprocess
    if result.ranking.empty:
        raise ConfigError("the auto calibration ranked no layer (every layer met the budget in int8): rerun it "
                          "with always_rank=True (--always-rank) or a tighter max_drop to explore other targets")
    calibration = result.calibration
    prepared = calibration.prepared
    eval_data = data.subset(min(eval_num, len(data))) if eval_num else data
    pre = resolve_preprocess(prepared.model, preprocess)
    evaluator = LogitEvaluator(eval_data, metric).prepare(prepared.model, pre, progress=progress)
    ranked = list(result.ranking["layer"])
    calibrator = full_calibrator(calibration)
    quant = {name: lq for name, lq in calibrator.quant_.items() if name in set(ranked)}
    outputs, target = calibrator.tensor_qparams_, calibrator.config.deploy_target
    judged_deploy = "fake_quant" not in set(result.history["judged"].dropna())
    evaluate = model_evaluator(prepared.model, quant, evaluator, outputs, judged_deploy, target)
    explorer = FallbackExplorer(ranked, evaluate, result.original_metric, costs=getattr(result, "costs", None))
    return explorer.seed(result.history)
