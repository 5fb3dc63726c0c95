"""Intel Neural Compressor 2.x rows: neural_compressor.quantization.fit, onnxrt backend.

Static post-training quantization with the default tuning (``quant_level="auto"``: the
``auto`` strategy, which tries the default config then ``basic``; max_trials 100, timeout 0 =
stop at the first configuration that meets the target), default quant format
(QOperator: QLinearConv/QGemm), default activation tuning space, an absolute
``tolerable_loss``. The setting fixes Conv/Gemm weight granularity through ``op_type_dict``
(INC would otherwise also try the other granularity). 100 calibration images in batches of
10; ``eval_func`` computes top-1 on the evaluation images.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx
from peerlib import SETTINGS, Counter, Data, top1


def versions() -> dict:
    import neural_compressor
    import onnxruntime
    return {"neural-compressor": neural_compressor.__version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "numpy": np.__version__}


class CalibLoader:
    """What INC's onnxrt adaptor needs of a calibration dataloader: batch_size, batch(), (x, label)."""

    def __init__(self, images: np.ndarray, batch_size: int = 10):
        self.images, self.batch_size = images, batch_size

    def batch(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def __iter__(self):
        for start in range(0, len(self.images), self.batch_size):
            x = np.ascontiguousarray(self.images[start:start + self.batch_size])
            yield x, np.zeros(len(x), np.int64)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)


class _ErrorLog(logging.Handler):
    """Keeps the ERROR lines INC logs: fit() swallows exceptions and returns None."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])


def run(data: Data, tool: str, setting: str, out_dir: Path) -> dict:
    from neural_compressor import quantization
    from neural_compressor.config import AccuracyCriterion, PostTrainingQuantConfig

    errors = _ErrorLog()
    logging.getLogger("neural_compressor").addHandler(errors)

    per_channel, max_drop = SETTINGS[setting]
    counter = Counter(len(data.labels))
    metrics: list[float] = []

    def eval_func(model) -> float:
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        value = top1(proto, data.eval, data.labels, counter)
        metrics.append(value)
        return value

    granularity = ["per_channel"] if per_channel else ["per_tensor"]
    conf = PostTrainingQuantConfig(
        approach="static", calibration_sampling_size=[len(data.calib)],
        op_type_dict={op: {"weight": {"granularity": granularity}} for op in ("Conv", "Gemm")},
        accuracy_criterion=AccuracyCriterion(higher_is_better=True, criterion="absolute",
                                             tolerable_loss=max_drop))
    model = onnx.load(data.model_path)
    start = time.perf_counter()
    q = quantization.fit(model, conf, calib_dataloader=CalibLoader(data.calib), eval_func=eval_func)
    wall = time.perf_counter() - start
    if q is None:
        if errors.messages and len(metrics) <= 1:
            raise RuntimeError(f"quantization.fit quantized no model: {errors.messages[0]}")
        return {"ok": True, "met": False, "wall_s": round(wall, 1),
                "original_metric": metrics[0] if metrics else None, "final_metric": None,
                **counter.as_dict(), "model": None,
                "note": f"fit returned no model: no configuration met the target in {len(metrics)} evaluations"}
    path = out_dir / "inc_quantized.onnx"
    q.save(str(path)) if hasattr(q, "save") else onnx.save(q, str(path))
    original = metrics[0] if metrics else None
    final = metrics[-1] if len(metrics) > 1 else None
    return {
        "ok": True, "met": (original - final <= max_drop + 1e-9) if final is not None else None,
        "wall_s": round(wall, 1), "original_metric": original, "final_metric": final,
        **counter.as_dict(), "model": str(path),
        "config": {"tolerable_loss": max_drop, "criterion": "absolute", "strategy": "default (auto)",
                   "weight_granularity": granularity[0], "calibration_sampling_size": len(data.calib)},
        "note": "final top-1 = INC's last evaluation (timeout 0 stops at the first passing one)",
    }
