"""After the fallback search: the passing configuration the objective prefers, then each float layer in the
cheapest state that still keeps the budget, and what the final model costs, predicted and measured.

The cost table (one profile each of the float, the all-int8 and a probe deploy model, batch 1, on this
CPU) is kept in the run's cache with the calibration, so a second run on the same machine predicts the
same costs and settles on the same configuration.
"""

from __future__ import annotations

import logging

import numpy as np

from ..cache import make_key
from ..calibration.calibrator import Calibrator
from ..evaluation.latency import cost_table, measure_latency
from ..evaluation.latency_model import LayerCosts, layer_neighbours, predict_latency, probe_float_layers
from ..quantize.cpu_probe import probe_int8
from ..quantize.layer_quant import LayerState
from ..quantize.layer_states import can_be_dynamic
from ..timing import timed
from .context import RunContext
from .objective import Objective, configuration_cost
from .record import Step
from .steps import StepEvaluator, config_model
from .strategies import BudgetExhausted

log = logging.getLogger(__name__)
COST_BATCH = 1
COST_RUNS, COST_ROUNDS, COST_EXTRA_ROUNDS = 12, 2, 2  # profiled runs of each model, their rounds, and up to 2
# more where two rounds disagree: predictions within 5 % of 100 timed runs on Lite0 (VNNI EPYC, 2 cores) in
# half the time of 20 runs in 4 rounds on a quiet machine
PREFER_MARGIN = 0.03  # a predicted gain smaller than this share of the cost is within a profile's noise


def sample_feed(run: RunContext) -> np.ndarray | dict:
    """One calibration sample as the model takes it (the profiles' input)."""
    batch = next(iter(run.calib_set.iter_batches(run.pre, COST_BATCH)))
    return batch.images


def layer_costs(run: RunContext, calibrator: Calibrator) -> LayerCosts | None:
    """The cost table of this run's layers on this CPU (None for the ``count`` objective): what the objective
    compares configurations by."""
    if Objective.parse(run.settings.objective) is Objective.COUNT:
        return None
    key = (make_key("layer-costs", run.calibration_key, probe_int8().cpu, COST_BATCH)
           if run.cache.enabled and run.calibration_key is not None else None)
    stored = run.cache.get(key) if key is not None else None
    if stored is not None:
        log.info("layer costs from the cache (%s)", key)
        return LayerCosts.from_dict(stored)
    with timed("profiling layer costs"):
        model, quant, params = run.prepared.model, calibrator.quant_, calibrator.tensor_qparams_
        target = calibrator.config.deploy_target
        int8 = config_model(model, quant, (), params, target, True)
        probe = config_model(model, quant, probe_float_layers(layer_neighbours(model, run.prepared.layers)),
                             params, target, True)
        costs = cost_table(model, int8, sample_feed(run), probe, run.prepared.layers, runs=COST_RUNS,
                           rounds=COST_ROUNDS, extra_rounds=COST_EXTRA_ROUNDS)
    if key is not None:
        run.cache.put(key, costs.to_dict())
    log.info("layer costs on %s: all-int8 %.2f ms, float %.2f ms (batch %d, measured wall time)", probe_int8().cpu,
             predict_latency(costs, ()), predict_latency(costs, costs.layers.index), COST_BATCH)
    return costs


def costs_matter(run: RunContext, calibrator: Calibrator, found: Step) -> bool:
    """Whether the objective's choice after the search can depend on the cost table: another passing
    configuration to prefer (see :func:`preferred_step`) or a float layer with a state that may cost less
    (see :func:`cheaper_states`). Otherwise the profile (3-4 s on Lite0) is not taken before the answer."""
    objective = Objective.parse(run.settings.objective)
    if objective is Objective.COUNT:
        return False
    if any(step.step != found.step for step in _minimal_passing(run)):
        return True
    layers = [calibrator.layer_quant_[name] for name in found.float_layers]
    return objective is Objective.SIZE or any(can_be_dynamic(lq) and not lq.dynamic for lq in layers)


def _minimal_passing(run: RunContext) -> list[Step]:
    """The passing steps (float sets only) no passing subset of which was evaluated."""
    passing = [s for s in run.record.steps if s.ok and s.kind != "original" and not s.states]
    sets = [frozenset(s.float_layers) for s in passing]
    return [s for s in passing if not any(other < frozenset(s.float_layers) for other in sets)]


def step_cost(objective, costs: LayerCosts | None, step: Step) -> float:
    return configuration_cost(objective, costs, step.float_layers, step.states)


def preferred_step(run: RunContext, costs: LayerCosts | None, found: Step, margin: float = PREFER_MARGIN) -> Step:
    """The passing configuration the objective prefers to ``found`` (the strategy's answer): among those
    no passing subset of which was evaluated (more float layers never win on a noisy profile alone), the
    cheapest, when it is cheaper than ``found`` by more than ``margin`` (a share of the cost)."""
    objective = Objective.parse(run.settings.objective)
    if objective is Objective.COUNT or costs is None:
        return found
    best = min(_minimal_passing(run), key=lambda s: (step_cost(objective, costs, s), len(s.float_layers),
                                       s.loss if s.loss is not None else 0.0), default=found)
    if best is found or step_cost(objective, costs, best) >= (1 - margin) * step_cost(objective, costs, found):
        return found
    log.info("objective %s: step %d (%d in float) is cheaper than step %d (%d in float)", objective.value,
             best.step, len(best.float_layers), found.step, len(found.float_layers))
    return best


def cheaper_states(objective, costs: LayerCosts | None, calibrator: Calibrator, layer: str) -> list[LayerState]:
    """States other than float for ``layer``, cheapest first, that cost less than float under ``objective``:
    ``dynamic`` for a Gemm or 2-D MatMul, and for ``size`` also ``a16w8`` (int8 weights); ``a16w8`` runs as a
    float layer that dequantizes its weights on every run here (measured slower than float on every layer
    tried, benchmarks/layer_states.py), so latency never takes it."""
    lq = calibrator.layer_quant_[layer]
    candidates = [LayerState.DYNAMIC] if can_be_dynamic(lq) and not lq.dynamic else []
    if Objective.parse(objective) is Objective.SIZE:  # onnxruntime's CPU has no 16-bit kernel: slower than float
        candidates.append(LayerState.A16W8)
    float_cost = configuration_cost(objective, costs, [layer])
    priced = [(configuration_cost(objective, costs, [], {layer: s}), s) for s in candidates]
    return [s for cost, s in sorted(priced, key=lambda p: p[0]) if cost < float_cost]


def settle_states(run: RunContext, steps: StepEvaluator, calibrator: Calibrator, costs: LayerCosts | None,
                  chosen: Step) -> Step:
    """Each float layer of ``chosen`` in its cheapest state that keeps the budget: all of them at once first
    (one evaluation), then layer by layer while the evaluation budget lasts."""
    objective = run.settings.objective
    options = {layer: cheaper_states(objective, costs, calibrator, layer) for layer in chosen.float_layers}
    options = {layer: states for layer, states in options.items() if states}
    if not options:
        return chosen
    current = chosen
    try:
        together = steps.step(frozenset(chosen.float_layers) - set(options), kind="states",
                              states={layer: states[0] for layer, states in options.items()})
        if together.ok or len(options) == 1:
            return together if together.ok else chosen
        for layer, states in options.items():
            for state in states:
                trial = steps.step(frozenset(current.float_layers) - {layer}, kind="states",
                                   states={**(current.states or {}), layer: state})
                if trial.ok:
                    current = trial
                    break
    except BudgetExhausted:
        log.info("evaluation budget of %d spent while choosing layer states", run.settings.max_evals)
    return current


def measured_latency(run: RunContext, model, costs: LayerCosts | None, step: Step) -> dict:
    """The final deploy model's measured milliseconds at batch 1 and, with ``costs``, its predicted ones."""
    with timed("measuring the final model's latency"):
        frame = measure_latency(model, sample_feed(run), batch_sizes=(COST_BATCH,), runs=30)
    measured = float(frame["best_round_ms"].iloc[0])  # as the cost table's wall times: the least disturbed round
    if costs is None:
        log.info("latency of the final model at batch %d on %s: %.2f ms", COST_BATCH, probe_int8().cpu, measured)
        return {"measured_ms": measured}
    predicted = configuration_cost(Objective.LATENCY, costs, step.float_layers, step.states)
    float_ms = predict_latency(costs, costs.layers.index)
    log.info("latency of the final model at batch %d on %s: predicted %.2f ms, measured %.2f ms (%+.0f %%)",
             COST_BATCH, probe_int8().cpu, predicted, measured, 100 * (predicted - measured) / measured)
    if predicted >= (1 - PREFER_MARGIN) * float_ms:
        log.warning("the final model is predicted no faster than the float model on %s (%.2f ms against %.2f ms at "
                    "batch %d): with %d layers in float, the conversions between float and int8 cost what int8 saves; "
                    "it is smaller, not faster (a looser --max-drop keeps more layers in int8)", probe_int8().cpu,
                    predicted, float_ms, COST_BATCH, len(step.float_layers))
    return {"predicted_ms": predicted, "measured_ms": measured, "float_predicted_ms": float_ms}
