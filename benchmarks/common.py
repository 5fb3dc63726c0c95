"""Shared helpers of the benchmark scripts: model/data from settings, a quiet CLI, timing."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from nbquant import settings
from nbquant.evaluation.session import fused_ops
from nbquant.notebook.tables import measure_latency
from nbquant.quantize.cpu_probe import probe_int8


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None, help="ONNX model (default $NBQUANT_MODEL)")
    p.add_argument("--data", default=None, help="image folder (default $NBQUANT_DATA)")
    return p


def model_and_data(args):
    return (args.model or str(settings.model_path())), (args.data or str(settings.data_dir()))


def machine() -> str:
    """Cores, library versions and this CPU's int8 flags with the probe's verdict (every figure names it)."""
    return (f"{os.cpu_count()} cores, onnxruntime {ort.__version__}, numpy {np.__version__}; "
            f"cpu: {probe_int8().describe()}")


def latency_ms(model, batch: int, runs: int | None = None, shape=(3, 224, 224)) -> float:
    """Median wall time (ms) of one inference at ``batch`` with onnxruntime's default fusions."""
    x = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
    return measure_latency(model, x, runs or (50 if batch == 1 else 8))


INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "QLinearAdd", "ConvInteger", "MatMulInteger", "QAttention", "DynamicQuantizeLinear")


def integer_kernels(model_path: Path, folder: Path) -> str:
    """The integer kernels onnxruntime runs ``model_path`` on, counted in its optimized graph."""
    ops = fused_ops(model_path, folder)
    return ", ".join(f"{ops[op]} {op}" for op in INTEGER_OPS if ops[op]) or "none"


def interleaved_latency(models: dict, feed, runs: int, rounds: int = 3) -> dict:
    """Median ms of one run of each model on ``feed``, measured in ``rounds`` rounds that take the models in
    turn, best round kept: a model measured while the machine was busy gets another chance, and slow
    drifts of the machine's speed do not favour the models measured first."""
    best = {name: float("inf") for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best[name], measure_latency(str(model), feed, runs))
    return best
