"""How an auto calibration ends: the final models and files written (target met) or removed (not
met), and the :class:`AutoCalibrationResult` that reports it."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from ..calibration.calibrator import Calibrator
from ..calibration.config import config_to_dict
from ..calibration.run import CalibrationResult, quantize_models, write_run
from ..evaluation.latency_model import LayerCosts
from ..files import RunPaths, atomic_write_json
from ..quantize.cpu_probe import probe_int8
from ..quantize.deploy_target import inexact_kinds_here, target_metadata
from ..quantize.layer_states import make_state_model
from ..timing import timed
from .context import RunContext
from .objective import pareto_table
from .precision import layer_costs, measured_latency
from .record import Step, jsonable_metric, load_record

log = logging.getLogger(__name__)


@dataclass
class AutoCalibrationResult:
    """Outcome of one auto calibration; DataFrames for the history, ranking and final config."""

    ok: bool
    message: str
    original_metric: object
    final_metric: object
    float_layers: list[str]
    history: pd.DataFrame = field(repr=False)
    ranking: pd.DataFrame = field(repr=False)  # no rows when all int8 met the budget (unless always_rank)
    final_config: pd.DataFrame | None = field(repr=False)
    paths: RunPaths = field(repr=False)
    seconds: float = 0.0
    calibration: CalibrationResult | None = field(default=None, repr=False)
    deploy_metric: object = None  # the deploy model's metric (onnxruntime integer kernels)
    calibrator: Calibrator | None = field(default=None, repr=False)  # every layer, as searched
    evaluator: object = field(default=None, repr=False)  # prepared: images decoded, float outputs cached
    stage_times: pd.DataFrame | None = field(default=None, repr=False)  # seconds per stage (nbquant.timing)
    states: dict[str, str] = field(default_factory=dict)  # layers in a state other than int8 and float
    latency: dict = field(default_factory=dict)  # final deploy model: measured_ms (predicted_ms, float_predicted_ms
    # where the search profiled the layer costs)
    _pareto: pd.DataFrame | None = field(default=None, repr=False)
    _costs: LayerCosts | None = field(default=None, repr=False)
    _profile: Callable[[], tuple[LayerCosts | None, pd.DataFrame]] | None = field(default=None, repr=False,
                                                                                   compare=False)

    @property
    def costs(self) -> LayerCosts | None:
        """The per-layer cost table on this CPU that the objective compares configurations by; profiled on
        first use where the search needed none (one configuration was left to choose)."""
        if self._profile is not None:
            profile, self._profile = self._profile, None
            self._costs, self._pareto = profile()
        return self._costs

    @property
    def pareto(self) -> pd.DataFrame | None:
        """Every evaluated configuration with its metric, predicted latency and size (``pareto`` and
        ``chosen`` columns); None when no configuration met the target."""
        self.costs  # noqa: B018 (profiles where the search did not)
        return self._pareto

    @property
    def n_layers(self) -> int:
        """Quantizable layers of the model (the final config's rows; the ranking's when no config was met)."""
        return len(self.final_config) if self.final_config is not None else len(self.ranking)

    @property
    def evaluations(self) -> int:
        return len(self.history)

    @property
    def images_evaluated(self) -> int:
        """Images run through a model over the whole search (the float model included); an early
        decision counts the images it used."""
        return int(self.history["images"].fillna(0).sum())

    @property
    def deploy_evaluations(self) -> int:
        """Deploy models the search evaluated (every step, where it judged deploy models)."""
        return int((self.history["judged"] == "deploy").sum())

    def __repr__(self) -> str:
        n = self.n_layers
        others = "".join(f", {state}={count}" for state, count in
                         sorted(pd.Series(list(self.states.values()), dtype=object).value_counts().items()))
        n_int8 = n - len(self.float_layers) - len(self.states)
        return (f"AutoCalibrationResult(ok={self.ok}, int8={n_int8}/{n}{others}, "
                f"original={self.original_metric!r}, final={self.final_metric!r}, "
                f"evaluations={self.evaluations}, seconds={self.seconds:.1f})")


def finish(run: RunContext, calibrator: Calibrator, step: Step, ranking: pd.DataFrame,
           costs: LayerCosts | None = None) -> AutoCalibrationResult:
    """Write the final models, config and files for the passing ``step`` (plus the layers the config
    keeps in float, and its layers in other states); evaluate the deploy model when the search judged the
    simulation; measure the final model's latency (and with ``costs`` predict it)."""
    prepared, paths, original = run.prepared, run.paths, run.record.original_metric
    kept_float = {name for name, layer in calibrator.config.layers.items() if not layer.enabled}
    final = sorted(set(step.float_layers) | kept_float)
    states = dict(step.states or {})
    if states:
        final_config = calibrator.config.with_states({**dict.fromkeys(final, "float"), **states})
        final_cal = calibrator.with_config(final_config)
        target, params = final_config.deploy_target, final_cal.tensor_qparams_
        with timed("building the quantized models"):
            fake = make_state_model(prepared.model, final_cal.quant_, states, params, target, deploy=False)
            deploy = make_state_model(prepared.model, final_cal.quant_, states, params, target, deploy=True)
    else:
        final_config = calibrator.config.with_float(final)
        final_cal = calibrator.with_config(final_config)
        fake, deploy = quantize_models(prepared, final_cal)
    calibration = CalibrationResult(prepared, final_config, final_cal, fake, deploy, 0.0, paths)
    write_run(calibration, paths)
    atomic_write_json(paths.final_config, config_to_dict(final_config))
    deploy_metric = step.deploy_metric
    if deploy_metric is None and not inexact_kinds_here(target_metadata(final_cal.quant_, final_config.deploy_target)):
        with timed("checking the deploy model"):
            deploy_metric = _check_deploy(run, deploy)
    latency = measured_latency(run, deploy, costs, step)
    pareto = pareto_table(run.record.steps, costs, len(final_config.layers), step.step)
    later = None  # the search chose without the cost table: profiled when asked for (layer_costs: None for count)
    if costs is None and final:
        later = functools.partial(_profiled, run, calibrator, list(run.record.steps), len(final_config.layers),
                                  step.step)
    seconds = time.perf_counter() - run.start
    n, n_int8 = len(final_config.layers), len(final_config.enabled) - len(states)
    log.info("Accuracy of saved model is %s (%d of %d layers in int8, %d evaluations)", step.metric,
             n_int8, n, len(run.record.steps))
    log.info("The generated model is stored in dir: %s", paths.results)
    log.info("Cost time %.1f s", seconds)
    log.info("%s", run.times.text(probe_int8().cpu))
    message = (f"target met: {n_int8} of {n} layers in int8, metric {step.metric} "
               f"(original {original}, loss {step.loss:.5f}; deploy model {deploy_metric})")
    if states:
        counts = pd.Series(list(states.values())).value_counts().sort_index()
        message += ", " + ", ".join(f"{count} in {state}" for state, count in counts.items())
    table = pd.DataFrame({"layer": list(final_config.layers),
                          "op": [layer.op for layer in prepared.layers],
                          "quant_enable": [c.enabled for c in final_config.layers.values()],
                          "state": [states.get(name, "float" if name in final else "int8")
                                    for name in final_config.layers]})
    return AutoCalibrationResult(True, message, original, step.metric, final, load_record(paths.record), ranking,
                                 table, paths, seconds, calibration=calibration, deploy_metric=deploy_metric,
                                 calibrator=calibrator, evaluator=run.evaluator.evaluator,
                                 stage_times=run.times.frame, states=states, latency=latency, _pareto=pareto,
                                 _costs=costs, _profile=later)


def _profiled(run: RunContext, calibrator: Calibrator, steps: list[Step], n_layers: int,
              chosen: int) -> tuple[LayerCosts | None, pd.DataFrame]:
    """The cost table and the Pareto table it prices (for a result whose search did not profile)."""
    costs = layer_costs(run, calibrator)
    return costs, pareto_table(steps, costs, n_layers, chosen)


def _check_deploy(run: RunContext, deploy):
    """Evaluate the written deploy model once (search without ``check_deploy``): its integer
    kernels round differently from the simulation the search used, so say so when it misses."""
    metric = run.evaluator.evaluate(deploy, "deploy_model", saved=run.paths.deploy_model).metric
    ok, loss = run.evaluator.metric_eval(run.record.original_metric, metric)
    log.info("Accuracy of deploy model is %s (loss %.5f)", metric, loss)
    if not ok:
        log.warning("the deploy model (onnxruntime integer kernels) misses the target by rounding: metric %s, "
                    "loss %.5f; the fake-quant model meets it. A tighter --max-drop leaves a margin.", metric, loss)
    return jsonable_metric(metric)


def fail(run: RunContext, calibrator: Calibrator, ranking: pd.DataFrame) -> AutoCalibrationResult:
    """Remove the final files of an earlier run in this folder and say why no model was generated."""
    paths, settings = run.paths, run.settings
    for stale in (paths.fake_quant_model, paths.deploy_model, paths.final_config, paths.quant_json):
        stale.unlink(missing_ok=True)
    spent = len(run.record.steps) >= settings.max_evals
    n = len(calibrator.config.layers)
    message = (f"No quantized model is generated: no configuration met the target within max_evals="
               f"{settings.max_evals} evaluations; raise --max-evals or relax --max-drop and run again."
               if spent else
               f"No quantized model is generated: even with {n - 1} of {n} layers in float the target is not met; "
               "the accuracy target may be too difficult to achieve. Relax the target (--max-drop) and run again.")
    log.warning(message)
    log.info("%s", run.times.text(probe_int8().cpu))
    return AutoCalibrationResult(False, message, run.record.original_metric, None, list(calibrator.config.layers),
                                 load_record(paths.record), ranking, None, paths, time.perf_counter() - run.start,
                                 calibrator=calibrator, evaluator=run.evaluator.evaluator,
                                 stage_times=run.times.frame)
