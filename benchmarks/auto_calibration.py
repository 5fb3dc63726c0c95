"""Full auto calibration runs on the real model: wall time, evaluations, layers in int8, top-1.

Run: python benchmarks/auto_calibration.py  (NBQUANT_MODEL / NBQUANT_DATA; 100 calibration
images, every image for evaluation). Settings: per-channel weights at max drop 0.002 with the
default strategy and with `binary`, per-tensor weights at 0.01, each with the deploy target
auto picks for this CPU; the -portable and -full settings force one. Add --settings to choose.
The header names this CPU's int8 flags and probe verdict.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import machine, model_and_data, parser

from nbquant.calibration.run import CalibrationSettings
from nbquant.data.images import ImageDataset
from nbquant.evaluation.accuracy import evaluate
from nbquant.search.auto import AutoSettings, auto_calibrate

SETTINGS = {  # per-channel, max drop, strategy, sensitivity, deploy target
    "pc-0.002": (True, 0.002, "refine", "output", "auto"),
    "pc-0.002-portable": (True, 0.002, "refine", "output", "portable"),
    "pc-0.002-full": (True, 0.002, "refine", "output", "full"),
    "pc-0.002-binary": (True, 0.002, "binary", "output", "auto"),
    "pc-0.002-binary-cosine": (True, 0.002, "binary", "cosine", "auto"),
    "pc-0.005": (True, 0.005, "refine", "output", "auto"),
    "pc-0.005-portable": (True, 0.005, "refine", "output", "portable"),
    "pt-0.01": (False, 0.01, "refine", "output", "auto"),
}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--settings", default="pc-0.002,pc-0.002-portable,pc-0.002-binary,pt-0.01",
                   help=f"comma-separated, from {', '.join(SETTINGS)}")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    print(f"machine: {machine()}; {len(data)} evaluation images, 100 calibration images")
    print(f"{'setting':24s} {'met':>4s} {'int8':>6s} {'evals':>5s} {'wall s':>7s} {'float':>6s} "
          f"{'final':>6s} {'deploy':>6s}  layers in float")
    for name in args.settings.split(","):
        per_channel, max_drop, strategy, sensitivity, target = SETTINGS[name]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = auto_calibrate(model_path, data, save_dir=Path(tmp),
                                    settings=AutoSettings(max_drop=max_drop, strategy=strategy,
                                                          sensitivity=sensitivity),
                                    calib_settings=CalibrationSettings(per_channel=per_channel, deploy_target=target),
                                    progress=False)
            wall = time.perf_counter() - start
            deploy = (evaluate(result.paths.deploy_model, data, progress=False).top1 if result.ok else float("nan"))
        n = len(result.ranking)
        print(f"{name:24s} {str(result.ok):>4s} {n - len(result.float_layers):>3d}/{n:<2d} "
              f"{result.evaluations:5d} {wall:7.1f} {result.original_metric:6.3f} "
              f"{result.final_metric if result.ok else float('nan'):6.3f} {deploy:6.3f}  "
              f"{', '.join(result.float_layers) if result.ok else '-'}", flush=True)


if __name__ == "__main__":
    main()
