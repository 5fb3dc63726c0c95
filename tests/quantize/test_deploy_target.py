"""Deploy targets and the CPU probe: the pair-safe bound, the target each CPU gets, what the models record."""

import json
import logging

import numpy as np
import onnx
import pytest
from synthetic import conv_bn_model

from nbquant.calibration.calibrator import Calibrator, observe, observed_tensors, with_outputs
from nbquant.calibration.config import ActivationQuant, ActMethod, QuantConfig, config_to_dict
from nbquant.errors import ConfigError
from nbquant.evaluation import session as evaluation
from nbquant.evaluation.session import make_session
from nbquant.graph.fusion import fold_batchnorm
from nbquant.graph.layers import find_layers, kernel_kind
from nbquant.graph.load import name_nodes
from nbquant.quantize import cpu_probe
from nbquant.quantize.cpu_probe import PROBES, Int8Report, KernelCheck, pair_safe_weight_max, probe_int8
from nbquant.quantize.deploy import make_deploy_model
from nbquant.quantize.deploy_target import DeployTarget, resolve_target, weight_max
from nbquant.quantize.fake_quant import make_fake_quant_model
from nbquant.quantize.metadata import FULL_RANGE_KEY, TARGET_KEY, WEIGHT_MAX_KEY
from nbquant.quantize.record_files import format_scale_offset_record, parse_scale_offset_record


def u8s8_pair_sums(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What x86 ``vpmaddubsw`` computes: u8 x s8 products added in adjacent pairs, saturated to int16."""
    products = a.astype(np.int64) * w.astype(np.int64)
    return np.clip(products[..., 0::2] + products[..., 1::2], -32768, 32767)


def test_pair_safe_bound_is_the_widest_range_that_cannot_saturate():
    bound = pair_safe_weight_max()
    assert bound == 64
    a = np.full(2, 255)  # the worst case: both activations at the top of uint8
    for w0 in range(-bound, bound + 1):
        for w1 in (-bound, bound):
            exact = 255 * (w0 + w1)
            assert u8s8_pair_sums(a, np.array([w0, w1]))[0] == exact
    assert u8s8_pair_sums(a, np.array([bound + 1, bound + 1]))[0] < 255 * 2 * (bound + 1)  # one more saturates


def test_pair_sums_equal_the_dot_product_only_within_the_bound():
    rng = np.random.default_rng(0)
    a = rng.integers(200, 256, size=(64, 32))
    for top, exact in ((pair_safe_weight_max(), True), (127, False)):
        w = rng.integers(-top, top + 1, size=32)
        w[:2] = top  # at least one pair at the top of the range
        emulated = u8s8_pair_sums(a, w).sum(axis=1)
        assert np.array_equal(emulated, a @ w) is exact


def test_probe_measures_every_kernel_kind_and_pair_safe_weights_are_exact_here():
    report = probe_int8()
    assert [c.probe for c in report.checks] == list(PROBES)
    assert {c.kind for c in report.checks} == {"conv", "pointwise", "grouped", "depthwise", "gemm", "matmul"}
    assert all(c.steps_pair_safe == 0 for c in report.checks), report.table  # the portable guarantee, on this CPU
    assert report.is_exact("depthwise"), report.table  # int32 accumulation on every CPU onnxruntime supports
    assert report.verdict in report.describe() and set(report.flags) <= set(cpu_probe.INT8_FLAGS)
    assert probe_int8() is report  # measured once per process


def fake_report(inexact=()):
    checks = tuple(KernelCheck(p, kind, "QLinearConv", 62.0 if kind in inexact else 0.0, 0.0)
                   for p, (kind, *_) in PROBES.items())
    return Int8Report("x86_64", "test CPU", "1.0", ("avx2",), checks)


def test_auto_target_follows_the_probe():
    assert resolve_target("auto", fake_report()) is DeployTarget.FULL
    avx2 = fake_report(("conv", "pointwise", "grouped", "gemm", "matmul"))
    assert resolve_target("auto", avx2) is DeployTarget.PORTABLE
    assert "INEXACT" in avx2.verdict and avx2.inexact_kinds == ["conv", "pointwise", "grouped", "gemm", "matmul"]
    assert resolve_target("full", avx2) is DeployTarget.FULL
    assert weight_max("depthwise", DeployTarget.PORTABLE, avx2) == 127
    assert weight_max("depthwise", DeployTarget.PORTABLE, fake_report(("depthwise",))) == 64
    assert weight_max("conv_transpose", DeployTarget.PORTABLE, avx2) == 64
    with pytest.raises(ConfigError, match="deploy_target must be one of auto, portable, full, got 'fast'"):
        resolve_target("fast")


def test_kernel_kinds():
    assert kernel_kind("Conv", (8, 4, 3, 3), 2) == "grouped"
    assert kernel_kind("Conv", (16, 1, 3, 3), 8) == "grouped"  # channel multiplier 2: not the depthwise kernel
    assert kernel_kind("Conv", (8, 3, 3, 3)) == "conv"
    assert kernel_kind("ConvTranspose", (8, 4, 2, 2)) == "conv_transpose" and kernel_kind("MatMul", (4, 3)) == "matmul"


def calibrated_conv(target: DeployTarget):
    model = fold_batchnorm(name_nodes(conv_bn_model())[0])[0]
    layers = find_layers(model)
    names = observed_tensors(model, layers)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    observers, means = observe(make_session(with_outputs(model, names)), names, inputs,
                               mean_names=[layer.input for layer in layers])
    ranges = {layer.name: weight_max(layer.kind, target, fake_report()) for layer in layers}
    ops = {layer.name: layer.op for layer in layers}
    config = QuantConfig.default(ops, ActivationQuant(ActMethod.MINMAX), True, True, ranges, target)
    return model, Calibrator(config).fit(model, observers, means), inputs[0]


def test_portable_target_limits_the_pairing_layers_and_both_models_share_the_integers():
    model, cal, x = calibrated_conv(DeployTarget.PORTABLE)
    dense, depthwise = cal.quant_["Conv_0"], cal.quant_["Conv_3"]
    assert (dense.layer.kind, depthwise.layer.kind) == ("conv", "depthwise")
    assert np.abs(dense.weight_q).max() == 64 and np.abs(depthwise.weight_q).max() == 127
    assert cal.table_.set_index("layer")["weight_max"].to_dict() == {"Conv_0": 64, "Conv_3": 127}
    fake = make_fake_quant_model(model, cal.quant_, cal.tensor_qparams_, DeployTarget.PORTABLE)
    deploy = make_deploy_model(model, cal.quant_, cal.tensor_qparams_, DeployTarget.PORTABLE)
    for built in (fake, deploy):
        ints = {t.name: onnx.numpy_helper.to_array(t) for t in built.graph.initializer
                if t.name.endswith("/weight_quantized")}
        assert np.array_equal(ints["Conv_0/weight_quantized"], dense.weight_q)
        meta = {p.key: p.value for p in built.metadata_props}
        assert meta[TARGET_KEY] == "portable" and meta[FULL_RANGE_KEY] == "depthwise"
        assert json.loads(meta[WEIGHT_MAX_KEY]) == {"Conv_0": 64, "Conv_3": 127}
    # same integers: the simulation and the deploy model differ only by output rounding
    step = float(cal.tensor_qparams_["y"].scale) if "y" in cal.tensor_qparams_ else 0.05
    got_fake, got_deploy = (make_session(m).run(None, {"x": x})[0] for m in (fake, deploy))
    assert np.abs(got_fake - got_deploy).max() <= 4 * step
    saved = config_to_dict(cal.config)
    assert saved["deploy_target"] == "portable" and saved["Conv_0"]["weight_quant_params"]["weight_max"] == 64
    record = parse_scale_offset_record(format_scale_offset_record(cal.quant_))
    assert record["Conv_0"]["weight_max"] == 64 and record["Conv_3"]["weight_max"] == 127


def test_full_range_model_warns_once_where_this_cpu_is_inexact(monkeypatch, caplog):
    model, cal, x = calibrated_conv(DeployTarget.FULL)
    deploy = make_deploy_model(model, cal.quant_, cal.tensor_qparams_, DeployTarget.FULL)
    deploy.graph.name = "full_range_test_model"
    monkeypatch.setattr(evaluation, "probe_int8", lambda: fake_report(("conv", "pointwise")))
    monkeypatch.setattr("nbquant.quantize.deploy_target.probe_int8", lambda: fake_report(("conv", "pointwise")))
    monkeypatch.setattr(evaluation, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="nbquant"):
        make_session(deploy)
        make_session(deploy)
        # a fake-quant model is simulated, exact anyway: no warning
        make_session(make_fake_quant_model(model, cal.quant_, cal.tensor_qparams_, DeployTarget.FULL))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "full_range_test_model" in warnings[0] and "conv layers" in warnings[0]
    assert "--deploy-target portable" in warnings[0] and "test CPU" in warnings[0]
