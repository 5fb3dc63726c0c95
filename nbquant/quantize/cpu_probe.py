"""Does this CPU's onnxruntime compute int8 layers exactly? Measured once per process.

On x86 CPUs without VNNI (AVX2, or AVX-512 without ``avx512_vnni``), onnxruntime's u8 x s8
kernels multiply bytes and add the products in pairs into a saturating int16
(``vpmaddubsw``): with full-range int8 weights a pair reaches 2 * 255 * 127 = 64770 and is
clipped at 32767. VNNI, AMX and ARM dot-product kernels add into int32 and are exact.
Flags alone do not say which kernel onnxruntime picks, so :func:`probe_int8` runs tiny QDQ
models of each kernel kind at the top of their ranges, once with graph optimizations off
(QuantizeLinear/DequantizeLinear computed as written: the exact answer) and once with them
on (fused integer kernels), and reports the largest difference in output steps. The dynamic
MatMul probe (DynamicQuantizeLinear + MatMulInteger, what dynamic MatMul layers are) runs the same
saturating kernel even unoptimized, so it is checked against numpy's exact sums instead, in int32
units.
"""

from __future__ import annotations

import functools
import logging
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
ACTIVATION_MAX = 255  # uint8 activations (int8 ones are shifted by 128 into the same range)
INT16_MAX = 32767


def pair_safe_weight_max(activation_max: int = ACTIVATION_MAX, accumulator_max: int = INT16_MAX) -> int:
    """Largest |w| for which no pair ``a0 * w0 + a1 * w1`` can leave the accumulator.

    >>> pair_safe_weight_max()  # 2 * 255 * 64 = 32640 <= 32767 < 2 * 255 * 65
    64
    """
    return accumulator_max // (2 * activation_max)


# probe: (kernel kind as graph.kernel_kind names it, op, group, in channels, out channels, kernel, stride)
PROBES = {
    "conv3x3": ("conv", "Conv", 1, 16, 16, 3, 1),
    "pointwise": ("pointwise", "Conv", 1, 32, 32, 1, 1),
    "grouped3x3": ("grouped", "Conv", 4, 32, 32, 3, 1),
    "depthwise3x3": ("depthwise", "Conv", 32, 32, 32, 3, 1),
    "depthwise5x5s2": ("depthwise", "Conv", 32, 32, 32, 5, 2),
    "gemm": ("gemm", "Gemm", 1, 64, 32, 1, 1),
    "matmul": ("matmul", "MatMul", 1, 64, 32, 1, 1),
    "matmul_dynamic": ("matmul", "MatMulInteger", 1, 64, 32, 1, 1),
}


@dataclass(frozen=True)
class KernelCheck:
    """One probe: its kernel kind, the fused op onnxruntime ran, and its largest error in output
    steps with full-range (|w| = 127) and pair-safe (|w| = 64) weights."""

    probe: str
    kind: str
    kernel: str
    steps_full: float
    steps_pair_safe: float

    @property
    def exact(self) -> bool:
        return self.steps_full == 0


@dataclass(frozen=True)
class Int8Report:
    """This machine's int8 facts: CPU flags and, per kernel kind, whether onnxruntime is exact."""

    machine: str
    processor: str
    onnxruntime: str
    flags: tuple[str, ...]
    checks: tuple[KernelCheck, ...]

    @property
    def inexact_kinds(self) -> list[str]:
        """Kernel kinds whose full-range int8 results differ from the exact ones on this CPU."""
        return list(dict.fromkeys(c.kind for c in self.checks if not c.exact))

    @property
    def exact(self) -> bool:
        return not self.inexact_kinds

    def is_exact(self, kind: str) -> bool:
        """Whether every probe of kernel ``kind`` was exact (True for kinds not probed, such as
        conv_transpose, which onnxruntime runs in float)."""
        return all(c.exact for c in self.checks if c.kind == kind)

    @property
    def verdict(self) -> str:
        if self.exact:
            return "full-range int8 exact"
        worst = ", ".join(f"{c.probe} {c.steps_full:g}" for c in self.checks if not c.exact)
        if any(c.steps_pair_safe for c in self.checks):
            return f"int8 INEXACT even with |q| <= 64 ({worst})"
        return f"full-range int8 INEXACT (output steps off: {worst}); pair-safe weights |q| <= 64 exact"

    @property
    def cpu(self) -> str:
        """Short name of this CPU and its int8 class, for the header of every published figure."""
        vnni = "VNNI" if any("vnni" in flag for flag in self.flags) else "no VNNI"
        return f"{self.processor or self.machine} ({vnni}, {'exact' if self.exact else 'inexact'} full-range int8)"

    def describe(self) -> str:
        """One line: the CPU, its int8 flags and the probe's verdict, for logs and benchmark headers."""
        flags = " ".join(self.flags) or "none found"
        cpu = f"{self.processor or self.machine} ({self.machine})"
        return f"{cpu}, int8 flags: {flags}, onnxruntime {self.onnxruntime}: {self.verdict}"

    @property
    def table(self) -> pd.DataFrame:
        """One row per probe: probe, kind, kernel, steps_full, steps_pair_safe, exact."""
        return pd.DataFrame([{"probe": c.probe, "kind": c.kind, "kernel": c.kernel, "steps_full": c.steps_full,
                              "steps_pair_safe": c.steps_pair_safe, "exact": c.exact} for c in self.checks])

    def __repr__(self) -> str:
        return f"Int8Report({self.describe()})"

    def _repr_html_(self) -> str:
        return f"<p>{self.describe()}</p>" + self.table.to_html(index=False)


def cpu_flags() -> tuple[str, ...]:
    """The int8-relevant instruction flags of this CPU from /proc/cpuinfo (empty where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return ()
    line = next((x for x in lines if x.startswith(("flags", "Features"))), "")
    present = set(line.partition(":")[2].split())
    return tuple(f for f in INT8_FLAGS if f in present)


def cpu_name() -> str:
    """The CPU model name (/proc/cpuinfo, else platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("model name", "Model", "CPU part")):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def probe_model(op: str, group: int, cin: int, cout: int, k: int, stride: int, weight_max: int):
    """A QDQ model x -> Q/DQ -> layer (int8 weights of +-weight_max) -> Q/DQ, with its input shape."""
    rng = np.random.default_rng(0)
    if op == "Conv":
        shape = (cout, cin // group, k, k)
    else:
        shape = (cout, cin) if op == "Gemm" else (cin, cout)
    w = (rng.choice([-1, 1], size=shape) * weight_max).astype(np.int8)
    consts = {"wq": w, "ws": np.float32(0.01), "wz": np.int8(0), "xs": np.float32(0.02),
              "xz": np.uint8(0), "ys": np.float32(1.0), "yz": np.uint8(128)}
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in consts.items()]
    if op == "Conv":
        layer = helper.make_node("Conv", ["xd", "wd"], ["y"], group=group, pads=[k // 2] * 4, strides=[stride] * 2)
    elif op == "Gemm":
        layer = helper.make_node("Gemm", ["xd", "wd"], ["y"], transB=1)
    else:
        layer = helper.make_node("MatMul", ["xd", "wd"], ["y"])
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]), layer,
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    x_shape = [1, cin, 10, 10] if op == "Conv" else [4, cin]
    graph = helper.make_graph(nodes, f"probe_{op}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), x_shape


def dynamic_probe_model(cin: int, cout: int, weight_max: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> DynamicQuantizeLinear -> MatMulInteger (int8 weights of +-weight_max) -> Cast -> Mul by the
    input scale x weight scale (0.5), as a dynamic MatMul layer is written, with the integer weights (the exact
    answer is numpy's ``xq @ w`` times the scales)."""
    w = (np.random.default_rng(0).choice([-1, 1], size=(cin, cout)) * weight_max).astype(np.int8)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["y32"]),
             helper.make_node("Cast", ["y32"], ["yf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["scale"]),
             helper.make_node("Mul", ["yf", "scale"], ["out"])]
    inits = [numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.int8(0), "wz"),
             numpy_helper.from_array(np.float32(0.5), "ws")]  # 1.0 would be folded away and block the fusion
    graph = helper.make_graph(nodes, "probe_dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, cin])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), w


def _dynamic_steps(cin: int, cout: int, weight_max: int, saved: Path) -> float:
    """Largest error of the fused dynamic MatMul against exact int32 sums (x quantizes to 0 and 255)."""
    model, w = dynamic_probe_model(cin, cout, weight_max)
    x = np.full((4, cin), 5.1, np.float32)
    x[:, ::7] = 0.0
    xq = np.where(x > 0, 255, 0).astype(np.int64)
    scale = float(np.float32(5.1) / np.float32(255)) * 0.5
    return float(np.round(np.abs(_run(model, x, True, saved) / scale - xq @ w.astype(np.int64)).max()))


def _run(model: onnx.ModelProto, x: np.ndarray, optimize: bool, saved: Path | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if saved is not None:
        options.optimized_model_filepath = str(saved)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _fused_kernel(path: Path, op: str) -> str:
    """The op that replaced the layer in onnxruntime's optimized graph (e.g. QLinearConv)."""
    kinds = [n.op_type for n in onnx.load(str(path)).graph.node
             if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput",
                                  "DynamicQuantizeLinear", "Cast")]
    return next((k for k in kinds if k != op), op) if kinds else op


def check_kernel(probe: str, folder: Path) -> KernelCheck:
    """Run ``probe`` (a key of PROBES) with full-range and pair-safe weights."""
    kind, op, group, cin, cout, k, stride = PROBES[probe]
    steps, kernel = [], op
    for weight_max in (127, pair_safe_weight_max()):
        saved = folder / f"{probe}_{weight_max}.onnx"
        if op == "MatMulInteger":
            steps.append(_dynamic_steps(cin, cout, weight_max, saved))
            kernel = _fused_kernel(saved, op)
            continue
        model, shape = probe_model(op, group, cin, cout, k, stride, weight_max)
        x = np.full(shape, 5.1, np.float32)  # uint8 255 at scale 0.02: the top of the activation range
        fused = _run(model, x, True, saved)
        steps.append(float(np.abs(fused - _run(model, x, False)).max()))
        kernel = _fused_kernel(saved, op)
    return KernelCheck(probe, kind, kernel, steps[0], steps[1])


@functools.lru_cache(maxsize=1)
def probe_int8() -> Int8Report:
    """Measure this CPU once per process (about a second) and return the report."""
    with tempfile.TemporaryDirectory(prefix="nbquant_probe_") as tmp:
        checks = tuple(check_kernel(probe, Path(tmp)) for probe in PROBES)
    report = Int8Report(platform.machine(), cpu_name(), ort.__version__, cpu_flags(), checks)
    log.info("int8 on this CPU: %s", report.describe())
    return report
