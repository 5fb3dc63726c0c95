"""Calibration scales, fake-quant and deploy models on tiny graphs, against hand computation."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from synthetic import conv_bn_model, gemm_matmul_model

from nbquant.calibration.calibrator import Calibrator, observe, observed_tensors, with_outputs
from nbquant.calibration.config import ActivationQuant, ActMethod, QuantConfig
from nbquant.evaluation.session import make_session
from nbquant.graph.fusion import fold_batchnorm
from nbquant.graph.layers import find_layers
from nbquant.graph.load import name_nodes
from nbquant.quantize.deploy import make_deploy_model
from nbquant.quantize.deploy_target import DeployTarget, weight_max
from nbquant.quantize.fake_quant import make_fake_quant_model
from nbquant.quantize.numerics import fake_quantize

# Deploy models compared with onnxruntime's int8 kernels use 7-bit weights where pair sums could saturate:
# full-range weights are exact only on CPUs whose int8 kernels add into int32 (VNNI), not on AVX2-only x86.
PORTABLE = DeployTarget.PORTABLE


def calibrated(model, inputs, method=ActMethod.MINMAX, per_channel=True, disabled=(), bias_correction=False,
               target=DeployTarget.FULL):
    layers = find_layers(model)
    names = observed_tensors(model, layers)
    means = [layer.input for layer in layers]
    observers, channel_means = observe(make_session(with_outputs(model, names)), names, inputs, mean_names=means)
    ranges = {layer.name: weight_max(layer.kind, target) for layer in layers}
    config = QuantConfig.default({layer.name: layer.op for layer in layers}, ActivationQuant(method), per_channel,
                                 bias_correction=bias_correction, weight_max=ranges, deploy_target=target)
    return Calibrator(config.with_float(disabled)).fit(model, observers, channel_means)


@pytest.fixture
def conv_model():
    model, _ = name_nodes(conv_bn_model())
    return fold_batchnorm(model)[0]


@pytest.fixture
def dense_model():
    return name_nodes(gemm_matmul_model())[0]


def batches(shape, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, shape).astype(np.float32) for _ in range(n)]


def test_conv_scales_and_zero_points_hand_computed(conv_model):
    data = batches((2, 3, 8, 8))
    cal = calibrated(conv_model, data)
    allx = np.concatenate(data)
    lo, hi = float(allx.min()), float(allx.max())
    first = cal.quant_["Conv_0"]
    assert float(first.activation.scale) == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert int(first.activation.zero_point) == round(-lo / ((hi - lo) / 255))
    # the depthwise conv reads the Relu output: range [0, max], zero point 0
    relu = np.concatenate([ReferenceEvaluator(with_outputs(conv_model, ["r"])).run(["r"], {"x": x})[0]
                           for x in data])
    second = cal.quant_["Conv_3"]
    assert int(second.activation.zero_point) == 0
    assert float(second.activation.scale) == pytest.approx(relu.max() / 255, rel=1e-6)
    w = numpy_helper.to_array(next(i for i in conv_model.graph.initializer if i.name == "Conv_3/fused_weight"
                                   or i.name == second.layer.weight))
    expected = np.abs(w).reshape(4, -1).max(axis=1) / 127
    assert np.allclose(second.weight.scale, expected, rtol=1e-6)
    assert cal.table_.set_index("layer").loc["Conv_3", "weight_channels"] == 4


def test_fake_quant_matches_numpy_reference(dense_model):
    data = batches((4, 6))
    cal = calibrated(dense_model, data, per_channel=False)
    fq = make_fake_quant_model(dense_model, cal.quant_, cal.tensor_qparams_)
    onnx.checker.check_model(fq)
    assert [i.name for i in fq.graph.input] == ["x"] and [o.name for o in fq.graph.output] == ["y"]
    init = {i.name: numpy_helper.to_array(i) for i in dense_model.graph.initializer}
    x = data[0]
    g, m = cal.quant_["Gemm_0"], cal.quant_["MatMul_2"]
    h = fake_quantize(x, g.activation) @ fake_quantize(init["wg"], g.weight).T + init["bg"]
    want = fake_quantize(np.maximum(h, 0), m.activation) @ fake_quantize(init["wm"], m.weight)
    assert np.allclose(make_session(fq).run(None, {"x": x})[0], want, atol=1e-4)


def test_disabled_layer_stays_float(dense_model):
    cal = calibrated(dense_model, batches((4, 6)), disabled=["MatMul_2"], per_channel=False)
    fq = make_fake_quant_model(dense_model, cal.quant_, cal.tensor_qparams_)
    matmul = next(n for n in fq.graph.node if n.op_type == "MatMul")
    producer = next(n for n in fq.graph.node if matmul.input[0] in n.output)
    assert matmul.input[1] == "wm" and producer.op_type == "DequantizeLinear"  # float weights, 8-bit input
    assert set(cal.quant_) == {"Gemm_0"}
    # it reads the Gemm's requantized output, so that the Gemm still fuses into an integer kernel
    init = {i.name: numpy_helper.to_array(i) for i in dense_model.graph.initializer}
    x, g = batches((4, 6))[0], cal.quant_["Gemm_0"]
    h = fake_quantize(x, g.activation) @ fake_quantize(init["wg"], g.weight).T + init["bg"]
    want = fake_quantize(np.maximum(h, 0), cal.tensor_qparams_["r"]) @ init["wm"]
    assert np.allclose(make_session(fq).run(None, {"x": x})[0], want, atol=1e-4)


def test_deploy_model_int8_weights_close_to_fake_quant(conv_model):
    """Portable target: the dense Conv's weights within |q| <= 64, so onnxruntime's int8 kernels are exact on
    every CPU and the deploy model computes what the fake-quant model simulates."""
    data = batches((2, 3, 8, 8))
    cal = calibrated(conv_model, data, target=PORTABLE)
    fq = make_fake_quant_model(conv_model, cal.quant_, cal.tensor_qparams_, target=PORTABLE)
    dep = make_deploy_model(conv_model, cal.quant_, cal.tensor_qparams_, target=PORTABLE)
    onnx.checker.check_model(dep)
    types = {i.name: i.data_type for i in dep.graph.initializer}
    assert types["Conv_0/weight_quantized"] == onnx.TensorProto.INT8
    assert types["Conv_0/bias_quantized"] == onnx.TensorProto.INT32
    assert not any(t == onnx.TensorProto.FLOAT and "weight" in n and "scale" not in n for n, t in types.items())
    weights = {i.name: numpy_helper.to_array(i) for i in dep.graph.initializer}
    assert np.abs(weights["Conv_0/weight_quantized"]).max() == 64  # the largest weight of a channel maps to 64
    x = data[0]
    ref = make_session(conv_model).run(None, {"x": x})[0]
    got_fq = make_session(fq).run(None, {"x": x})[0]
    got_dep = make_session(dep).run(None, {"x": x})[0]
    step = float(cal.tensor_qparams_["y"].scale) if "y" in cal.tensor_qparams_ else np.abs(ref).max() / 127
    assert np.abs(got_dep - got_fq).max() < 2 * step  # exact kernels: only requantization rounding differs
    assert np.abs(got_fq - ref).max() < 0.1 * np.abs(ref).max()


def test_symmetric_activations_are_int8(dense_model):
    cal = calibrated(dense_model, batches((4, 6)))
    config = QuantConfig.default({"Gemm_0": "Gemm", "MatMul_2": "MatMul"},
                                 ActivationQuant(ActMethod.MINMAX, symmetric=True))
    sym = Calibrator(config).fit(dense_model, cal.observers_)
    act = sym.quant_["Gemm_0"].activation
    assert act.dtype == np.int8 and int(act.zero_point) == 0
    hi = max(abs(sym.table_.loc[0, "act_min"]), sym.table_.loc[0, "act_max"])
    assert float(act.scale) == pytest.approx(hi / 127, rel=1e-6)
    assert sym.quant_["MatMul_2"].weight.scale.size > 1  # MatMul weights per output column, like the others


def test_bias_correction_removes_the_mean_output_shift(conv_model):
    rng = np.random.default_rng(5)
    data = [(rng.normal(0, 1, (4, 3, 8, 8)) + 0.7).astype(np.float32) for _ in range(4)]  # non-zero mean
    plain = calibrated(conv_model, data, per_channel=False)
    fixed = calibrated(conv_model, data, per_channel=False, bias_correction=True)
    assert fixed.quant_["Conv_0"].bias is not None and plain.quant_["Conv_0"].bias is None
    assert fixed.table_["bias_shift_max"].max() > 0
    x = np.concatenate(data)
    ref = make_session(conv_model).run(None, {"x": x})[0]
    for cal in (plain, fixed):
        out = make_session(make_fake_quant_model(conv_model, cal.quant_, cal.tensor_qparams_)).run(None, {"x": x})[0]
        cal.shift = np.abs((out - ref).mean(axis=(0, 2, 3))).max()
    assert fixed.shift < 0.5 * plain.shift
    dep = make_deploy_model(conv_model, fixed.quant_, fixed.tensor_qparams_)
    assert np.abs((make_session(dep).run(None, {"x": x})[0] - ref).mean(axis=(0, 2, 3))).max() < plain.shift


def test_falling_back_a_layer_does_not_change_the_others_scales(conv_model):
    """Calibrating once is exact: statistics come from the float model, whatever falls back."""
    data = batches((2, 3, 8, 8))
    everything = calibrated(conv_model, data, bias_correction=True)
    partial = calibrated(conv_model, data, bias_correction=True, disabled=["Conv_0"])
    kept = partial.quant_["Conv_3"]
    same = everything.quant_["Conv_3"]
    assert set(partial.quant_) == {"Conv_3"}
    assert kept.activation == same.activation or (
        np.array_equal(kept.activation.scale, same.activation.scale)
        and np.array_equal(kept.activation.zero_point, same.activation.zero_point))
    assert np.array_equal(kept.weight.scale, same.weight.scale) and np.array_equal(kept.bias, same.bias)


def test_layer_input_read_earlier_by_a_shape_keeps_the_graph_sorted():
    """PyTorch transformer exports: a Shape reads a layer's input before the layer (a crash before).
    Portable target, so the deploy model's int8 MatMuls are exact on every CPU."""
    from synthetic import shape_reads_layer_input_model
    model = name_nodes(shape_reads_layer_input_model())[0]
    data = [np.random.default_rng(i).normal(size=(2, 4, 8)).astype(np.float32) for i in range(3)]
    cal = calibrated(model, data, target=PORTABLE)
    assert set(cal.quant_) == {"MatMul_5", "MatMul_7"}
    for built in (make_fake_quant_model(model, cal.quant_, cal.tensor_qparams_, target=PORTABLE),
                  make_deploy_model(model, cal.quant_, cal.tensor_qparams_, target=PORTABLE)):
        onnx.checker.check_model(built)
        out = make_session(built).run(None, {"x": data[0]})[0]
        ref = make_session(model).run(None, {"x": data[0]})[0]
        assert out.shape == ref.shape == (2, 4, 6) and np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
