"""Search steps: a float-layer set in; its model built, judged, recorded; each set evaluated once.

``judge`` is ``deploy`` (the model that ships, run with onnxruntime's integer kernels, which
compute it exactly on this CPU) or ``fake_quant`` (its float simulation: ``--no-check-deploy``,
or a full-range target on a CPU that cannot run it exactly).
"""

from __future__ import annotations

import logging
import math
import time

import onnx
from tqdm.auto import tqdm

from ..cache import make_key
from ..calibration.calibrator import Calibrator
from ..errors import NbquantError, stage
from ..quantize.deploy import make_deploy_model
from ..quantize.deploy_target import inexact_kinds_here, target_metadata
from ..quantize.fake_quant import make_fake_quant_model
from ..quantize.layer_states import make_state_model
from ..timing import timed
from .auto_settings import AutoSettings
from .context import RunContext
from .measure import EvaluatorError, Measurement
from .record import Step, jsonable_metric, save_record
from .strategies import STRATEGIES, BudgetExhausted

log = logging.getLogger(__name__)


def config_model(model: onnx.ModelProto, quant: dict, float_layers, output_qparams: dict, target,
                 deploy: bool, states: dict | None = None) -> onnx.ModelProto:
    """``model`` with every layer of ``quant`` (name -> LayerQuant) in int8 except ``float_layers`` (and
    the layers ``states`` puts in another state, see :mod:`nbquant.quantize.layer_states`): the deploy model
    (int8 weights, onnxruntime's integer kernels) or its fake-quant simulation."""
    if states:
        return make_state_model(model, quant, states, output_qparams, target, deploy, float_layers)
    kept = {name: lq for name, lq in quant.items() if name not in float_layers}
    build = make_deploy_model if deploy else make_fake_quant_model
    return build(model, kept, output_qparams, target)


def choose_judge(settings: AutoSettings, calibrator: Calibrator) -> str:
    """``deploy`` where this CPU runs the deploy model exactly, else ``fake_quant`` (with a warning)."""
    if not settings.check_deploy:
        return "fake_quant"
    inexact = inexact_kinds_here(target_metadata(calibrator.quant_, calibrator.config.deploy_target))
    if inexact:
        log.warning("deploy target %s: this CPU computes full-range int8 inexactly for %s layers, so the search "
                    "judges the fake-quant simulation (what a CPU with exact int8 kernels computes) and the deploy "
                    "model is not evaluated here. --deploy-target portable is exact on every CPU.",
                    calibrator.config.deploy_target.value, ", ".join(inexact))
        return "fake_quant"
    return "deploy"


def config_key(float_layers, states: dict | None = None):
    """How a configuration is looked up: its float set, with its other states when it has any."""
    return frozenset(float_layers) if not states else (frozenset(float_layers), frozenset(states.items()))


class StepEvaluator:
    """Evaluates configurations once each, records every step, tracks the best passing one.

    Configurations already in the run's record (a resumed run) are answered from it; beyond
    ``settings.max_evals`` steps :meth:`step` raises :class:`BudgetExhausted`.
    """

    def __init__(self, run: RunContext, calibrator: Calibrator, judge: str):
        self.run, self.calibrator, self.judge = run, calibrator, judge
        self.max_evals = run.settings.max_evals
        self.cache = {config_key(s.float_layers, s.states): s for s in run.record.steps if s.kind != "original"}
        identity = run.evaluator.identity if run.cache.enabled and run.calibration_key is not None else None
        self.base_key = None if identity is None else make_key("evaluations", run.calibration_key, identity, judge)
        self.bar = tqdm(total=self.max_evals, desc="auto-calibrate", unit="eval", disable=not run.progress)
        self.bar.update(min(len(run.record.steps), self.max_evals))

    def check(self, float_layers: frozenset) -> bool:
        return self.step(float_layers).ok

    def step(self, float_layers: frozenset, kind: str = "search", states: dict | None = None) -> Step:
        """The step of this configuration (``states``: layers in a state other than int8 and float)."""
        states = {name: str(getattr(s, "value", s)) for name, s in (states or {}).items()}
        key = config_key(float_layers, states)
        if key in self.cache:
            return self.cache[key]
        record = self.run.record
        if len(record.steps) >= self.max_evals:
            raise BudgetExhausted()
        number = len(record.steps)
        with timed(f"search step {number} ({len(float_layers)} in float)"):
            step = self._step(frozenset(float_layers), kind, number, states)
        return step

    def _step(self, float_layers: frozenset, kind: str, number: int, states: dict) -> Step:
        record, start = self.run.record, time.perf_counter()
        calibrator = self.calibrator
        key = None if self.base_key is None else make_key("evaluation", self.base_key, sorted(float_layers),
                                                          *([sorted(states.items())] if states else []))
        measured = self._from_cache(key)
        if measured is None:
            with stage(f"building the {self.judge.replace('_', '-')} model of step {number}", self.run.prepared.name):
                model = config_model(self.run.prepared.model, calibrator.quant_, float_layers,
                                     calibrator.tensor_qparams_, calibrator.config.deploy_target,
                                     self.judge == "deploy", states)
            measured = self._measure(model, number, float_layers)
            if key is not None:
                self.run.cache.put(key, {"metric": jsonable_metric(measured.metric), "images": measured.images,
                                         "upper": jsonable_metric(measured.upper),
                                         "decided_early": measured.decided_early})
        ok, loss = (False, None) if measured.decided_early else \
            self.run.evaluator.metric_eval(record.original_metric, measured.metric)
        step = Step(number, kind, sorted(float_layers), jsonable_metric(measured.metric),
                    None if loss is None else float(loss), bool(ok), images=measured.images, judged=self.judge,
                    decided_early=measured.decided_early,
                    metric_upper=measured.upper if measured.decided_early else None, states=states or None)
        if self.judge == "deploy":
            step.deploy_metric, step.deploy_loss = step.metric, step.loss
        step.seconds = round(time.perf_counter() - start, 3)
        record.steps.append(step)
        save_record(record, self.run.paths.record)
        self.cache[config_key(float_layers, states)] = step
        self._report(step, measured, loss)
        return step

    def _from_cache(self, key) -> Measurement | None:
        """This configuration's measurement from an earlier run, where it still holds: a full evaluation
        always, an early decision only while its best reachable metric still misses this run's budget."""
        stored = self.run.cache.get(key) if key is not None else None
        if stored is None:
            return None
        measured = Measurement(stored["metric"], stored["images"], stored["upper"], stored["decided_early"])
        if measured.decided_early and self.run.evaluator.metric_eval(self.run.record.original_metric,
                                                                      measured.upper)[0]:
            return None
        log.info("measurement from the cache (%s)", key)
        return measured

    def _measure(self, model: onnx.ModelProto, number: int, float_layers: frozenset) -> Measurement:
        """The evaluator's verdict on one step's model; EvaluatorError naming the step when it raises or
        returns no usable metric."""
        model_kind = f"{self.judge.replace('_', '-')} model"
        where = f"step {number} ({len(float_layers)} layers in float, {model_kind})"
        kept = f"the record {self.run.paths.record} is kept"
        try:
            measured = self.run.evaluator.decide(model, f"step_{number}_{self.judge}_model",
                                                 self.run.record.original_metric)
        except (KeyboardInterrupt, NbquantError):
            raise
        except Exception as exc:
            raise EvaluatorError(f"the evaluator raised at {where}: {exc.__class__.__name__}: {exc}; {kept}") \
                from exc
        metric = measured.metric
        if not measured.decided_early and (metric is None or (isinstance(metric, float) and math.isnan(metric))):
            raise EvaluatorError(f"the evaluator returned {metric!r} at {where}; {kept}")
        return measured

    def _report(self, step: Step, measured: Measurement, loss) -> None:
        metric = measured.metric
        outcome = (f"metric {metric}, loss {loss:.5f}, {'ok' if step.ok else 'not ok'}" if not step.decided_early
                   else f"not ok, decided after {step.images} images")
        others = "".join(f", {layer} in {state}" for layer, state in sorted((step.states or {}).items()))
        log.info("step %d: %d of %d layers in float%s, %s model %s", step.step, len(step.float_layers),
                 len(self.calibrator.quant_), others, self.judge.replace("_", "-"), outcome)
        self.bar.update(1)
        self.bar.set_postfix(step=step.step, float=len(step.float_layers), metric=f"{metric}", ok=step.ok)

    def best_passing(self) -> frozenset | None:
        """The passing configuration with the fewest float layers (then the smallest loss)."""
        passing = [s for s in self.run.record.steps if s.ok and s.kind != "original" and not s.states]
        best = min(passing, key=lambda s: (len(s.float_layers), s.loss), default=None)
        return None if best is None else frozenset(best.float_layers)

    def search(self, strategy: str, ranked: list[str]) -> frozenset | None:
        """The float set ``strategy`` settles on over ``ranked`` layers; when the evaluation budget runs
        out first, the best passing configuration found (None: none passed)."""
        try:
            found = STRATEGIES[strategy](ranked, self.check)
        except BudgetExhausted:
            found = self.best_passing()
            if found is None:
                log.warning("evaluation budget of %d spent before any configuration passed", self.max_evals)
            else:
                log.info("evaluation budget of %d spent; keeping the best passing configuration found (%d in "
                         "float)", self.max_evals, len(found))
            return found
        return found if found is not None else self.best_passing()

    def close(self) -> None:
        self.bar.close()
