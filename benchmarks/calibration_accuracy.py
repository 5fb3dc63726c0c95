"""Calibration time, quantized accuracy and evaluation memory on the real model and images.

Run: python benchmarks/calibration_accuracy.py  (NBQUANT_MODEL / NBQUANT_DATA)
Prints, per activation method and weight granularity: calibration seconds (100 images) and
top-1 of the float, fake-quant and deploy models on all images; then the peak RSS of a child
process that evaluates the float model on all images (VmHWM from /proc/self/status).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, model_and_data, parser

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.images import ImageDataset
from nbquant.evaluation.accuracy import evaluate

# VmHWM is the child's own peak RSS; ru_maxrss would carry over the parent's peak across fork+exec.
EVAL_CHILD = """
import sys
from nbquant.data.images import ImageDataset
from nbquant.evaluation.accuracy import evaluate
r = evaluate(sys.argv[1], ImageDataset(sys.argv[2]), progress=False)
hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]
print(r.top1, r.n, hwm)
"""


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--methods", default="mse",
                   help="comma-separated activation methods (e.g. minmax,mse,percentile,kl)")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    print(f"machine: {machine()}; {len(data)} evaluation images, 100 calibration images")
    start = time.perf_counter()
    float_top1 = evaluate(model_path, data, progress=False).top1
    print(f"float top-1 {float_top1:.4f} ({time.perf_counter() - start:.1f} s)")
    print(f"{'weights':11s} {'method':10s} {'calib s':>8s} {'fake-quant':>10s} {'deploy':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for per_channel in (True, False):
            for method in args.methods.split(","):
                settings = CalibrationSettings(act_method=method, per_channel=per_channel)
                run = calibrate(model_path, data, Path(tmp) / method, settings, progress=False)
                fake = evaluate(run.fake_quant_model, data, progress=False).top1
                deploy = evaluate(run.deploy_model, data, progress=False).top1
                label = "per-channel" if per_channel else "per-tensor"
                print(f"{label:11s} {method:10s} {run.seconds:8.1f} {fake:10.4f} {deploy:8.4f}", flush=True)
    out = subprocess.run([sys.executable, "-c", EVAL_CHILD, model_path, data_dir], capture_output=True,
                         text=True, check=True).stdout.split()
    print(f"evaluate {out[1]} images in a child process: top-1 {float(out[0]):.4f}, "
          f"peak RSS {int(out[2]) / 1024:.0f} MB")


if __name__ == "__main__":
    main()
