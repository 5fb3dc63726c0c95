"""Latency of nbquant's deploy models against the float model and onnxruntime's quantize_static QDQ model.

Run: python benchmarks/deploy_latency.py  (model and images from NBQUANT_MODEL / NBQUANT_DATA)
Prints median latency at batch 1 and 32 and each model's ratio to the float model, for the
portable and full deploy targets, and onnxruntime's best model for this CPU: reduce_range
(7-bit weights) where this CPU's int8 kernels saturate, as onnxruntime recommends, else 8-bit.
The header names the CPU's int8 flags and the probe's verdict.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import latency_ms, machine, model_and_data, parser
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.graph.load import load_model
from nbquant.quantize.cpu_probe import probe_int8


class Reader(CalibrationDataReader):
    def __init__(self, dataset, pre, name):
        self.batches = ({name: b.images} for b in dataset.iter_batches(pre, 10))

    def get_next(self):
        return next(self.batches, None)


def ort_qdq_model(model_path: str, data: ImageDataset, folder: Path, reduce_range: bool) -> Path:
    """onnxruntime's own static QDQ quantization (per-channel int8 weights, uint8 activations)."""
    pre = resolve_preprocess(load_model(model_path))
    prepped, out = folder / "pre.onnx", folder / "ort_qdq.onnx"
    quant_pre_process(model_path, str(prepped), skip_symbolic_shape=True)
    name = load_model(model_path).graph.input[0].name
    quantize_static(str(prepped), str(out), Reader(data, pre, name), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def main() -> None:
    args = parser(__doc__).parse_args()
    model_path, data_dir = model_and_data(args)
    calib = ImageDataset(data_dir).spread(100)
    reduce_range = not probe_int8().exact
    with tempfile.TemporaryDirectory() as tmp:
        models = {"float": model_path}
        for target in ("portable", "full"):
            run = calibrate(model_path, calib, save_dir=Path(tmp) / target, progress=False,
                            settings=CalibrationSettings(calib_num=len(calib), deploy_target=target))
            models[f"nbquant deploy, {target}"] = run.paths.deploy_model
        label = "onnxruntime QDQ" + (" reduce_range" if reduce_range else "")
        models[label] = ort_qdq_model(model_path, calib, Path(tmp), reduce_range)
        print(f"machine: {machine()}")
        rows = {label: {b: latency_ms(m, b) for b in (1, 32)} for label, m in models.items()}
    base = rows["float"]
    print(f"{'model':34s} {'batch 1 ms':>10s} {'ratio':>6s} {'batch 32 ms':>11s} {'ratio':>6s}")
    for label, r in rows.items():
        print(f"{label:34s} {r[1]:10.2f} {r[1] / base[1]:6.2f} {r[32]:11.1f} {r[32] / base[32]:6.2f}")


if __name__ == "__main__":
    main()
