"""Exact early decisions against full evaluations: images evaluated over a whole auto calibration.

Run: python benchmarks/early_decisions.py [--max-drops 0.002,0.005] [--deploy-target auto]
(NBQUANT_MODEL / NBQUANT_DATA). For each budget, the same search twice, with and without early
decisions: evaluations, images run through a model (the float model included), wall time, and
whether both ended on the same configuration with the same verdict at every step. The header
names this CPU's int8 verdict.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import machine, model_and_data, parser

from nbquant.calibration.run import CalibrationSettings
from nbquant.data.images import ImageDataset
from nbquant.search.auto import AutoSettings, auto_calibrate


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--max-drops", default="0.002,0.005")
    p.add_argument("--deploy-target", default="auto")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    print(f"machine: {machine()}; {len(data)} evaluation images; deploy target {args.deploy_target}")
    print(f"{'max drop':>8s} {'early':>5s} {'int8':>6s} {'evals':>5s} {'decided early':>13s} {'images':>7s} "
          f"{'saved':>6s} {'wall s':>7s}  same steps and result")
    for max_drop in (float(d) for d in args.max_drops.split(",")):
        runs = {}
        for early in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                result = auto_calibrate(model_path, data, save_dir=Path(tmp), progress=False,
                                        settings=AutoSettings(max_drop=max_drop, early_decisions=early),
                                        calib_settings=CalibrationSettings(deploy_target=args.deploy_target))
                runs[early] = (result, time.perf_counter() - start)
        full = runs[False][0]
        for early, (result, wall) in runs.items():
            steps, full_steps = result.history["float_layers"].map(tuple), full.history["float_layers"].map(tuple)
            same = (result.float_layers == full.float_layers and steps.tolist() == full_steps.tolist()
                    and result.history["ok"].tolist() == full.history["ok"].tolist())
            n = result.n_layers
            saved = 1 - result.images_evaluated / full.images_evaluated
            print(f"{max_drop:8g} {str(early):>5s} {n - len(result.float_layers):3d}/{n:<2d} {result.evaluations:5d} "
                  f"{int(result.history['decided_early'].fillna(False).astype(bool).sum()):13d} "
                  f"{result.images_evaluated:7d} {saved:6.0%} {wall:7.1f}  {same}", flush=True)


if __name__ == "__main__":
    main()
