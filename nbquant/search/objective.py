"""What the search minimizes among the configurations that meet the budget: the mixed model's predicted
latency on this CPU, its weight bytes, or (the reference tool's) the number of layers not in int8.

Predictions come from a per-layer cost table (:class:`~nbquant.evaluation.latency_model.LayerCosts`: one
profile of the float and one of the all-int8 deploy model). A layer in a state that reads its producer's
unrounded tensor (``a16w8``, ``dynamic``, ``float_raw``) takes that producer out of the integer kernels,
so for latency the producer counts as float; an ``a16w8`` layer runs as a float layer (onnxruntime has no
16-bit kernel) and a ``dynamic`` one as int8.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from ..evaluation.latency_model import LayerCosts, predict_latency, predict_size
from ..options import Choice
from ..quantize.layer_quant import LayerState

PARETO_COLUMNS = ["step", "kind", "ok", "metric", "loss", "n_int8", "n_float", "n_other_state", "predicted_ms",
                  "size_bytes", "pareto", "chosen", "float_layers", "states"]


class Objective(Choice):
    """What a passing configuration costs: ``latency`` (predicted ms on this CPU), ``size`` (weight bytes)
    or ``count`` (layers not in plain int8)."""

    LATENCY = "latency"
    SIZE = "size"
    COUNT = "count"


def latency_float_set(costs: LayerCosts, float_layers: Iterable[str], states: Mapping | None = None) -> frozenset:
    """The layers that compute in float in the built model: the float ones, ``a16w8`` and ``float_raw``
    layers, and the int8 producers of every layer that reads the unrounded tensor."""
    states = {name: LayerState.parse(s, f"layer {name!r}: state") for name, s in (states or {}).items()}
    out = set(float_layers) | {n for n, s in states.items() if s in (LayerState.A16W8, LayerState.FLOAT_RAW)}
    for name, state in states.items():
        if state in (LayerState.A16W8, LayerState.DYNAMIC, LayerState.FLOAT_RAW):
            out |= set(costs.predecessors.get(name, ()))
    return frozenset(out)


def size_float_set(float_layers: Iterable[str], states: Mapping | None = None) -> frozenset:
    """The layers whose weights stay float: the float and ``float_raw`` ones."""
    raw = {n for n, s in (states or {}).items() if LayerState.parse(s, f"layer {n!r}: state") is LayerState.FLOAT_RAW}
    return frozenset(float_layers) | raw


def configuration_cost(objective: Objective, costs: LayerCosts | None, float_layers, states=None) -> float:
    """The configuration's cost under ``objective`` (lower is better); ``costs`` is needed for latency and size."""
    objective = Objective.parse(objective, "objective")
    if objective is Objective.COUNT or costs is None:
        return float(len(set(float_layers) | set(states or {})))
    if objective is Objective.SIZE:
        return float(predict_size(costs, size_float_set(float_layers, states)))
    return float(predict_latency(costs, latency_float_set(costs, float_layers, states)))


def pareto_table(steps: Iterable, costs: LayerCosts | None, n_layers: int, chosen: int | None) -> pd.DataFrame:
    """Every evaluated configuration (record steps other than the float model's) with its metric, predicted
    latency and size; ``pareto`` marks the passing ones no other passing one beats on both latency and
    size, ``chosen`` the search's answer (step number ``chosen``)."""
    rows = []
    for step in steps:
        if step.kind == "original":
            continue
        states = dict(getattr(step, "states", None) or {})
        fl = list(step.float_layers)
        rows.append({
            "step": step.step, "kind": step.kind, "ok": bool(step.ok), "metric": step.metric, "loss": step.loss,
            "n_int8": n_layers - len(fl) - len(states), "n_float": len(fl), "n_other_state": len(states),
            "predicted_ms": (predict_latency(costs, latency_float_set(costs, fl, states)) if costs is not None
                             else float("nan")),
            "size_bytes": predict_size(costs, size_float_set(fl, states)) if costs is not None else float("nan"),
            "chosen": step.step == chosen, "float_layers": fl, "states": states})
    frame = pd.DataFrame(rows, columns=[c for c in PARETO_COLUMNS if c != "pareto"])
    passing = frame[frame["ok"]]
    frame["pareto"] = [bool(ok) and not any((o.predicted_ms <= ms and o.size_bytes <= size
                                              and (o.predicted_ms < ms or o.size_bytes < size))
                                             for o in passing.itertuples())
                       for ok, ms, size in zip(frame["ok"], frame["predicted_ms"], frame["size_bytes"])]
    return frame[PARETO_COLUMNS]
