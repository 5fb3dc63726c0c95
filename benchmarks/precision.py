"""Latency as the cost (issue 19): what each layer costs in float and in int8 on this CPU, and a mixed
model's latency and size predicted from those costs against measured.

Run: python benchmarks/precision.py [--runs 20] [--batches 1,32] [--top 10] [--quiet 0.1]
(NBQUANT_MODEL / NBQUANT_DATA; a default calibration on 100 images first). Sessions are nbquant's
(make_session: all optimizations, 2 threads on this 2-core machine).

- Cost table, per batch size: one profile each of the float model, the all-int8 deploy model and a probe
  model (isolated layers in float, for the cost of a tensor crossing between float and int8), ``--runs``
  profiled runs per model after 3 warm-up runs, in 4 alternating rounds, and the all-int8 and float
  models timed unprofiled the same way (their least disturbed round each).
- Mixed models: k = 2, 5, 10, 25 layers in float at random (``--seed``), and the k layers the batch-1
  table says cost least in float (what a latency-minimizing search keeps in float first) and most.
- Wall time: every model in alternating rounds after 3 warm-up runs (100 runs in 10 rounds at batch 1,
  15 in 3 at batch 32; each turn starts with 0.1 s of untimed runs): the median of the least disturbed
  round, which the prediction is checked against, and of all runs. Each model is profiled too (20 runs
  at batch 1, 8 at batch 32), so the error of the cost model alone (against the sum of the model's
  per-node medians) shows apart from wall-time noise.
- On a shared machine each batch size waits until other processes use under ``--quiet`` of the CPUs, and
  is measured again (``--retries``) when they used more meanwhile, or when the all-int8 or float model's
  timing moved by more than ``--drift`` from its time in the cost table; both are printed.

Prints the machine, each model's predicted and measured latency and weight bytes, and the layers that
gain most from int8.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from common import machine, model_and_data, parser

from nbquant.calibration.run import calibrate
from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.evaluation.latency import cost_table, measure_latencies, profile_models
from nbquant.evaluation.latency_model import layer_neighbours, predict_latency, predict_size, probe_float_layers
from nbquant.search.steps import config_model

SIZES = (2, 5, 10, 25)


class OtherLoad:
    """Share of the CPUs that other processes used while the block ran (busy time in /proc/stat minus
    this process's): latency measured while it is high says more about the neighbours than the model."""

    def __enter__(self):
        self.start = _busy_seconds(), _own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy, own, wall = (now - then for now, then in zip((_busy_seconds(), _own_seconds(), time.perf_counter()),
                                                           self.start))
        self.share = max(busy - own, 0.0) / (wall * (os.cpu_count() or 1))


def _busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def wait_quiet(limit: float, patience: float) -> float:
    """Wait (at most ``patience`` seconds) until other processes use under ``limit`` of the CPUs for 2 s."""
    deadline = time.monotonic() + patience
    while True:
        with OtherLoad() as load:
            time.sleep(2)
        if load.share < limit or time.monotonic() > deadline:
            return load.share


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(onnx.numpy_helper.to_array(init).nbytes for init in model.graph.initializer)


def configurations(names: list[str], costs, seed: int) -> dict[str, list[str]]:
    """Named float-layer sets: none, all, random k, and the k cheapest / dearest in float by the cost table."""
    rng = random.Random(seed)
    extra = costs.layers["float_us"] - costs.layers["int8_us"] + costs.layers["cross_in_us"] + \
        costs.layers["cross_out_us"]
    order = list(extra.sort_values().index)
    configs = {"all-int8": [], "float": names}
    for k in SIZES:
        configs[f"random {k}"] = rng.sample(names, k)
    for k in (5, 10):
        configs[f"cheapest {k}"], configs[f"dearest {k}"] = order[:k], order[-k:]
    return configs


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=20, help="profiled runs per model for the cost tables")
    p.add_argument("--batches", default="1,32", help="batch sizes, comma-separated")
    p.add_argument("--top", type=int, default=10, help="rows of the cost table to print")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", type=float, default=0.1,
                   help="wait until other processes use less than this share of the CPUs before each batch size, "
                        "and measure it again (up to --retries times) when they used more meanwhile")
    p.add_argument("--drift", type=float, default=0.1,
                   help="measure a batch size again when the all-int8 or float model's timing moved by more than "
                        "this share from its time in the cost table (this VM's speed drifts with no process to see)")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--patience", type=float, default=900, help="seconds to wait for a quiet machine")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    batches = [int(b) for b in args.batches.split(",")]
    run = calibrate(model_path, data_dir, progress=False)
    float_model, calibrator = run.prepared.model, run.calibrator
    names = [layer.name for layer in run.prepared.layers]

    def build(float_layers):
        return config_model(float_model, calibrator.quant_, set(float_layers), calibrator.tensor_qparams_,
                            run.config.deploy_target, True)
    pre = resolve_preprocess(float_model)
    images = next(ImageDataset(data_dir).subset(max(batches)).iter_batches(pre, max(batches))).images
    probe = probe_float_layers(layer_neighbours(float_model, run.prepared.layers))
    int8_model, probe_model = build(()), build(probe)
    print(f"machine: {machine()}")
    print(f"probe: {len(probe)} isolated layers in float")
    tables, frames = {}, []
    for b in batches:
        for attempt in range(args.retries + 1):
            before = wait_quiet(args.quiet, args.patience)
            with OtherLoad() as load:
                tables[b] = cost_table(float_model, int8_model, images[:b], probe_model=probe_model, runs=args.runs)
                if b == batches[0]:
                    configs = configurations(names, tables[b], args.seed)
                    models = {name: float_model if name == "float" else int8_model if not layers else build(layers)
                              for name, layers in configs.items()}
                small = b <= 4
                frame = measure_latencies(models, images, (b,), runs=100 if small else 15, rounds=10 if small else 3)
                profiled = profile_models(models, images[:b], runs=20 if small else 8, rounds=4 if small else 2)
                kernels = {name: nodes["us"].sum() / 1000 for name, (nodes, _) in profiled.items()}
                frame["kernels_ms"] = frame["model"].map(kernels)
            timed = frame.set_index("model")["best_round_ms"]
            drift = max(abs(timed[name] / tables[b].wall_ms[state] - 1) for name, state in
                        (("all-int8", "int8"), ("float", "float")))
            print(f"batch {b}, attempt {attempt + 1}: other processes used {100 * before:.0f} % of the CPUs "
                  f"before, {100 * load.share:.0f} % while measuring; the all-int8 and float models timed "
                  f"{100 * drift:.0f} % apart from their times in the cost table")
            if load.share < args.quiet and drift < args.drift:
                break
        frames.append(frame)
    measured = pd.concat(frames).set_index(["model", "batch"])
    print("ms per run. pred: predicted wall time; round: measured, the median of the least disturbed round "
          "(what the costs describe too); median: measured, all runs; error: pred against each; kern: the model's "
          "own profile (per-node medians of its least disturbed round, summed) and the error of the unscaled "
          "prediction against it (the cost model alone, without wall-time noise)")
    header = f"{'model':12s} {'float':>5s} {'MB pred':>8s} {'MB':>6s}"
    for b in batches:
        header += (f" | b{b} {'pred':>7s} {'round':>7s} {'error':>6s} {'median':>7s} {'error':>6s} {'kern':>7s} "
                   f"{'error':>6s}")
    print(header)
    errors = {b: [] for b in batches}
    for name, layers in configs.items():
        line = (f"{name:12s} {len(layers):5d} {predict_size(tables[batches[0]], layers) / 1e6:8.2f} "
                f"{weight_bytes(models[name]) / 1e6:6.2f}")
        for b in batches:
            predicted, row = predict_latency(tables[b], layers), measured.loc[(name, b)]
            kernels = predict_latency(tables[b], layers, kernels=True)
            found = [100 * (ours / theirs - 1) for ours, theirs in (
                (predicted, row["best_round_ms"]), (predicted, row["median_ms"]), (kernels, row["kernels_ms"]))]
            errors[b].append([abs(e) for e in found])
            line += (f" | {' ' * len(str(b))} {predicted:7.2f} {row['best_round_ms']:7.2f} {found[0]:+5.1f}% "
                     f"{row['median_ms']:7.2f} {found[1]:+5.1f}% {row['kernels_ms']:7.2f} {found[2]:+5.1f}%")
        print(line)
    for b in batches:
        best, median, kernels = np.array(errors[b]).T
        print(f"batch {b}: |error| median (max) against the least disturbed round {np.median(best):.1f} % "
              f"({best.max():.1f} %), against the median {np.median(median):.1f} % ({median.max():.1f} %), "
              f"against the profile {np.median(kernels):.1f} % ({kernels.max():.1f} %); wall / profile time: "
              + ", ".join(f"{state} {scale:.2f}" for state, scale in tables[b].scale.items()) + "; crossing ops "
              "(fixed us, us per 1000 elements): "
              + ", ".join(f"{op} ({a:.1f}, {r * 1000:.3f})" for op, (a, r) in tables[b].crossing_rates.items()))
    for b in batches:
        print(f"\nbatch {b}: the {args.top} layers that gain most from int8 (us per run, weight bytes)")
        top = tables[b].top(args.top)[["kind", "float_us", "int8_us", "saved_us", "float_bytes", "int8_bytes",
                                       "cross_in_us", "cross_out_us"]]
        print(top.round(1).to_string())


if __name__ == "__main__":
    main()
