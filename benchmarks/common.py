"""Shared helpers of the benchmark scripts: model/data from settings, a quiet CLI, timing."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort

from nbquant import settings


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None, help="ONNX model (default $NBQUANT_MODEL)")
    p.add_argument("--data", default=None, help="image folder (default $NBQUANT_DATA)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="onnxruntime threads")
    return p


def model_and_data(args):
    return (args.model or str(settings.model_path())), (args.data or str(settings.data_dir()))


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"onnxruntime {ort.__version__}, numpy {np.__version__}")


def latency_ms(model, batch: int, threads: int, runs: int | None = None, shape=(3, 224, 224)) -> float:
    """Median wall time of one inference at ``batch``, after warm-up (all graph optimizations)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
    runs = runs or (50 if batch == 1 else 8)
    for _ in range(3):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
