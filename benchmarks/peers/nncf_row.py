"""OpenVINO NNCF rows: nncf.quantize_with_accuracy_control on the ONNX model (ONNX backend).

Defaults except what the setting fixes: preset (performance for CNNs), fast bias correction,
target device ANY, ranking on ``subset_size`` items. Calibration on the 100 calibration
images (``subset_size=100``); validation on the evaluation images, one item per image, and the
validation function returns per-image correctness too, as NNCF's docs advise (so its ranking
reuses it instead of collecting raw outputs). Per-tensor weights go through
``AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(per_channel=False))``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx
from peerlib import SETTINGS, Counter, Data, correct_per_image


def versions() -> dict:
    import nncf
    import onnxruntime
    return {"nncf": nncf.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__}


def run(data: Data, tool: str, setting: str, out_dir: Path) -> dict:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    logging.getLogger("nncf").setLevel(logging.INFO)
    per_channel, max_drop = SETTINGS[setting]
    model = onnx.load(data.model_path)
    counter = Counter(len(data.labels))
    seen = {}

    def transform_calib(i):
        return {data.input_name: np.ascontiguousarray(data.calib[i:i + 1])}

    def transform_eval(i):
        return {data.input_name: np.ascontiguousarray(data.eval[i:i + 1])}

    def validate(model_proto, items):
        start = time.perf_counter()
        idx = np.fromiter(items, dtype=np.int64)
        correct = correct_per_image(model_proto, data.eval[idx] if len(idx) < len(data.labels) else data.eval,
                                    data.labels[idx], data.input_name)
        counter.add(len(idx), time.perf_counter() - start)
        if len(idx) == len(data.labels):
            seen.setdefault("metrics", []).append(float(correct.mean()))
        return float(correct.mean()), [float(c) for c in correct]

    calibration = nncf.Dataset(list(range(len(data.calib))), transform_calib)
    validation = nncf.Dataset(list(range(len(data.labels))), transform_eval)
    advanced = None
    if not per_channel:
        advanced = AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=False))
    start = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        model, calibration, validation, validate, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(data.calib), advanced_quantization_parameters=advanced)
    wall = time.perf_counter() - start
    path = out_dir / "nncf_quantized.onnx"
    onnx.save(quantized, str(path))
    metrics = seen.get("metrics", [])
    original = metrics[0] if metrics else None
    final = metrics[-1] if len(metrics) > 1 else None  # last full validation NNCF ran
    return {
        "ok": True, "met": (original - final <= max_drop + 1e-9) if final is not None else None,
        "wall_s": round(wall, 1), "original_metric": original, "final_metric": final,
        **counter.as_dict(), "model": str(path),
        "config": {"max_drop": max_drop, "drop_type": "ABSOLUTE", "per_channel": per_channel,
                   "subset_size": len(data.calib), "preset": "default (performance)"},
        "note": "final top-1 = NNCF's last full validation (of the model it returned)",
    }
