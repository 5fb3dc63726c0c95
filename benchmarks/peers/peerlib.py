"""What every row of compare_peers.py shares; imports only numpy, onnx and onnxruntime.

A row runs in its own interpreter (nbquant's venv or the peers' venv), reads the images that
compare_peers.py preprocessed once with nbquant (``<work>/data/*.npy``), and writes one JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

THREADS = 2
BATCH = 32
# weighted layers of the float graph and their integer forms in quantized graphs
FLOAT_LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
INT8_LAYER_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                  "DynamicQuantizeMatMul", "QLinearConvTranspose", "FusedConv"}
# ops a DequantizeLinear may pass through on its way to a layer's weight input
WEIGHT_PASS_OPS = {"Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten"}

SETTINGS = {  # name: (per_channel, max_drop)
    "pc-0.002": (True, 0.002),
    "pc-0.005": (True, 0.005),
    "pt-0.01": (False, 0.01),
}


class Data:
    """Preprocessed calibration and evaluation arrays (memory-mapped) plus labels."""

    def __init__(self, work: Path):
        folder = Path(work) / "data"
        meta = json.loads((folder / "meta.json").read_text())
        self.meta = meta
        self.calib = np.load(folder / "calib.npy", mmap_mode="r")
        self.eval = np.load(folder / "eval.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy")
        self.input_name = meta["input_name"]
        self.model_path = meta["model"]
        self.data_dir = meta["data"]


def session(model, threads: int = THREADS) -> ort.InferenceSession:
    """CPU session with all graph optimizations (QDQ pairs fused into integer kernels)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


class Counter:
    """Counts a tool's calls of its validation function: full-set evaluations and other images."""

    def __init__(self, full_size: int):
        self.full_size = full_size
        self.full = 0
        self.partial_calls = 0
        self.partial_images = 0
        self.seconds = 0.0

    def add(self, n: int, seconds: float) -> None:
        self.seconds += seconds
        if n == self.full_size:
            self.full += 1
        else:
            self.partial_calls += 1
            self.partial_images += n

    def as_dict(self) -> dict:
        return {"full_evaluations": self.full, "partial_calls": self.partial_calls,
                "partial_images": self.partial_images, "evaluation_seconds": round(self.seconds, 1)}


def correct_per_image(model, images: np.ndarray, labels: np.ndarray, input_name: str | None = None,
                      batch: int = BATCH) -> np.ndarray:
    """1.0/0.0 per image: top-1 prediction of ``model`` equals the label."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    name = input_name or sess.get_inputs()[0].name
    out = np.empty(len(labels), np.float32)
    for start in range(0, len(labels), batch):
        logits = sess.run(None, {name: np.ascontiguousarray(images[start:start + batch])})[0]
        out[start:start + batch] = logits.argmax(axis=1) == labels[start:start + batch]
    return out


def top1(model, images: np.ndarray, labels: np.ndarray, counter: Counter | None = None) -> float:
    start = time.perf_counter()
    value = float(correct_per_image(model, images, labels).mean())
    if counter is not None:
        counter.add(len(labels), time.perf_counter() - start)
    return value


def count_layers(model) -> dict:
    """Weighted layers (Conv/ConvTranspose/Gemm/MatMul with a constant weight) of a produced graph.

    A layer is int8 when its op is an integer kernel (QLinearConv, QGemm, ConvInteger, ...), or
    its weight input is an int8/uint8 initializer, or comes from a DequantizeLinear (directly or
    through Transpose/Reshape-like ops). MatMul/Gemm whose both inputs are activations are not
    layers. Counted the same way for every tool, from the graph, not from the tool's log.
    """
    proto = onnx.load(str(model), load_external_data=False) if not isinstance(model, onnx.ModelProto) else model
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:  # Constant nodes count as initializers
        if node.op_type == "Constant" and node.attribute:
            value = [a for a in node.attribute if a.name == "value"]
            if value:
                inits[node.output[0]] = value[0].t
    producer = {out: node for node in graph.node for out in node.output}
    int8_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}

    def weight_kind(name: str, depth: int = 0) -> str | None:
        """'int8', 'float' or None (not a constant weight)."""
        if name in inits:
            return "int8" if inits[name].data_type in int8_types else "float"
        node = producer.get(name)
        if node is None or depth > 4:
            return None
        if node.op_type == "DequantizeLinear":
            return "int8"
        if node.op_type in WEIGHT_PASS_OPS and node.input:
            return weight_kind(node.input[0], depth + 1)
        return None

    names, int8 = [], []
    for node in graph.node:
        if node.op_type in INT8_LAYER_OPS:
            names.append(node.name)
            int8.append(node.name)
        elif node.op_type in FLOAT_LAYER_OPS and len(node.input) > 1:
            kind = weight_kind(node.input[1])
            if kind is None and node.op_type in ("MatMul",):
                kind = weight_kind(node.input[0])
            if kind is None:
                continue
            names.append(node.name)
            if kind == "int8":
                int8.append(node.name)
    return {"layers_int8": len(int8), "layers_total": len(names),
            "float_layers": [n for n in names if n not in set(int8)]}


def paired_latency_ms(model, reference, batch: int, threads: int = THREADS, runs: int | None = None,
                      shape=(3, 224, 224)) -> tuple[float, float]:
    """Median wall time (ms) of one onnxruntime CPU inference of ``model`` and of ``reference``
    at ``batch``, timed in alternating blocks so that drift of the machine hits both alike (the
    first run of each block, which finds the other model's weights in the caches, is dropped)."""
    sessions = [session(model, threads), session(reference, threads)]
    feeds = [{s.get_inputs()[0].name: np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)}
             for s in sessions]
    runs = runs or (200 if batch == 1 else 30)
    block = 20 if batch == 1 else 5
    times: list[list[float]] = [[], []]
    for _ in range(-(-runs // block)):
        for i, (sess, feed) in enumerate(zip(sessions, feeds)):
            sess.run(None, feed)
            for _ in range(block):
                start = time.perf_counter()
                sess.run(None, feed)
                times[i].append(time.perf_counter() - start)
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1])


def write_json(path: Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def error_row(exc: BaseException) -> dict:
    """A row that says what failed: exception type and message, plus the traceback's tail."""
    tail = traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:]
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500], "traceback": "".join(tail)[-3000:]}
