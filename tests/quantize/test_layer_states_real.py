"""Layer states on the real model: a Lite0 with layers in every state builds, runs, deploys as simulated
(on this CPU and, portable, on an emulated AVX2 CPU), keeps the all-int8 model's top-1 and records its states."""

import json
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from nbquant.calibration.config import config_from_dict, config_to_dict
from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.binding import resolve_preprocess
from nbquant.evaluation.session import fused_ops, make_session
from nbquant.graph.layers import post_layer_tensor
from nbquant.quantize.layer_quant import LayerState
from nbquant.quantize.layer_states import in_state, make_state_model, model_states, resolve_states
from nbquant.quantize.record_files import format_scale_offset_record, make_quant_map, parse_scale_offset_record

pytestmark = pytest.mark.real

# a few layers in each state, the rest int8; the portable target keeps int8 kernels exact on every CPU
STATES = {
    "/_blocks.1/_expand_conv/Conv": "a16w8", "/_blocks.5/_depthwise_conv/Conv": "a16w8", "/_conv_head/Conv": "a16w8",
    "/_blocks.3/_project_conv/Conv": "float", "/_blocks.7/_expand_conv/Conv": "float",
    "/_blocks.9/_depthwise_conv/Conv": "float_raw", "/_blocks.12/_expand_conv/Conv": "float_raw",
    "/_fc/Gemm": "dynamic",
}
QEMU = shutil.which("qemu-x86_64")
RUN_MODEL = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.log_severity_level = 3
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: np.load(sys.argv[2])})[0])
"""


@pytest.fixture(scope="module")
def lite0(real_model_path, real_data):
    """Lite0 calibrated for the portable target (50 images, nearest rounding: a quick calibration) and its
    mixed models, with 100 held-out images' logits of each."""
    run = calibrate(real_model_path, real_data.spread(50), None, progress=False, cache=False,
                    settings=CalibrationSettings(calib_num=50, deploy_target="portable", weight_rounding="nearest"))
    cal, model = run.calibrator, run.prepared.model
    images = real_data.subset(100, offset=450)
    batches = list(images.iter_batches(resolve_preprocess(model), 50))
    x = np.concatenate([b.images for b in batches])
    labels = np.concatenate([b.labels for b in batches])
    models = {"int8": run.deploy_model}
    for deploy in (True, False):
        models["deploy" if deploy else "fake"] = make_state_model(model, cal.quant_, STATES, cal.tensor_qparams_,
                                                                   cal.config.deploy_target, deploy)
    logits = {name: np.concatenate([make_session(m).run(None, {"input": x[i:i + 50]})[0] for i in (0, 50)])
              for name, m in models.items()}
    return run, models, logits, labels, x


def raw_producers(run, states) -> set[str]:
    """The int8 layers whose output (after its Clip) a layer reading the raw tensor reads."""
    model = run.prepared.model
    emits = {post_layer_tensor(model, layer): layer.name for layer in run.prepared.layers}
    readers = [layer for layer in run.prepared.layers if states.get(layer.name) in ("a16w8", "float_raw", "dynamic")]
    producers = (emits.get(layer.input) for layer in readers)  # None: an Add or the graph input
    return {name for name in producers if name is not None and name not in states}


def sqnr_db(ref, got):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))


def test_a_mixed_lite0_deploys_as_simulated_and_keeps_the_int8_top1(lite0):
    run, models, logits, labels, x = lite0
    deploy, fake = models["deploy"], models["fake"]
    for built in (deploy, fake):
        onnx.checker.check_model(built)
    with tempfile.TemporaryDirectory() as folder:
        onnx.save(deploy, f"{folder}/deploy.onnx")
        kernels = fused_ops(f"{folder}/deploy.onnx", folder)
    # 49 Convs, 7 of them not int8, and the int8 ones whose output an a16w8 or float_raw layer reads unrounded
    # compute in float (5 here: a16w8 blocks.1 expand, blocks.5 dw, conv_head; float_raw blocks.9 dw, blocks.12
    # expand; blocks.7's float expand reads an Add that no int8 layer reads, so nothing is rounded there)
    lost = raw_producers(run, STATES)
    assert len(lost) == 5 and kernels["QLinearConv"] == 49 - 7 - len(lost), kernels
    assert kernels["DynamicQuantizeMatMul"] == 1 and kernels["QGemm"] == 0 and kernels["MatMulNBits"] == 0
    # simulation equals deploy as closely as for the all-int8 model (28 dB logit SQNR, design.md)
    int8_fake = make_state_model(run.prepared.model, run.calibrator.quant_, {}, run.calibrator.tensor_qparams_,
                                 run.config.deploy_target, deploy=False)
    int8_sim = np.concatenate([make_session(int8_fake).run(None, {"input": x[i:i + 50]})[0] for i in (0, 50)])
    mixed_db, int8_db = sqnr_db(logits["fake"], logits["deploy"]), sqnr_db(int8_sim, logits["int8"])
    assert mixed_db > min(25.0, int8_db - 3), (mixed_db, int8_db)
    assert (logits["fake"].argmax(1) == logits["deploy"].argmax(1)).sum() >= 97
    correct = {name: int((value.argmax(1) == labels).sum()) for name, value in logits.items()}
    assert abs(correct["deploy"] - correct["int8"]) <= 3, correct


def test_a_plain_onnxruntime_session_computes_the_same(lite0):
    """A user's own session runs onnxruntime's WeightBiasQuantization, which would quantize a float layer
    that reads a per-tensor DequantizeLinear (blocks.3 project, blocks.7 expand): nbquant's deploy model
    gives such a layer a per-axis one, so the user gets what nbquant measured."""
    _, models, logits, _, x = lite0
    plain = ort.InferenceSession(models["deploy"].SerializeToString(), providers=["CPUExecutionProvider"])
    got = np.concatenate([plain.run(None, {"input": x[i:i + 50]})[0] for i in (0, 50)])
    np.testing.assert_array_equal(got, logits["deploy"])


def test_the_states_are_in_the_model_the_config_and_the_run_files(lite0, tmp_path):
    run, models, *_ = lite0
    resolved = resolve_states(run.calibrator.quant_, STATES)
    assert sum(s is LayerState.INT8 for s in resolved.values()) == 50 - len(STATES)
    onnx.save(models["deploy"], tmp_path / "deploy.onnx")
    assert model_states(onnx.load(str(tmp_path / "deploy.onnx"))) == resolved == model_states(models["fake"])
    config = run.config.with_states(STATES)
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(config)))
    read = config_from_dict(json.loads((tmp_path / "config.json").read_text()), run.config)
    assert read.states == {name: LayerState(state) for name, state in STATES.items()}
    assert make_state_model(run.prepared.model, run.calibrator.with_config(read).quant_, read.states,
                            run.calibrator.tensor_qparams_, run.config.deploy_target).SerializeToString() == \
        models["deploy"].SerializeToString()
    quant_map = make_quant_map("lite0", list(resolved), [], [], config.enabled, states=resolved)
    assert quant_map["layers"]["/_fc/Gemm"]["precision"] == "dynamic"
    a16 = {n: lq for n, lq in run.calibrator.quant_.items() if STATES.get(n) == "a16w8"}
    record = parse_scale_offset_record(format_scale_offset_record({n: in_state(lq, "a16w8") for n, lq in a16.items()}))
    assert {entry["act_type"] for entry in record.values()} == {"INT16"}


@pytest.mark.skipif(platform.machine() != "x86_64" or QEMU is None,
                    reason="needs an x86_64 host with qemu-x86_64 (Debian package qemu-user) to emulate AVX2")
def test_the_portable_mixed_model_deploys_alike_on_an_emulated_avx2_cpu(lite0, tmp_path):
    """qemu's Haswell model has AVX2 and no VNNI: onnxruntime picks its saturating u8 x s8 kernels, which the
    portable weights keep exact. int8, a16w8 and dynamic layers then give this CPU's logits bit for bit; float
    layers (constant float weights: onnxruntime's NCHWc convolutions, blocked 16 wide with AVX-512 and 8 with
    AVX2) round apart, which int8 requantization downstream amplifies to about the simulation's distance."""
    run, models, _, _, x = lite0
    no_float = {name: state for name, state in STATES.items() if state in ("a16w8", "dynamic")}
    models = {"mixed": models["deploy"], "no_float": make_state_model(
        run.prepared.model, run.calibrator.quant_, no_float, run.calibrator.tensor_qparams_, run.config.deploy_target)}
    np.save(tmp_path / "x.npy", x[:4])
    out = {}
    for label, model in models.items():
        onnx.save(model, tmp_path / f"{label}.onnx")
        for cpu, prefix in (("native", []), ("avx2", [QEMU, "-cpu", "Haswell"])):
            saved = tmp_path / f"{label}_{cpu}.npy"
            subprocess.run([*prefix, sys.executable, "-c", RUN_MODEL, str(tmp_path / f"{label}.onnx"),
                            str(tmp_path / "x.npy"), str(saved)], check=True, capture_output=True, timeout=600)
            out[label, cpu] = np.load(saved)
    assert np.array_equal(out["no_float", "native"], out["no_float", "avx2"])
    assert sqnr_db(out["mixed", "native"], out["mixed", "avx2"]) > 25.0
    assert np.array_equal(out["mixed", "native"].argmax(1), out["mixed", "avx2"].argmax(1))
