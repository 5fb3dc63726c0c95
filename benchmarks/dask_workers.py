"""Auto calibration in this process against a Dask LocalCluster of worker processes on this machine.

Run: python benchmarks/dask_workers.py [--workers 2] [--max-drop 0.002] [--eval-num N] [--repeat 1]
(NBQUANT_MODEL / NBQUANT_DATA; needs the dask extra). Prints wall time of each way (the cluster's
start-up timed apart), the overhead of the workers and whether both runs ended on the same
configuration, metrics and record. On one machine the workers share its cores with nothing
gained: this measures the cost of shipping models and shards, which a real cluster pays too.
The header names this CPU's int8 verdict.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from common import machine, model_and_data, parser

from nbquant.data.images import ImageDataset
from nbquant.evaluation.executors import open_pool
from nbquant.search.auto import AutoSettings, auto_calibrate


def _record(result) -> dict:
    record = json.loads(result.paths.record.read_text())
    for step in record["steps"]:
        step.pop("seconds")
    return record


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-drop", type=float, default=0.002)
    p.add_argument("--eval-num", type=int, default=None)
    p.add_argument("--repeat", type=int, default=1, help="runs of each way; the fastest is reported")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    settings = AutoSettings(max_drop=args.max_drop, eval_num=args.eval_num)
    images = args.eval_num or len(data)
    print(f"machine: {machine()}\n{images} evaluation images, max drop {args.max_drop}")
    start = time.perf_counter()
    pool = open_pool(workers=args.workers)
    print(f"LocalCluster of {args.workers} workers started in {time.perf_counter() - start:.1f} s "
          f"({pool.threads} onnxruntime thread(s) each); dashboard {pool.dashboard_link}")
    runs = {}
    try:
        for name, executor in (("in-process", None), (f"{args.workers} workers", pool)):
            walls = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    result = auto_calibrate(model_path, data, save_dir=Path(tmp), settings=settings, progress=False,
                                            executor=executor)
                    walls.append(time.perf_counter() - start)
                    record = _record(result)
            runs[name] = (result, min(walls), record)
    finally:
        pool.close()
    (here, here_wall, here_record), (there, there_wall, there_record) = runs.values()
    print(f"{'run':>12s} {'wall s':>7s} {'int8':>6s} {'evals':>5s} {'images':>7s}  final")
    for name, (result, wall, _) in runs.items():
        n = result.n_layers
        print(f"{name:>12s} {wall:7.1f} {n - len(result.float_layers):3d}/{n:<2d} {result.evaluations:5d} "
              f"{result.images_evaluated:7d}  {result.final_metric}")
    same = (here.float_layers == there.float_layers and here.final_metric == there.final_metric
            and here_record == there_record)
    print(f"overhead of the workers: {there_wall / here_wall - 1:+.1%}; same configuration, metrics and record: "
          f"{same}")


if __name__ == "__main__":
    main()
