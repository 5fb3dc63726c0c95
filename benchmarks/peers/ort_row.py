"""The do-it-yourself rows: onnxruntime quantize_static plus nodes_to_exclude from qdq_loss_debug.

1. ``quant_pre_process``, then ``quantize_static`` (QDQ, uint8 activations, int8 weights, MinMax
   on the 100 calibration images; ``per_channel`` from the setting); evaluate float and int8.
2. If the drop is too big: ``qdq_loss_debug`` on ``DEBUG_IMAGES`` calibration images
   (``modify_model_output_intermediate_tensors`` + ``collect_activations`` for both models,
   ``create_activation_matching`` / ``compute_activation_error`` and ``create_weight_matching`` /
   ``compute_weight_error``). Each Conv/Gemm/MatMul gets the SQNR of its own quantization noise:
   its input activation's ``qdq_err`` (pre-quantization tensor clipped to the quantizer's range,
   see rank_nodes) and its weight's error, combined as noise powers. Lowest SQNR first.
3. Greedy: exclude the next node of that ranking, re-run ``quantize_static`` with
   ``nodes_to_exclude`` (it re-calibrates: the API has no way to reuse ranges), evaluate; stop at
   the first model that meets the target.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import onnx
from peerlib import SETTINGS, Counter, Data, top1

DEBUG_IMAGES = 16
CALIB_BATCH = 10


def versions() -> dict:
    import onnxruntime
    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__}


def _reader(images: np.ndarray, name: str, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = ({name: np.ascontiguousarray(images[s:s + batch])} for s in range(0, len(images), batch))

        def get_next(self):
            return next(self.it, None)

        def __iter__(self):  # collect_activations iterates the reader
            return iter(self.get_next, None)

    return Reader()


def _quantize(prepped: Path, out: Path, data: Data, per_channel: bool, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(prepped), str(out), _reader(data.calib, data.input_name, CALIB_BATCH),
                    quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))


def rank_nodes(prepped: Path, qdq: Path, data: Data, work: Path) -> list[tuple[str, float]]:
    """(node, SQNR dB of its input's and weight's quantization noise), most damaged first.

    ``quantize_static`` folds a Clip/Relu that follows a Conv into the Conv output's quantizer,
    so the tensor before QuantizeLinear is the unclipped Conv output and qdq_loss_debug's raw
    ``qdq_err`` counts ReLU6 itself as quantization noise (0.4 dB for every project conv). The
    pre-quantization tensor is therefore clipped to the quantizer's range first; the SQNR is
    qdq_loss_debug's own ``compute_signal_to_quantization_noice_ratio``.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    images = data.calib[:DEBUG_IMAGES]
    acts = {}
    for label, path in (("float", prepped), ("qdq", qdq)):
        aug = work / f"debug_{label}.onnx"
        modify_model_output_intermediate_tensors(str(path), str(aug))
        acts[label] = collect_activations(str(aug), _reader(images, data.input_name, 8))
        aug.unlink(missing_ok=True)
    matching = create_activation_matching(acts["qdq"], acts["float"])
    del acts
    qdq_graph = onnx.load(str(qdq)).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq_graph.initializer}
    ranges = {}
    for node in qdq_graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits:
            scale = inits[node.input[1]].astype(np.float64)
            zp = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else np.zeros(1, np.uint8)
            info = np.iinfo(zp.dtype)
            ranges[node.input[0]] = (float(scale.ravel()[0] * (info.min - int(zp.ravel()[0]))),
                                     float(scale.ravel()[0] * (info.max - int(zp.ravel()[0]))))
    weight_err = compute_weight_error(create_weight_matching(str(prepped), str(qdq)))
    scores = []
    for node in onnx.load(str(prepped)).graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        a = None
        match = matching.get(node.input[0])
        if match is not None:
            lo, hi = ranges.get(node.input[0], (-np.inf, np.inf))
            pre = [np.clip(x, lo, hi) for x in match["pre_qdq"]]
            a = compute_signal_to_quantization_noice_ratio(pre, match["post_qdq"])
        w = weight_err.get(node.input[1])
        if a is None and w is None:
            continue
        noise = sum(10 ** (-db / 10) for db in (a, w) if db is not None and math.isfinite(db))
        scores.append((node.name, -10 * math.log10(noise) if noise > 0 else float("inf")))
    return sorted(scores, key=lambda t: t[1])


def run(data: Data, tool: str, setting: str, out_dir: Path) -> dict:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    per_channel, max_drop = SETTINGS[setting]
    counter = Counter(len(data.labels))
    start = time.perf_counter()
    prepped, qdq = out_dir / "pre.onnx", out_dir / "ort_qdq.onnx"
    quant_pre_process(data.model_path, str(prepped), skip_symbolic_shape=True)
    original = top1(str(prepped), data.eval, data.labels, counter)
    _quantize(prepped, qdq, data, per_channel, [])
    metric = top1(str(qdq), data.eval, data.labels, counter)
    history = [(0, metric)]
    excluded: list[str] = []
    ranking: list = []
    if original - metric > max_drop:
        ranking = rank_nodes(prepped, qdq, data, out_dir)
        for name, _ in ranking:
            excluded.append(name)
            _quantize(prepped, qdq, data, per_channel, excluded)
            metric = top1(str(qdq), data.eval, data.labels, counter)
            history.append((len(excluded), metric))
            print(f"  ort: {len(excluded)} excluded, top-1 {metric:.3f}", flush=True)
            if original - metric <= max_drop:
                break
    wall = time.perf_counter() - start
    met = original - metric <= max_drop + 1e-9
    return {
        "ok": True, "met": bool(met), "wall_s": round(wall, 1), "original_metric": original,
        "final_metric": metric, **counter.as_dict(), "model": str(qdq),
        "excluded": excluded, "history": history, "ranking": ranking[:20],
        "config": {"per_channel": per_channel, "max_drop": max_drop, "activation": "QUInt8", "weight": "QInt8",
                   "calibrate_method": "MinMax", "debug_images": DEBUG_IMAGES},
        "note": "float top-1 measured on the pre-processed float model; each step re-calibrates",
    }
