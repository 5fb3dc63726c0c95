"""Latency on this CPU: onnxruntime's per-node profile, per-layer costs of each state, and wall time.

The sessions live here; what a mixed model costs follows from the costs by the pure functions of
:mod:`nbquant.evaluation.latency_model`. Every session is made by :func:`make_session`, as nbquant runs
deploy models (all graph optimizations, integer kernels, layers kept in float stay in float); threads:
``make_session``'s default (every core) unless given.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from ..errors import ConfigError, ModelError
from ..graph.layers import Layer, find_layers
from ..options import check_count, check_int
from .latency_model import (
    OTHER,
    LayerCosts,
    attribute_nodes,
    crossing_rates,
    crossing_us,
    layer_keys,
    layer_neighbours,
)
from .session import make_session

WARMUP = 3  # runs before any timed one: the first runs pack weights and grow the arena
# after another session ran, its worker threads spin on for a while and take a core: the next session's
# first runs are slow (EfficientNet-Lite0, 2 cores, batch 1: 9 ms instead of 2.4 for 40 ms), so each
# turn of a session starts with untimed runs until two in a row are back within REWARM_SLACK of the
# fastest run that session made so far, for at most REWARM_SECONDS (and REWARM_RUNS runs: a tiny model's
# profile would fill with thousands)
REWARM_SECONDS = 0.1
REWARM_RUNS = 100
REWARM_SLACK = 1.15
# a round is one burst of a busy VM host away from its neighbours: rounds are added (up to ``extra_rounds``)
# until each model's two fastest round medians lie within ROUND_AGREEMENT of each other
ROUND_AGREEMENT = 1.10


def batch_feed(feeds, session_inputs, batch: int) -> dict[str, np.ndarray]:
    """``feeds`` (an array for the first input, or arrays by input name) cut or repeated along the first
    axis to ``batch`` rows."""
    batch = check_int("batch", batch)
    named = feeds if isinstance(feeds, dict) else {session_inputs[0].name: feeds}
    out = {}
    for name, value in named.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ConfigError(f"feed {name!r} is a scalar: latency needs a batch of inputs [N, ...]")
        reps = -(-batch // value.shape[0])
        out[name] = np.ascontiguousarray(np.concatenate([value] * reps)[:batch] if reps > 1 else value[:batch])
    return out


def _elements(type_shapes) -> int:
    """Elements of the first tensor of a profile event's ``input_type_shape`` / ``output_type_shape``."""
    if not type_shapes:
        return 0
    shape = next(iter(type_shapes[0].values()))
    return math.prod(shape) if shape else 1


def read_profile(path: str | os.PathLike, skip: int | Collection[int],
                 rounds: Mapping[int, int] | None = None) -> tuple[pd.DataFrame, float]:
    """Nodes of an onnxruntime profile (``enable_profiling``) without the runs in ``skip`` (run indices, or
    an int: the first runs): one row per node in execution order with ``node``, ``op``, ``us`` (median kernel
    microseconds over the kept runs), ``elements`` (of its first input) and ``out_elements``; and the
    median kept run in microseconds. ``rounds`` (kept run index -> round) keeps the round whose median run
    is the shortest: the stretch the machine disturbed least."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    skipped = set(range(skip)) if isinstance(skip, int) else set(skip)
    kept = [i for i in range(len(runs)) if i not in skipped]
    if not kept:
        raise ModelError(f"profile {path} holds {len(runs)} runs, all of them skipped")
    if rounds:
        by_round: dict[int, list[int]] = {}
        for i in kept:
            by_round.setdefault(rounds.get(i, -1), []).append(i)
        kept = min(by_round.values(), key=lambda group: np.median([runs[i][1] for i in group]))
    starts = np.array([ts for ts, _ in runs])
    rows = [(e["name"].removesuffix("_kernel_time"), e["args"].get("op_name", ""), e["dur"], e["ts"],
             _elements(e["args"].get("input_type_shape")), _elements(e["args"].get("output_type_shape")))
            for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    frame = pd.DataFrame(rows, columns=["node", "op", "us", "ts", "elements", "out_elements"])
    frame = frame[np.isin(np.searchsorted(starts, frame["ts"].to_numpy(), side="right") - 1, kept)]
    nodes = (frame.groupby(["node", "op"], sort=False)
             .agg(us=("us", "median"), ts=("ts", "min"), elements=("elements", "max"),
                  out_elements=("out_elements", "max"))
             .reset_index().sort_values("ts").drop(columns="ts").reset_index(drop=True))
    return nodes, float(np.median([runs[i][1] for i in kept]))


def profile_models(models: dict, feeds, runs: int = 20, warmup: int = WARMUP, threads: int | None = None,
                   rounds: int = 4) -> dict[str, tuple[pd.DataFrame, float]]:
    """Per-node kernel times of each named model on ``feeds`` (see :func:`read_profile`), its median profiled
    run in microseconds: ``warmup`` untimed runs, then ``runs`` profiled ones split over ``rounds`` rounds
    that take the models in turn; each model's least disturbed round is kept (a busy spell of the machine,
    or of the host under this VM, lasts a round or more). Each turn starts with untimed runs
    (``REWARM_SECONDS``): the first runs after another session ran are slower."""
    return _profile_then_time(models, feeds, runs, warmup, threads, rounds)[0]


def _profile_then_time(models: dict, feeds, runs: int, warmup: int, threads: int | None, rounds: int,
                       wall_rounds: int = 0, extra_rounds: int = 0
                       ) -> tuple[dict[str, tuple[pd.DataFrame, float]], dict[str, float]]:
    """:func:`profile_models`, then (``wall_rounds``) the same sessions unprofiled, ``runs`` runs in that many
    rounds: each model's best-round median wall milliseconds (no second session, no second warm-up). Both
    phases add up to ``extra_rounds`` rounds while some model's two best rounds disagree (:func:`rounds_agree`)."""
    runs, warmup = check_count("runs", runs), check_int("warmup", warmup, minimum=0)
    rounds = min(check_count("rounds", rounds), runs)
    with tempfile.TemporaryDirectory(prefix="nbquant-profile-") as folder:
        sessions = {name: make_session(_source(model), threads=threads, profile=Path(folder) / f"profile{i}")
                    for i, (name, model) in enumerate(models.items())}
        inputs = {name: batch_feed(feeds, s.get_inputs(), _batch_of(feeds)) for name, s in sessions.items()}
        done = dict.fromkeys(sessions, 0)
        skipped: dict[str, set[int]] = {name: set() for name in sessions}
        round_of: dict[str, dict[int, int]] = {name: {} for name in sessions}

        def run_once(name, timed_round):  # the profile keeps the timed runs' rounds and skips the others
            if timed_round is None:
                skipped[name].add(done[name])
            else:
                round_of[name][done[name]] = timed_round
            sessions[name].run(None, inputs[name])
            done[name] += 1
        _rounds({name: lambda r, n=name: run_once(n, r) for name in sessions}, runs, rounds, warmup, extra_rounds,
                rewarm_alone=False)
        profiles = {name: read_profile(session.end_profiling(), skipped[name], round_of[name])
                    for name, session in sessions.items()}
        if not wall_rounds:
            return profiles, {}
        times = timed_rounds(sessions, inputs, runs, wall_rounds, warmup=1,  # unprofiled runs are faster
                              extra_rounds=extra_rounds)
        return profiles, {name: 1000 * min(float(np.median(one)) for one in per_round)
                          for name, per_round in times.items()}


def timed_rounds(sessions: dict, inputs: dict, count: int, rounds: int,
                warmup: int, extra_rounds: int = 0) -> dict[str, list[list[float]]]:
    """Seconds of ``count`` runs of each session after ``warmup`` untimed ones, split over ``rounds`` rounds
    that take the sessions in turn (and up to ``extra_rounds`` more while :func:`rounds_agree` says no); each turn
    starts with untimed runs (:func:`_rewarm`) unless one session runs alone after its first round: the first
    runs after another session ran, or after a pause, are slower."""
    return _rounds({name: lambda r, s=session, i=inputs[name]: s.run(None, i) for name, session in sessions.items()},
                   count, rounds, warmup, extra_rounds)


def _rounds(run_once: dict, count: int, rounds: int, warmup: int, extra_rounds: int = 0,
            rewarm_alone: bool = True) -> dict[str, list[list[float]]]:
    """The round loop :func:`timed_rounds` and the profile share: seconds of ``count`` timed calls of each
    ``run_once[name](round)`` after ``warmup`` untimed ones (``round`` None), split over ``rounds`` rounds that
    take the names in turn, plus up to ``extra_rounds`` while :func:`rounds_agree` says no. Each turn starts
    with untimed calls (:func:`_rewarm`) when several names alternate, and, with ``rewarm_alone``, before a
    lone name's first round."""
    times: dict[str, list[list[float]]] = {name: [] for name in run_once}
    fastest: dict[str, float] = {}
    for name, once in run_once.items():
        _warm(lambda o=once: o(None), fastest, name, warmup)
    rounds = min(rounds, count)
    r = 0
    while r < rounds or (r < rounds + extra_rounds and not rounds_agree(times)):
        for name, once in run_once.items():
            if len(run_once) > 1 or (rewarm_alone and r == 0):
                _rewarm(lambda o=once: o(None), fastest, name)
            times[name].append([])
            for _ in range(max(1, count // rounds + (r < count % rounds))):
                start = time.perf_counter()
                once(r)
                times[name][-1].append(time.perf_counter() - start)
        r += 1
    return times


def rounds_agree(times: dict[str, list[list[float]]]) -> bool:
    """Whether each model's two fastest round medians lie within ``ROUND_AGREEMENT`` of each other (so the
    least disturbed round is likely an undisturbed one)."""
    for per_round in times.values():
        medians = sorted(float(np.median(one)) for one in per_round if one)
        if len(medians) >= 2 and medians[1] > ROUND_AGREEMENT * medians[0]:
            return False
    return True


def _warm(run_once, fastest: dict, name, count: int) -> None:
    """``count`` untimed runs; the fastest of them is where :func:`_rewarm` starts from."""
    for _ in range(count):
        start = time.perf_counter()
        run_once()
        fastest[name] = min(fastest.get(name, np.inf), time.perf_counter() - start)


def _rewarm(run_once, fastest: dict, name) -> None:
    """Untimed runs of ``run_once`` (at least one) until two in a row take at most ``REWARM_SLACK`` times the
    fastest run of ``name`` so far (``fastest``, updated), for at most ``REWARM_SECONDS`` / ``REWARM_RUNS``."""
    end = time.perf_counter() + REWARM_SECONDS
    settled = 0
    for _ in range(REWARM_RUNS):
        start = time.perf_counter()
        run_once()
        took = time.perf_counter() - start
        settled = settled + 1 if took <= REWARM_SLACK * fastest.get(name, np.inf) else 0
        fastest[name] = min(fastest.get(name, np.inf), took)
        if settled >= 2 or time.perf_counter() >= end:
            break


def profile_nodes(model, feeds, runs: int = 20, warmup: int = WARMUP,
                  threads: int | None = None) -> tuple[pd.DataFrame, float]:
    """Per-node kernel times of one model (:func:`profile_models`)."""
    return profile_models({"model": model}, feeds, runs, warmup, threads, rounds=1)["model"]


def _batch_of(feeds) -> int:
    first = next(iter(feeds.values())) if isinstance(feeds, dict) else feeds
    return int(np.asarray(first).shape[0])


def _source(model):
    """What make_session takes: a path as it is, anything else loaded."""
    return model if isinstance(model, (str, os.PathLike)) else _load(model)


def attribute(nodes: pd.DataFrame, model: onnx.ModelProto, layers: Collection[Layer]) -> pd.DataFrame:
    """``nodes`` with a ``layer`` column: the layer each node belongs to, else ``"other"``
    (:func:`~nbquant.evaluation.latency_model.attribute_nodes`); ``model``: the float model the layers are in."""
    return nodes.assign(layer=attribute_nodes(nodes["node"], [layer.name for layer in layers],
                                              layer_keys(model, layers)))


def profile_layers(model, feeds, layers: Collection[Layer] | None = None, float_model=None,
                   runs: int = 20, warmup: int = WARMUP, threads: int | None = None) -> pd.DataFrame:
    """Median kernel microseconds per run of each layer of ``model`` (its nodes: the layer, its Q/DQ and the
    kernels onnxruntime fused it into) and of the other ops (last row, ``other``), on ``feeds``.

    ``layers`` default to the float layers of ``float_model`` (default ``model``); a deploy model's layers
    are those of the float model it was built from. Columns: ``layer``, ``us``, ``nodes``.
    """
    proto = _load(model)
    float_model = _load(float_model) if float_model is not None else proto
    layers = list(layers) if layers is not None else find_layers(float_model)
    nodes, _ = profile_nodes(proto, feeds, runs, warmup, threads)
    return summarize(attribute(nodes, float_model, layers), [layer.name for layer in layers])


def summarize(nodes: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Attributed nodes summed per layer in ``names`` order, ``other`` last."""
    grouped = nodes.groupby("layer").agg(us=("us", "sum"), nodes=("node", "count"))
    table = grouped.reindex(names + [OTHER]).fillna({"us": 0.0, "nodes": 0})
    return table.astype({"nodes": int}).rename_axis("layer").reset_index()


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    return onnx.load(str(path))


def layer_bytes(model: onnx.ModelProto, layers: Iterable[Layer], quantized: bool) -> dict[str, int]:
    """Bytes of each layer's constants: its weight and bias in the float model, or (``quantized``) the
    integer weights, biases and quantization parameters nbquant names after it (``<layer>/...``)."""
    sizes = {init.name: onnx.numpy_helper.to_array(init).nbytes for init in model.graph.initializer}
    out = {}
    for layer in layers:
        if quantized:
            out[layer.name] = sum(size for name, size in sizes.items() if name.startswith(layer.name + "/"))
        else:
            out[layer.name] = sum(sizes.get(name, 0) for name in (layer.weight, layer.bias) if name)
    return out


def cost_table(float_model, int8_model, feeds, probe_model=None, layers: Collection[Layer] | None = None,
               runs: int = 20, warmup: int = WARMUP, threads: int | None = None, wall: bool = True,
               rounds: int = 4, wall_rounds: int = 2, extra_rounds: int = 0) -> LayerCosts:
    """Each layer's cost in float and in int8 at the batch size of ``feeds``, from one profile of the float
    model and one of the all-int8 deploy model, and what a tensor crossing between float and int8 costs,
    fitted on the profile of ``probe_model``: a deploy model with isolated layers in float
    (:func:`~nbquant.evaluation.latency_model.probe_float_layers`). Without it the crossing ops are fitted
    on the few that run at the two models' ends, which is rough (tensors of one or two sizes).
    ``wall``: also time the two models unprofiled (the same sessions once profiling ended, ``runs`` runs each
    in ``wall_rounds`` rounds), which turns predicted kernel time into wall time (``LayerCosts.scale``).
    Profiles (``runs`` runs in ``rounds`` rounds) and wall times are those of each model's least disturbed
    round: the costs describe the machine undisturbed. ``extra_rounds``: up to this many more rounds in each
    phase while a model's two best rounds differ by more than ``ROUND_AGREEMENT`` (a disturbed machine)."""
    float_model, int8_model = _load(float_model), _load(int8_model)
    layers = list(layers) if layers is not None else find_layers(float_model)
    if not layers:
        raise ModelError(f"model {float_model.graph.name!r} has no quantizable layer to cost")
    names = [layer.name for layer in layers]
    models = {"int8": int8_model, "float": float_model} | ({"probe": probe_model} if probe_model is not None else {})
    profiled, wall_ms = _profile_then_time(models, feeds, runs, warmup, threads, rounds, wall_rounds if wall else 0,
                                           extra_rounds)
    wall_ms = {state: wall_ms[state] for state in ("int8", "float") if state in wall_ms}
    run_us = {name: run for name, (_, run) in profiled.items()}
    profiles = {state: attribute(profiled[state][0], float_model, layers) for state in ("int8", "float")}
    sums = {state: summarize(frame, names).set_index("layer")["us"] for state, frame in profiles.items()}
    rates = crossing_rates([profiled["probe"][0]] if probe_model is not None else profiles.values())
    in_elements, out_elements = _layer_elements(profiles, names)
    sizes = {"int8": layer_bytes(int8_model, layers, True), "float": layer_bytes(float_model, layers, False)}
    table = pd.DataFrame({
        "kind": [layer.kind for layer in layers],
        "int8_us": sums["int8"].loc[names].to_numpy(), "float_us": sums["float"].loc[names].to_numpy(),
        "int8_bytes": [sizes["int8"][n] for n in names], "float_bytes": [sizes["float"][n] for n in names],
        "in_elements": [in_elements[n] for n in names], "out_elements": [out_elements[n] for n in names],
    }, index=pd.Index(names, name="layer"))
    table["cross_in_us"] = [crossing_us(rates, e, "in") for e in table["in_elements"]]
    table["cross_out_us"] = [crossing_us(rates, e, "out") for e in table["out_elements"]]
    all_bytes = sum(onnx.numpy_helper.to_array(init).nbytes for init in float_model.graph.initializer)
    return LayerCosts(table, layer_neighbours(float_model, layers),
                      {state: float(sums[state].loc[OTHER]) for state in sums},
                      int(all_bytes - table["float_bytes"].sum()), rates, _batch_of(feeds),
                      threads if threads is not None else (os.cpu_count() or 1), run_us, wall_ms)


def _layer_elements(profiles: dict[str, pd.DataFrame], names: list[str]) -> tuple[dict, dict]:
    """Input and output elements of each layer: those of its slowest node in the int8 profile (its
    integer kernel), else in the float profile."""
    inputs, outputs = {}, {}
    for state in ("float", "int8"):
        frame = profiles[state]
        for name, rows in frame[frame["layer"].isin(names)].groupby("layer"):
            main = rows.loc[rows["us"].idxmax()]
            inputs[name], outputs[name] = int(main["elements"]), int(main["out_elements"])
    return {n: inputs.get(n, 0) for n in names}, {n: outputs.get(n, 0) for n in names}


def measure_latency(model, feeds, batch_sizes: Iterable[int] = (1, 32), runs: int | None = None,
                    warmup: int = WARMUP, threads: int | None = None, rounds: int = 4) -> pd.DataFrame:
    """Wall time of one run of ``model`` at each batch size (``feeds`` cut or repeated to it); ``model``
    may be a dict of named models, measured in turn (:func:`measure_latencies`)."""
    models = model if isinstance(model, dict) else {"model": model}
    frame = measure_latencies(models, feeds, batch_sizes, runs, warmup, threads, rounds)
    return frame if isinstance(model, dict) else frame.drop(columns="model")


def measure_latencies(models: dict, feeds, batch_sizes: Iterable[int] = (1, 32), runs: int | None = None,
                      warmup: int = WARMUP, threads: int | None = None, rounds: int = 4) -> pd.DataFrame:
    """Wall time of one run of each named model at each batch size, one session per model: ``warmup``
    untimed runs, then ``runs`` timed ones (default 60 up to batch 4, else 12) split over ``rounds``
    rounds that take the models in turn (a busy spell of the machine weighs on every model alike).
    Columns: ``model``, ``batch``, ``median_ms`` (all timed runs), ``best_round_ms`` (the median of the
    round the machine disturbed least), ``min_ms`` (the fastest run), ``runs``."""
    rounds = check_count("rounds", rounds)
    sessions = {name: make_session(_source(model), threads=threads) for name, model in models.items()}
    rows = []
    for batch in batch_sizes:
        count = check_count("runs", runs) if runs is not None else (60 if batch <= 4 else 12)
        inputs = {name: batch_feed(feeds, s.get_inputs(), batch) for name, s in sessions.items()}
        times = timed_rounds(sessions, inputs, count, rounds, warmup)
        for name, per_round in times.items():
            every = [t for one in per_round for t in one]
            rows.append({"model": name, "batch": batch, "median_ms": 1000 * float(np.median(every)),
                         "best_round_ms": 1000 * min(float(np.median(one)) for one in per_round),
                         "min_ms": 1000 * float(np.min(every)), "runs": len(every)})
    return pd.DataFrame(rows)
