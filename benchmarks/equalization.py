"""Cross-layer equalization: all-int8 top-1 with and without it, per-tensor and per-channel weights.

Run: python benchmarks/equalization.py [--models lite0,lite1] [--calib-num 100] [--no-latency]
[--cache /tmp/nbquant-equalization]
(lite0 is $NBQUANT_MODEL / $NBQUANT_DATA, else the shared model and photos; lite1 is built from its pip
weights with ``nbquant.zoo`` into ``--cache``, see benchmarks/strategies.py.)
Per model: the float top-1, then per weight granularity and equalization off / on (high-bias absorption
included): calibration seconds, top-1 of the fake-quant and deploy models on every photo, the median and
largest weight spread of the quantized layers (largest channel max|w| over the median channel's; per-tensor
weights lose about that factor of resolution on the median channel), the integer kernels onnxruntime fuses
the deploy model into and its latency (median ms at batch 1 and 32, models measured in turn, best of 3
rounds). The header names this CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import integer_kernels, interleaved_latency, machine
from strategies import lite

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.evaluation.accuracy import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lite0", help="comma-separated: lite0, lite1, lite2")
    p.add_argument("--calib-num", type=int, default=CalibrationSettings().calib_num)
    p.add_argument("--no-latency", dest="latency", action="store_false", default=True)
    p.add_argument("--cache", default="/tmp/nbquant-equalization", help="built zoo models")
    args = p.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    for variant in args.models.split(","):
        model_path, data, _, _ = lite(variant, cache)
        float_top1 = evaluate(model_path, data, progress=False).top1
        print(f"\n{variant} ({model_path}): float top-1 {float_top1:.4f} on {len(data)} photos, "
              f"{args.calib_num} calibration photos")
        print(f"{'weights':11s} {'CLE':4s} {'calib s':>7s} {'fake-quant':>10s} {'deploy':>7s} "
              f"{'spread median':>13s} {'max':>6s}  integer kernels")
        deploys = {}
        with tempfile.TemporaryDirectory() as tmp:
            for per_channel in (False, True):
                for equalize in ("off", "on"):
                    label = f"{'per-channel' if per_channel else 'per-tensor':11s} {equalize:4s}"
                    settings = CalibrationSettings(calib_num=args.calib_num, per_channel=per_channel,
                                                   equalize=equalize)
                    start = time.perf_counter()
                    run = calibrate(model_path, data, Path(tmp) / label.replace(" ", ""), settings,
                                    progress=False, cache=Path(tmp) / "cache")
                    seconds = time.perf_counter() - start
                    fake = evaluate(run.fake_quant_model, data, progress=False).top1
                    deploy = evaluate(run.deploy_model, data, progress=False).top1
                    spread = run.layers["weight_spread"]
                    kernels = integer_kernels(run.paths.deploy_model, Path(tmp))
                    print(f"{label} {seconds:7.1f} {fake:10.4f} {deploy:7.4f} {np.median(spread):13.2f} "
                          f"{spread.max():6.1f}  {kernels}", flush=True)
                    deploys[label] = run.paths.deploy_model
            if args.latency:
                chw = data_shape(model_path)
                feeds = {b: np.random.default_rng(0).normal(size=(b, *chw)).astype(np.float32) for b in (1, 32)}
                ms = {b: interleaved_latency(deploys, feeds[b], 50 if b == 1 else 8) for b in (1, 32)}
                print(f"{'deploy model':16s} {'batch 1 ms':>10s} {'batch 32 ms':>11s}")
                for label in deploys:
                    print(f"{label:16s} {ms[1][label]:10.2f} {ms[32][label]:11.1f}")


def data_shape(model_path) -> tuple[int, ...]:
    """The model's input shape without the batch (C, H, W)."""
    from nbquant.graph.load import load_model
    dims = load_model(model_path).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims[1:])


if __name__ == "__main__":
    main()
