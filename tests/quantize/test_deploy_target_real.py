"""The portable deploy target on the real model: exact on any CPU, checked here and on an emulated AVX2 CPU."""

import json
import platform
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.preprocess import get_preset
from nbquant.evaluation.accuracy import evaluate
from nbquant.files import read_json
from nbquant.quantize.metadata import TARGET_KEY, WEIGHT_MAX_KEY

pytestmark = pytest.mark.real

# qemu's Haswell model has AVX2 and no VNNI, so onnxruntime picks its saturating u8 x s8 kernels
QEMU = shutil.which("qemu-x86_64")
EMULATED_AVX2 = [QEMU, "-cpu", "Haswell"] if QEMU else None
RUN_MODEL = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.log_severity_level = 3
if sys.argv[4] == "exact":
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: np.load(sys.argv[2])})[0])
"""


@pytest.fixture(scope="module")
def runs(real_model_path, real_data, tmp_path_factory):
    """The real model calibrated for each target (100 images)."""
    out = {}
    for target in ("portable", "full"):
        out[target] = calibrate(real_model_path, real_data, tmp_path_factory.mktemp(target),
                                CalibrationSettings(deploy_target=target), progress=False)
    return out


def test_portable_weights_stay_pair_safe_and_every_file_says_so(runs):
    run = runs["portable"]
    table = run.layers.set_index("layer")
    assert set(table.loc[table["kind"] == "depthwise", "weight_max"]) == {127}
    assert set(table.loc[table["kind"] != "depthwise", "weight_max"]) == {64}
    for name, lq in run.calibrator.quant_.items():
        assert np.abs(lq.weight_q).max() <= table.loc[name, "weight_max"], name
    assert read_json(run.paths.config)["deploy_target"] == "portable"
    quant_map = read_json(run.paths.quant_json)
    assert quant_map["deploy_target"] == "portable"
    assert quant_map["layers"]["/_fc/Gemm"]["weight_max"] == 64
    for path in (run.paths.fake_quant_model, run.paths.deploy_model):
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert meta[TARGET_KEY] == "portable" and json.loads(meta[WEIGHT_MAX_KEY])["/_conv_stem/Conv"] == 64
    assert "weight_max: 64" in run.paths.scale_offset_record.read_text()


def test_portable_deploy_model_gives_the_simulated_accuracy(runs, real_data):
    run = runs["portable"]
    fake = evaluate(run.fake_quant_model, real_data, progress=False)
    deploy = evaluate(run.deploy_model, real_data, progress=False)
    assert fake.n == deploy.n == 1000
    assert abs(int(deploy.samples["correct"].sum()) - int(fake.samples["correct"].sum())) <= 3, (fake, deploy)
    assert deploy.top1 >= 0.877, deploy  # onnxruntime's reduce_range reaches 0.877 on this model


def _run(prefix, model, x_path, out_path, mode):
    subprocess.run([*prefix, sys.executable, "-c", RUN_MODEL, str(model), str(x_path), str(out_path), mode],
                   check=True, capture_output=True, timeout=600)
    return np.load(out_path)


@pytest.mark.skipif(platform.machine() != "x86_64" or QEMU is None,
                    reason="needs an x86_64 host with qemu-x86_64 (Debian package qemu-user) to emulate AVX2")
def test_portable_deploy_model_is_bit_identical_on_an_emulated_avx2_cpu(runs, real_data, tmp_path):
    """On a CPU without VNNI the portable model gives this CPU's outputs bit for bit; full-range int8 does not."""
    x = next(real_data.subset(6, offset=400).iter_batches(get_preset("half"), 6)).images
    np.save(tmp_path / "x.npy", x)
    portable, full = runs["portable"].paths.deploy_model, runs["full"].paths.deploy_model
    native = _run([], portable, tmp_path / "x.npy", tmp_path / "native.npy", "fused")
    emulated = _run(EMULATED_AVX2, portable, tmp_path / "x.npy", tmp_path / "avx2.npy", "fused")
    assert np.array_equal(native, emulated)
    exact = _run([], full, tmp_path / "x.npy", tmp_path / "full_exact.npy", "exact")
    full_avx2 = _run(EMULATED_AVX2, full, tmp_path / "x.npy", tmp_path / "full_avx2.npy", "fused")
    assert np.abs(full_avx2 - exact).max() > 0.5, "full-range int8 saturates on AVX2 (see nbquant cpu)"
    assert ort.__version__  # the same onnxruntime in both processes


PROBE_DYNAMIC = """
import pathlib, sys, tempfile
from nbquant.quantize.cpu_probe import check_kernel
with tempfile.TemporaryDirectory() as tmp:
    check = check_kernel("matmul_dynamic", pathlib.Path(tmp))
print(check.kernel, check.steps_full, check.steps_pair_safe)
"""


@pytest.mark.skipif(platform.machine() != "x86_64" or QEMU is None,
                    reason="needs an x86_64 host with qemu-x86_64 (Debian package qemu-user) to emulate AVX2")
def test_dynamic_matmul_saturates_on_an_emulated_avx2_cpu_unless_weights_are_pair_safe():
    """Dynamic MatMul layers (the default) run onnxruntime's DynamicQuantizeMatMul, the same u8 x s8 kernel:
    the probe sees it saturate with |q| = 127 and stay exact with |q| <= 64, so the portable target covers them too."""
    done = subprocess.run([*EMULATED_AVX2, sys.executable, "-c", PROBE_DYNAMIC], check=True, capture_output=True,
                          text=True, timeout=600)
    kernel, full, pair_safe = done.stdout.split()
    assert kernel == "DynamicQuantizeMatMul" and float(full) > 1000 and float(pair_safe) == 0
