"""Full auto calibration runs on the real model: wall time, evaluations, layers in int8, top-1, stages.

Run: python benchmarks/auto_calibration.py  (NBQUANT_MODEL / NBQUANT_DATA; 100 calibration
images, every image for evaluation). Settings (``--settings``, comma-separated, run in that order):
per-channel weights at max drop 0.001, 0.002 and 0.005 with the default strategy, on the deploy target
auto picks for this CPU or a forced one (-portable, -full), `binary`, the `cosine` ranking, per-tensor
weights at 0.01; ``--rank-num`` sets the ranking's images.
Each run starts with an empty cache (cold) unless its name ends in ``-warm``: it then reuses the
cache of the run before it with the same weights and target (a new budget after a first run, as a
notebook user moving the slider gets). Per run: one summary row (int8: layers in plain int8; b1 ms:
the final model's latency at batch 1, predicted by the search's cost table / measured), then its
seconds per stage.
The header names this CPU's int8 flags and probe verdict.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

from common import machine, model_and_data, parser

from nbquant.calibration.run import CalibrationSettings
from nbquant.data.images import ImageDataset
from nbquant.evaluation.accuracy import evaluate
from nbquant.search.auto import AutoSettings, auto_calibrate

SETTINGS = {  # per-channel, max drop, strategy (None: the default), sensitivity, deploy target
    "pc-0.002": (True, 0.002, None, "output", "auto"),
    "pc-0.002-portable": (True, 0.002, None, "output", "portable"),
    "pc-0.002-full": (True, 0.002, None, "output", "full"),
    "pc-0.002-refine": (True, 0.002, "refine", "output", "auto"),
    "pc-0.002-binary": (True, 0.002, "binary", "output", "auto"),
    "pc-0.002-binary-cosine": (True, 0.002, "binary", "cosine", "auto"),
    "pc-0.005": (True, 0.005, None, "output", "auto"),
    "pc-0.001": (True, 0.001, None, "output", "auto"),
    "pc-0.002-cosine": (True, 0.002, None, "cosine", "auto"),
    "pc-0.002-portable-cosine": (True, 0.002, None, "cosine", "portable"),
    "pc-0.001-cosine": (True, 0.001, None, "cosine", "auto"),
    "pc-0.005-portable": (True, 0.005, None, "output", "portable"),
    "pt-0.01": (False, 0.01, None, "output", "auto"),
}
DEFAULT = "pc-0.002,pc-0.005-warm,pc-0.005,pc-0.002-portable,pc-0.005-portable-warm,pt-0.01"


def lookup(name: str):
    """The settings of ``name`` (a SETTINGS key, optionally with ``-warm``) and whether it is warm."""
    warm = name.endswith("-warm")
    key = name[:-len("-warm")] if warm else name
    if key not in SETTINGS:
        raise SystemExit(f"unknown setting {name!r}; choose from {', '.join(SETTINGS)} (each may end in -warm)")
    return SETTINGS[key], warm


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--settings", default=DEFAULT, help=f"comma-separated, from {', '.join(SETTINGS)}, "
                   "each optionally with -warm")
    p.add_argument("--no-stages", action="store_true", help="summary rows only")
    p.add_argument("--rank-num", type=int, default=AutoSettings.rank_num, help="ranking images")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    print(f"machine: {machine()}; {len(data)} evaluation images, 100 calibration images")
    header = (f"{'setting':24s} {'met':>4s} {'int8':>6s} {'evals':>5s} {'wall s':>7s} {'float':>6s} "
              f"{'final':>6s} {'deploy':>6s} {'b1 ms':>11s}  layers in float (other states)")
    caches: dict[tuple, Path] = {}
    with tempfile.TemporaryDirectory() as root:
        for number, name in enumerate(args.settings.split(",")):
            (per_channel, max_drop, strategy, sensitivity, target), warm = lookup(name)
            group = (per_channel, target)
            if not warm or group not in caches:
                caches[group] = Path(root) / f"cache-{number}"
            auto = AutoSettings(max_drop=max_drop, sensitivity=sensitivity, rank_num=args.rank_num,
                                **({"strategy": strategy} if strategy else {}))
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                result = auto_calibrate(model_path, data, save_dir=Path(tmp), settings=auto, cache=caches[group],
                                        calib_settings=CalibrationSettings(per_channel=per_channel,
                                                                           deploy_target=target),
                                        progress=False)
                wall = time.perf_counter() - start
                deploy = (evaluate(result.paths.deploy_model, data, progress=False).top1 if result.ok
                          else float("nan"))
            n = result.n_layers
            latency = result.latency or {}
            others = "".join(f", {layer} ({state})" for layer, state in result.states.items())
            print(header)
            print(f"{name:24s} {str(result.ok):>4s} {n - len(result.float_layers) - len(result.states):>3d}/{n:<2d} "
                  f"{result.evaluations:5d} {wall:7.1f} {result.original_metric:6.3f} "
                  f"{result.final_metric if result.ok else float('nan'):6.3f} {deploy:6.3f} "
                  f"{latency.get('predicted_ms', float('nan')):5.2f}/{latency.get('measured_ms', float('nan')):5.2f}  "
                  f"{', '.join(result.float_layers) if result.ok else '-'}{others}", flush=True)
            if not args.no_stages:
                print(result.stage_times.to_string(index=False), "\n", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
