"""onnxruntime sessions: CPU sessions that compute a model as its metadata asks, and input feeds."""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path

import onnx
import onnxruntime as ort

from ..errors import ModelError
from ..quantize.cpu_probe import probe_int8
from ..quantize.deploy_target import inexact_kinds_here
from ..quantize.metadata import SIMULATE_KEY, TARGET_KEY

ModelLike = str | os.PathLike | onnx.ModelProto | ort.InferenceSession


log = logging.getLogger(__name__)

# onnxruntime's WeightBiasQuantization rewrites a Conv/Gemm with float weights that reads a per-tensor
# DequantizeLinear and feeds a QuantizeLinear into an integer kernel with per-tensor int8 weights of its own: a
# layer a mixed model keeps in float would run in int8, coarser than nbquant's per-channel weights. nbquant's
# deploy models give such a layer a per-axis DequantizeLinear, which the pass skips, so a user's own session
# computes the same (quantize/deploy.py); nbquant's sessions also turn the pass off, for models built before that.
KEEP_FLOAT_OPTIMIZERS = ("WeightBiasQuantization",)


def make_session(model: str | os.PathLike | onnx.ModelProto,
                 threads: int | None = None, simulate: bool | None = None,
                 profile: str | os.PathLike | None = None) -> ort.InferenceSession:
    """CPU onnxruntime session (all graph optimizations) for a model file or in-memory model.

    ``simulate`` computes QuantizeLinear/DequantizeLinear as written instead of letting
    onnxruntime fuse them into integer kernels; by default it is on for models whose metadata
    asks for it (nbquant's fake-quant models), so their accuracy is the simulated one.
    ``profile``: a file prefix; onnxruntime then records each node's kernel time (``end_profiling``).
    Layers a model keeps in float stay in float (see ``KEEP_FLOAT_OPTIMIZERS``).
    """
    opts = ort.SessionOptions()
    if profile is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads if threads is not None else (os.cpu_count() or 1)
    opts.log_severity_level = 3  # errors only: keep notebooks free of ORT warnings
    if isinstance(model, onnx.ModelProto):
        source, name, proto = model.SerializeToString(), f"in-memory model {model.graph.name!r}", model
    else:
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        source, name = str(path), str(path)
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # onnxruntime below gives the better error
            proto = None
    if simulate is None and proto is not None:
        simulate = any(p.key == SIMULATE_KEY and p.value == "1" for p in proto.metadata_props)
    if simulate:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    elif proto is not None:
        warn_if_inexact(proto, name)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(KEEP_FLOAT_OPTIMIZERS))
    except Exception as exc:  # onnxruntime's errors share no base class but Exception
        raise ModelError(f"onnxruntime cannot load {name}: {exc}") from exc


def feed(session: ort.InferenceSession, batch) -> dict:
    """The input dict of one run: ``batch`` itself when it is one (arrays by input name, see
    :mod:`nbquant.data.tensors`), else an image batch for the first input."""
    return batch if isinstance(batch, dict) else {session.get_inputs()[0].name: batch}


def fused_ops(model_path, folder) -> collections.Counter:
    """How many of each op onnxruntime runs ``model_path`` as (its optimized graph, saved in ``folder``):
    which integer kernels a quantized model became."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(Path(folder) / f"{Path(model_path).stem}.optimized.onnx")
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(KEEP_FLOAT_OPTIMIZERS))
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


_warned: set[str] = set()


def warn_if_inexact(model: onnx.ModelProto, name: str) -> None:
    """Warn once per model when its full-range int8 layers are computed inexactly on this CPU."""
    metadata = {p.key: p.value for p in model.metadata_props}
    kinds = inexact_kinds_here(metadata)
    if not kinds or name in _warned:
        return
    _warned.add(name)
    log.warning("%s has full-range int8 weights (deploy target %s) in %s layers, which onnxruntime computes "
                "inexactly on this CPU (%s): int8 pair sums saturate, so its outputs differ from the fake-quant "
                "model's (4.6 top-1 points on EfficientNet-Lite0). Fix: calibrate with --deploy-target portable "
                "(or auto on this CPU).", name, metadata.get(TARGET_KEY, "?"), ", ".join(kinds),
                probe_int8().describe())
