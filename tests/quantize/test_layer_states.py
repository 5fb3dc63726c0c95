"""Layer states (int8, a16w8, dynamic, float, float_raw) on tiny graphs: each builds a checked model whose
simulation equals its deploy model, reads the input it should, and is recorded in metadata and config."""

import collections
import dataclasses
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from synthetic import conv_chain_model, gemm_matmul_model

from nbquant.calibration.calibrator import Calibrator, observe, observed_tensors, with_outputs
from nbquant.calibration.config import ActivationQuant, ActMethod, QuantConfig, config_from_dict, config_to_dict
from nbquant.calibration.run import CalibrationSettings, calibrate, write_run
from nbquant.errors import ConfigError
from nbquant.evaluation.session import fused_ops, make_session
from nbquant.files import RunPaths
from nbquant.graph.layers import find_layers
from nbquant.graph.load import name_nodes
from nbquant.quantize.deploy import make_deploy_model
from nbquant.quantize.deploy_target import DeployTarget, weight_max
from nbquant.quantize.layer_quant import LayerState
from nbquant.quantize.layer_states import (
    in_state,
    make_state_model,
    model_states,
    resolve_states,
    sixteen_bit_activation,
    state_table,
    states_from_json,
    states_to_json,
)
from nbquant.quantize.numerics import dequantize, fake_quantize
from nbquant.quantize.record_files import format_scale_offset_record, parse_scale_offset_record

# Deploy models compared with onnxruntime's int8 kernels use 7-bit weights where pair sums could saturate:
# full-range weights are exact only on CPUs whose int8 kernels add into int32 (VNNI), not on AVX2-only x86.
PORTABLE = DeployTarget.PORTABLE
CHAIN_LAYERS = ["Conv_0", "Conv_2", "Conv_4", "Gemm_8"]


def calibrated(model, n=3, shape=(4, 3, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    inputs = [rng.normal(0, 1, shape).astype(np.float32) for _ in range(n)]
    layers = find_layers(model)
    names = observed_tensors(model, layers)
    observers, means = observe(make_session(with_outputs(model, names)), names, inputs,
                               mean_names=[layer.input for layer in layers])
    config = QuantConfig.default({layer.name: layer.op for layer in layers}, ActivationQuant(ActMethod.MINMAX),
                                 weight_max={layer.name: weight_max(layer.kind, PORTABLE) for layer in layers},
                                 deploy_target=PORTABLE)
    return Calibrator(config).fit(model, observers, means)


@pytest.fixture(scope="module")
def chain():
    model = name_nodes(conv_chain_model())[0]
    return model, calibrated(model)


@pytest.fixture(scope="module")
def dense():
    model = name_nodes(gemm_matmul_model())[0]
    return model, calibrated(model, shape=(8, 6))


def both(model, cal, states, **kwargs):
    """(deploy, fake-quant) models for ``states``."""
    return tuple(make_state_model(model, cal.quant_, states, cal.tensor_qparams_, PORTABLE, deploy, **kwargs)
                 for deploy in (True, False))


def run(model, x):
    return make_session(model).run(None, {"x": x})[0]


def kernels(model) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/model.onnx"
        onnx.save(model, path)
        return fused_ops(path, folder)


def x_chain(n=16, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (n, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("state", [s.value for s in LayerState])
@pytest.mark.parametrize("layer", CHAIN_LAYERS)
def test_every_state_builds_a_checked_model_whose_simulation_equals_deploy(chain, state, layer):
    """Portable target: onnxruntime's int8 kernels are exact, so the deploy model computes what the simulation
    does up to requantization rounding (the int8 test's tolerance: two steps of the output's range)."""
    model, cal = chain
    if state == "dynamic" and layer != "Gemm_8":
        with pytest.raises(ConfigError, match=f"layer '{layer}' \\(Conv\\) cannot be dynamic"):
            both(model, cal, {layer: state})
        return
    deploy, fake = both(model, cal, {layer: state})
    for built in (deploy, fake):
        onnx.checker.check_model(built)
        assert model_states(built) == {**dict.fromkeys(CHAIN_LAYERS, LayerState.INT8), layer: LayerState(state)}
    x = x_chain()
    ref = run(model, x)
    step = np.abs(ref).max() / 127
    assert np.abs(run(deploy, x) - run(fake, x)).max() < 2 * step
    assert np.abs(run(fake, x) - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("state", ["a16w8", "dynamic"])
def test_a16w8_and_dynamic_layers_compute_the_same_in_both_models(dense, state):
    """With the other layer in float, nothing is left to round apart: onnxruntime runs an a16w8 layer as
    written (no 16-bit kernel on the CPU EP) and a dynamic one as exact integer sums in both models."""
    model, cal = dense
    layer = "Gemm_0"
    deploy, fake = both(model, cal, {layer: state, "MatMul_2": "float"})
    x = np.random.default_rng(3).normal(0, 1, (32, 6)).astype(np.float32)
    assert np.allclose(run(deploy, x), run(fake, x), rtol=1e-5, atol=1e-5)
    fused = kernels(deploy)
    assert fused["DynamicQuantizeMatMul"] == (state == "dynamic") and fused["QGemm"] == 0
    assert {i.name: i.data_type for i in deploy.graph.initializer}["Gemm_0/weight_quantized"] == onnx.TensorProto.INT8


def test_a16w8_quantizes_the_input_to_16_bits_over_its_observed_range(dense):
    model, cal = dense
    lq = cal.quant_["MatMul_2"]
    deploy, fake = both(model, cal, {"MatMul_2": "a16w8", "Gemm_0": "float"})
    nodes = {n.name: n for n in deploy.graph.node}
    q = nodes["MatMul_2/input/QuantizeLinear"]
    assert q.domain == "com.microsoft"  # opset 13: onnxruntime's 16-bit Q/DQ; the model keeps its opset
    assert [o.version for o in deploy.opset_import if o.domain == ""] == [13]
    inits = {i.name: numpy_helper.to_array(i) for i in deploy.graph.initializer}
    assert inits["MatMul_2/input_zero_point"].dtype == np.uint16
    observer = cal.observers_["r"]
    assert float(inits["MatMul_2/input_scale"]) == pytest.approx((observer.max_ - observer.min_) / 65535, rel=1e-6)
    # the model computes fq16(relu(x @ wg.T + bg)) @ dequantize(int8 weights): input steps 256x finer than 8 bits
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    x = np.random.default_rng(4).normal(0, 1, (8, 6)).astype(np.float32)
    r = np.maximum(x @ w["wg"].T + w["bg"], 0)
    want = fake_quantize(r, sixteen_bit_activation(lq)) @ dequantize(lq.weight_q, lq.weight, 1)
    assert np.allclose(run(fake, x), want, atol=1e-4) and np.allclose(run(deploy, x), want, atol=1e-4)
    # a MatMul keeps its int8 grid as float weights: onnxruntime would turn DequantizeLinear -> MatMul into
    # MatMulNBits, which rounds the input to 8 bits per block
    assert kernels(deploy)["MatMulNBits"] == 0
    int8 = fake_quantize(r, lq.activation) @ dequantize(lq.weight_q, lq.weight, 1)
    exact = r @ dequantize(lq.weight_q, lq.weight, 1)
    assert np.abs(want - exact).max() < np.abs(int8 - exact).max() / 50


def test_a16w8_uses_onnx_ops_from_opset_21(dense):
    model, cal = dense
    newer = onnx.version_converter.convert_version(model, 21)
    states = {"MatMul_2": "a16w8"}
    built = make_state_model(newer, cal.quant_, states, cal.tensor_qparams_, PORTABLE, True)
    onnx.checker.check_model(built)
    assert {n.domain for n in built.graph.node} == {""}
    x = np.random.default_rng(5).normal(0, 1, (8, 6)).astype(np.float32)
    old = make_state_model(model, cal.quant_, states, cal.tensor_qparams_, PORTABLE, True)
    assert np.allclose(run(built, x), run(old, x), atol=1e-5)


def test_float_reads_the_requantized_output_and_float_raw_the_unrounded_one(dense):
    model, cal = dense
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    g = cal.quant_["Gemm_0"]
    x = np.random.default_rng(6).normal(0, 1, (8, 6)).astype(np.float32)
    h = np.maximum(fake_quantize(x, g.activation) @ dequantize(g.weight_q, g.weight, 0).T + g.bias, 0)
    rounded, raw = (both(model, cal, {"MatMul_2": state}) for state in ("float", "float_raw"))
    assert np.allclose(run(rounded[1], x), fake_quantize(h, cal.tensor_qparams_["r"]) @ w["wm"], atol=1e-4)
    assert np.allclose(run(raw[1], x), h @ w["wm"], atol=1e-4)
    # the trade: a float reader of the raw output keeps the Gemm before it out of the integer kernels
    assert kernels(rounded[0])["QGemm"] == 1 and kernels(raw[0])["QGemm"] == 0


@pytest.mark.parametrize(("state", "int8_convs"), [("int8", 3), ("float", 2), ("float_raw", 1), ("a16w8", 1)])
def test_a_layer_reading_the_raw_tensor_takes_its_producer_out_of_the_integer_kernels(chain, state, int8_convs):
    model, cal = chain
    deploy, _ = both(model, cal, {"Conv_2": state})
    assert kernels(deploy)["QLinearConv"] == int8_convs


@pytest.mark.parametrize("layer", ["Conv_2", "Conv_4"])
def test_a_float_layer_stays_float_in_a_plain_onnxruntime_session(chain, layer):
    """onnxruntime's WeightBiasQuantization (on in every default session) quantizes the float weights of a
    Conv/Gemm between a per-tensor DequantizeLinear and a QuantizeLinear; a float layer's own per-axis
    DequantizeLinear keeps it out, so a user's session computes what nbquant's does."""
    model, cal = chain
    deploy, _ = both(model, cal, {layer: "float"})
    private = [n for n in deploy.graph.node if n.output[0] == f"{layer}/input_private_dequantized"]
    assert len(private) == 1 and numpy_helper.to_array(
        next(i for i in deploy.graph.initializer if i.name == private[0].input[1])).ndim == 1
    read = {name for node in deploy.graph.node for name in node.input} | {o.name for o in deploy.graph.output}
    assert all(node.output[0] in read for node in deploy.graph.node)  # the shared twin left unread is gone
    plain = ort.InferenceSession(deploy.SerializeToString(), providers=["CPUExecutionProvider"])
    x = x_chain()
    np.testing.assert_array_equal(plain.run(None, {"x": x})[0], run(deploy, x))
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = f"{folder}/plain.onnx"
        ort.InferenceSession(deploy.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(f"{folder}/plain.onnx").graph.node)
    assert ops["QLinearConv"] + ops["QGemm"] == len(CHAIN_LAYERS) - 1, ops


def test_dynamic_gemm_is_dynamic_quantize_matmul_with_its_bias(chain):
    model, cal = chain
    deploy, fake = both(model, cal, {"Gemm_8": "dynamic"} | dict.fromkeys(CHAIN_LAYERS[:3], "float"))
    assert kernels(deploy)["DynamicQuantizeMatMul"] == 1
    lq, x = cal.quant_["Gemm_8"], x_chain()
    f = make_session(with_outputs(model, ["f"])).run(["f"], {"x": x})[0]  # the Gemm's float input
    # DynamicQuantizeLinear: uint8 over [min(f, 0), max(f, 0)] of this run; exact int32 sums
    lo, hi = min(float(f.min()), 0.0), max(float(f.max()), 0.0)
    scale = np.float32((hi - lo) / 255)
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    q = np.clip(np.rint(f / scale) + zero, 0, 255)
    sums = (q - zero).astype(np.int64) @ lq.weight_q.T.astype(np.int64)
    want = sums * (scale * np.asarray(lq.weight.scale, np.float32)) + lq.bias
    for built in (deploy, fake):
        assert np.allclose(run(built, x), want, rtol=1e-5, atol=1e-5)


def test_float_layers_are_the_int8_float_special_case(chain):
    model, cal = chain
    kept = {name: lq for name, lq in cal.quant_.items() if name != "Conv_2"}
    old = make_deploy_model(model, kept, cal.tensor_qparams_, PORTABLE)
    for new in (make_state_model(model, cal.quant_, None, cal.tensor_qparams_, PORTABLE, float_layers={"Conv_2"}),
                make_state_model(model, cal.quant_, {"Conv_2": "float"}, cal.tensor_qparams_, PORTABLE)):
        assert new.SerializeToString() == old.SerializeToString()


def test_states_round_trip_through_metadata_json_config_and_table(chain):
    model, cal = chain
    states = {"Conv_0": "a16w8", "Conv_2": "float_raw", "Conv_4": "float", "Gemm_8": "dynamic"}
    resolved = resolve_states(cal.quant_, states)
    assert model_states(both(model, cal, states)[0]) == resolved
    assert states_from_json(states_to_json(resolved)) == resolved
    config = cal.config.with_states(states)
    assert config.enabled == ["Conv_0", "Gemm_8"]
    data = config_to_dict(config)
    assert data["Conv_2"]["precision"] == "float_raw" and data["Conv_2"]["quant_enable"] is False
    assert config_from_dict(data, cal.config).states == resolved
    old = config_to_dict(cal.config.with_float(["Conv_4"]))  # a file without precision: int8 or float
    assert "precision" not in old["Conv_0"]
    assert config_from_dict(old, cal.config).states == {"Conv_4": LayerState.FLOAT}
    refitted = cal.with_config(config)  # precision is not calibration: nothing is recomputed
    assert set(refitted.quant_) == {"Conv_0", "Gemm_8"}
    table = state_table(resolved).set_index("layer")
    assert table.loc["Conv_0", "activation_bits"] == 16 and table.loc["Conv_4", "weight_bits"] == 32
    assert table["reads_raw"].to_dict() == {"Conv_0": True, "Conv_2": True, "Conv_4": False, "Gemm_8": True}


def test_scale_offset_record_writes_16_bit_activations(dense):
    _, cal = dense
    lq = in_state(cal.quant_["MatMul_2"], "a16w8")
    record = parse_scale_offset_record(format_scale_offset_record({"MatMul_2": lq}))["MatMul_2"]
    assert record["act_type"] == "INT16"
    assert record["offset_d"] == int(lq.activation.zero_point) - 32768 and record["scale_d"] == pytest.approx(
        float(lq.activation.scale), rel=1e-6)


def test_a_written_run_records_each_layer_in_its_state(tmp_path):
    """write_run's scale/offset record: an a16w8 layer's 16-bit input params, float layers absent."""
    x = np.random.default_rng(0).normal(0, 1, (32, 6)).astype(np.float32)
    settings = CalibrationSettings(calib_num=32, weight_rounding="nearest")
    result = calibrate(gemm_matmul_model(), {"x": x}, settings=settings, progress=False, cache=False)
    names = list(result.config.layers)
    config = result.config.with_states({names[0]: "float", names[1]: "a16w8"})
    mixed = dataclasses.replace(result, config=config, calibrator=result.calibrator.with_config(config))
    paths = RunPaths(tmp_path, "gemm")
    write_run(mixed, paths)
    record = parse_scale_offset_record(paths.scale_offset_record.read_text())
    expected = in_state(result.calibrator.quant_[names[1]], "a16w8").activation
    assert list(record) == [names[1]] and record[names[1]]["act_type"] == "INT16"
    assert record[names[1]]["scale_d"] == pytest.approx(float(expected.scale), rel=1e-6)


def test_bad_states_name_the_layer(chain):
    model, cal = chain
    with pytest.raises(ConfigError, match="layer 'Conv_2': state must be one of int8, a16w8"):
        both(model, cal, {"Conv_2": "int4"})
    without = {name: lq for name, lq in cal.quant_.items() if name != "Conv_2"}
    with pytest.raises(ConfigError, match="layer 'Conv_2' has state a16w8 but no calibration"):
        make_state_model(model, without, {"Conv_2": "a16w8"}, cal.tensor_qparams_, PORTABLE)
    with pytest.raises(ConfigError, match="layer 'Relu_1' cannot read its raw input in float"):
        both(model, cal, {"Relu_1": "float_raw"})
    with pytest.raises(ConfigError, match="layer 'Conv_9' in the states is not a node of model"):
        both(model, cal, {"Conv_9": "float"})
    with pytest.raises(ConfigError, match="layer 'Conv_2'.*precision a16w8 needs quant_enable true"):
        config_from_dict({"Conv_2": {"quant_enable": False, "precision": "a16w8"}}, cal.config)
    with pytest.raises(ConfigError, match="states: layer 'Conv_2': state must be one of"):
        states_from_json({"Conv_2": "fp8"})
