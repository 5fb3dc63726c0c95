"""The structure matrix of "Bring your own model": what nbquant quantizes in each and how it runs.

Run: python benchmarks/structures.py  (NBQUANT_DATA for the photos; the models are the small
random-weight builders of tests/structures.py). Per structure: quantizable layers by kernel
kind, the integer kernels onnxruntime runs the deploy model on (its optimized graph), the deploy
model's top-1 agreement with float on 96 photos, and an auto calibration at max drop 0.02 of
agreement. The header names this CPU's int8 verdict.
"""

from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path

import onnx
from common import integer_kernels, machine, model_and_data, parser

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.images import ImageDataset
from nbquant.evaluation.accuracy import predictions
from nbquant.evaluation.metrics import agreement
from nbquant.search.auto import AutoSettings, auto_calibrate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from structures import STRUCTURES


def main() -> None:
    args = parser(__doc__).parse_args()
    _, data_dir = model_and_data(args)
    images = ImageDataset(data_dir).spread(96)
    calib = CalibrationSettings(calib_num=16, batch_size=8)
    print(f"machine: {machine()}")
    print("| structure | layers by kind | integer kernels (deploy) | deploy agreement | auto at 0.02: int8, evals |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in STRUCTURES.items():
            folder = Path(tmp) / name
            folder.mkdir()
            path = folder / f"{name}.onnx"
            onnx.save(build(), path)
            run = calibrate(path, images, folder / "run", calib, progress=False)
            kinds = collections.Counter(layer.kind for layer in run.prepared.layers)
            fidelity = agreement(predictions(run.deploy_model, images, progress=False), None,
                                 predictions(path, images, progress=False))
            auto = auto_calibrate(path, images, save_dir=folder / "auto", calib_settings=calib, progress=False,
                                  settings=AutoSettings(metric="agreement", max_drop=0.02, rank_num=8, max_evals=8))
            n = len(auto.ranking)
            print(f"| {name} | {', '.join(f'{v} {k}' for k, v in kinds.items())} | "
                  f"{integer_kernels(run.paths.deploy_model, folder)} | {fidelity:.3f} | "
                  f"{n - len(auto.float_layers) if auto.ok else 0}/{n}, {auto.evaluations} |", flush=True)


if __name__ == "__main__":
    main()
