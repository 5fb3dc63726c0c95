"""Latency against count (issue 19): the auto calibration's model under ``--objective latency`` and
``count``, timed beside the float model and the all-int8 deploy model.

Run: python benchmarks/objectives.py [--max-drops 0.002,0.001] [--batches 1,32] [--runs N]
(NBQUANT_MODEL / NBQUANT_DATA; per-channel weights, 100 calibration images, every image for evaluation.)
Per budget, both objectives share one cache (calibration, ranking and the configurations the first
evaluated are reused, so the runs differ only in what the objective asks). Then every model is timed in
alternating rounds (:func:`nbquant.evaluation.latency.measure_latencies`, one session each, the median
of the least disturbed round) at each batch size, with the search's predicted batch-1 latency.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import onnx
from common import machine, model_and_data, parser

from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.evaluation.accuracy import evaluate
from nbquant.evaluation.latency import measure_latencies
from nbquant.quantize.deploy import make_deploy_model
from nbquant.search.auto import AutoSettings, auto_calibrate

OBJECTIVES = ("latency", "count")


def run_budget(model_path, data, max_drop: float, root: Path) -> tuple[dict, list[dict]]:
    """Both objectives at ``max_drop``: the models to time (by name) and one summary row per run."""
    models, rows = {}, []
    for objective in OBJECTIVES:
        save_dir = root / f"{max_drop}-{objective}"
        start = time.perf_counter()
        result = auto_calibrate(model_path, data, save_dir=save_dir, cache=root / f"cache-{max_drop}",
                                settings=AutoSettings(max_drop=max_drop, objective=objective), progress=False)
        wall = time.perf_counter() - start
        n = result.n_layers
        rows.append({"objective": objective, "ok": result.ok, "wall_s": wall, "evaluations": result.evaluations,
                     "int8": n - len(result.float_layers) - len(result.states), "float": len(result.float_layers),
                     "states": ", ".join(f"{k}: {v}" for k, v in result.states.items()) or "-",
                     "deploy_top1": evaluate(result.paths.deploy_model, data, progress=False).top1 if result.ok
                     else float("nan"),
                     "predicted_ms": result.latency.get("predicted_ms", float("nan")), "n": n})
        if result.ok:
            models[objective] = result.paths.deploy_model
        if "all-int8" not in models:
            calibrator = result.calibrator
            whole = make_deploy_model(result.calibration.prepared.model, calibrator.quant_,
                                      calibrator.tensor_qparams_, calibrator.config.deploy_target)
            models["all-int8"] = root / "all_int8_deploy.onnx"
            onnx.save(whole, str(models["all-int8"]))
    return models, rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--max-drops", default="0.002,0.001", help="budgets, comma-separated")
    p.add_argument("--batches", default="1,32", help="batch sizes to time, comma-separated")
    p.add_argument("--runs", type=int, default=None, help="timed runs per model and batch (default 60 / 12)")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"machine: {machine()}; {len(data)} evaluation images, 100 calibration images, per-channel weights")
    pre = resolve_preprocess(onnx.load(model_path))
    feed = next(data.subset(max(batches)).iter_batches(pre, max(batches))).images
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for max_drop in (float(d) for d in args.max_drops.split(",")):
            models, rows = run_budget(model_path, data, max_drop, root)
            print(f"\nmax drop {max_drop}")
            for row in rows:
                print(f"  objective {row['objective']:8s} met {row['ok']!s:5s} {row['int8']:2d}/{row['n']} int8, "
                      f"{row['float']} float, other states: {row['states']}; {row['evaluations']} evaluations, "
                      f"{row['wall_s']:.1f} s; deploy top-1 {row['deploy_top1']:.4f}; "
                      f"predicted b1 {row['predicted_ms']:.2f} ms")
            timed = measure_latencies({"float": model_path, **models}, feed, batches, args.runs)
            table = timed.pivot(index="model", columns="batch", values="best_round_ms")
            table.columns = [f"b{b} ms" for b in table.columns]
            print(table.loc[[m for m in ("float", "all-int8", *OBJECTIVES) if m in table.index]]
                  .round(2).to_string())


if __name__ == "__main__":
    main()
