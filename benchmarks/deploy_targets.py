"""Deploy targets and weight rounding on the real model: what 7-bit weights cost, what GPTQ wins back.

Run: python benchmarks/deploy_targets.py  (NBQUANT_MODEL / NBQUANT_DATA)
Prints this CPU's int8 flags and probe verdict, then per deploy target (full: |q| <= 127,
portable: |q| <= 64 on pair-summing layers) and weight rounding (nearest, gptq): calibration
seconds (100 images spread over the folder), top-1 of the fake-quant and deploy models on all
images, and the deploy model's fidelity to the float model (logit SQNR dB, mean softmax KL,
top-1 agreement). onnxruntime's quantize_static (per-channel QDQ, the same calibration images,
with and without reduce_range) is the reference row. A full-range deploy model on a CPU whose
probe fails gives what that CPU computes, not the exact result: read the header line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from common import machine, model_and_data, parser
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.evaluation.accuracy import predictions
from nbquant.evaluation.metrics import mean_kl
from nbquant.evaluation.session import make_session
from nbquant.graph.load import load_model
from nbquant.quantize.numerics import sqnr_db


class Images(CalibrationDataReader):
    def __init__(self, data, pre, name):
        self.batches = iter([{name: b.images[i:i + 1]} for b in data.iter_batches(pre, 10)
                             for i in range(len(b.images))])

    def get_next(self):
        return next(self.batches, None)


def fidelity(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> str:
    top1 = float(np.mean(logits.argmax(1) == labels))
    agree = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    return f"{top1:8.4f} {sqnr_db(reference, logits):7.2f} {mean_kl(reference, logits):8.5f} {agree:6.3f}"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--calib-num", type=int, default=100)
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    pre = resolve_preprocess(load_model(model_path))
    print(f"machine: {machine()}")
    reference = predictions(model_path, data, pre, progress=False)
    labels = data.labels
    print(f"float top-1 {np.mean(reference.argmax(1) == labels):.4f} on {len(data)} images; "
          f"{args.calib_num} calibration images")
    print(f"{'target':9s} {'rounding':8s} {'calib s':>7s} {'fake-quant':>10s} | deploy: {'top-1':>6s} "
          f"{'SQNR dB':>7s} {'KL':>8s} {'agree':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for target in ("full", "portable"):
            for rounding in ("nearest", "gptq"):
                settings = CalibrationSettings(calib_num=args.calib_num, deploy_target=target,
                                               weight_rounding=rounding)
                run = calibrate(model_path, data, Path(tmp) / f"{target}_{rounding}", settings, preprocess=pre,
                                progress=False)
                fake = predictions(run.fake_quant_model, data, pre, progress=False)
                deploy = predictions(run.deploy_model, data, pre, progress=False)
                print(f"{target:9s} {rounding:8s} {run.seconds:7.1f} {np.mean(fake.argmax(1) == labels):10.4f} | "
                      f"{fidelity(reference, deploy, labels)}", flush=True)
        calib = data.spread(args.calib_num)
        name = make_session(model_path).get_inputs()[0].name
        for reduce_range in (False, True):
            out = Path(tmp) / f"ort_{reduce_range}.onnx"
            quantize_static(model_path, out, Images(calib, pre, name), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
            logits = predictions(out, data, pre, progress=False)
            label = "ort 7-bit" if reduce_range else "ort 8-bit"
            print(f"{label:9s} {'nearest':8s} {'':7s} {'':10s} | {fidelity(reference, logits, labels)}", flush=True)


if __name__ == "__main__":
    main()
