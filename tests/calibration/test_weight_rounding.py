"""GPTQ weight rounding and the input covariance it needs, against onnxruntime and hand-made cases."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from synthetic import conv_bn_model

from nbquant.calibration.calibrator import Calibrator, observe, observed_tensors, with_outputs
from nbquant.calibration.config import (
    ActivationQuant,
    ActMethod,
    QuantConfig,
    WeightRounding,
    config_from_dict,
    config_to_dict,
)
from nbquant.calibration.input_covariance import ConvGeometry, CovarianceObserver, conv_rows
from nbquant.calibration.weight_rounding import (
    choose_rounding,
    inverse_cholesky,
    lower_inverse,
    output_error,
    round_gptq,
    round_gptq_dampings,
    round_nearest,
)
from nbquant.errors import ConfigError, NotFittedError
from nbquant.evaluation.session import make_session
from nbquant.graph.fusion import fold_batchnorm
from nbquant.graph.layers import find_layers
from nbquant.graph.load import name_nodes


def test_conv_rows_reproduce_onnxruntime_conv():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 9, 9)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 2, 1, 0], dilations=[2, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rows = conv_rows(x, ConvGeometry((3, 3), (2, 2), (1, 2, 1, 0), (2, 1)))
    assert np.allclose(rows @ w.reshape(4, -1).T, y.transpose(0, 2, 3, 1).reshape(-1, 4), atol=1e-4)


def test_covariance_observer_keeps_two_folds_and_centres():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 1.0, size=(50, 4)) for _ in range(4)]
    obs = CovarianceObserver()
    with pytest.raises(NotFittedError):
        obs.covariance()
    for b in batches:
        obs.partial_fit(b)
    assert obs.folds == 2 and obs.count_.tolist() == [100, 100]
    assert np.allclose(obs.covariance(0), np.cov(np.concatenate(batches[0::2]).T, bias=True), atol=1e-5)
    assert np.allclose(obs.covariance(), np.cov(np.concatenate(batches).T, bias=True), atol=1e-5)
    few = CovarianceObserver(max_rows=16).partial_fit(batches[0])
    assert few.count_[0] == 16


def correlated_inputs(n, k, sample_seed, mix_seed=0):
    """Samples of one correlated distribution (the mixing matrix), drawn with ``sample_seed``."""
    mix = np.random.default_rng(mix_seed).normal(size=(k, k)) * 0.3 + np.eye(k)
    return np.random.default_rng(sample_seed).normal(size=(n, k)) @ mix


def test_gptq_lowers_the_held_out_output_error_on_correlated_inputs():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(8, 32))
    scale = np.abs(w).max(axis=1) / 64
    fit, held_out = (np.cov(correlated_inputs(4000, 32, s).T, bias=True) for s in (3, 4))
    nearest = round_nearest(w, scale, 64)
    gptq = round_gptq(w, fit, scale, 64)
    assert np.abs(gptq).max() <= 64
    assert output_error(w, gptq, scale, held_out) < 0.7 * output_error(w, nearest, scale, held_out)


def reference_gptq(w, cov, scale, qmax, damping):
    """GPTQ as written in the paper, one damping, one column at a time (no lazy blocks): the reference."""
    order = np.argsort(-np.diag(cov), kind="stable")
    w, h = w[:, order].astype(np.float64), cov[np.ix_(order, order)].astype(np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead], w[:, dead] = 1.0, 0.0
    h += damping * np.mean(np.diag(h)) * np.eye(len(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros(w.shape, np.int64)
    for i in range(w.shape[1]):
        q[:, i] = np.clip(np.rint(w[:, i] / scale), -qmax, qmax)
        err = (w[:, i] - q[:, i] * scale) / upper[i, i]
        w[:, i:] -= np.outer(err, upper[i, i:])
    return q[:, np.argsort(order)]


def test_gptq_for_all_dampings_at_once_equals_one_damping_at_a_time():
    rng = np.random.default_rng(8)
    w = rng.normal(size=(24, 300))  # 300 columns: three lazy blocks, the last one partial
    scale = np.abs(w).max(axis=1) / 64
    cov = np.cov(correlated_inputs(2000, 300, 9).T, bias=True)
    cov[7], cov[:, 7] = 0.0, 0.0  # a dead input: its weights round to 0
    dampings = (0.01, 0.1, 1.0)
    together = round_gptq_dampings(w, cov, scale, 64, dampings)
    assert together.shape == (3, 24, 300) and together.dtype == np.int64 and not together[:, :, 7].any()
    for damping, q in zip(dampings, together):
        assert np.array_equal(q, round_gptq(w, cov, scale, 64, damping))
        assert np.array_equal(q, reference_gptq(w, cov, scale, 64, damping))
    assert not np.array_equal(together[0], together[2])  # the dampings do lead to different integers


def test_inverse_cholesky_factors_the_damped_inverse():
    rng = np.random.default_rng(10)
    h = np.cov(correlated_inputs(500, 150, 11).T, bias=True)
    shifts = [0.01 * np.mean(np.diag(h)), 1.0]
    upper = inverse_cholesky(h, shifts)
    for shift, u in zip(shifts, upper):
        assert np.allclose(u, np.linalg.cholesky(np.linalg.inv(h + shift * np.eye(150))).T, rtol=1e-9, atol=1e-9)
    lower = np.tril(rng.normal(size=(2, 150, 150))) + 20 * np.eye(150)
    assert np.allclose(lower_inverse(lower) @ lower, np.eye(150), atol=1e-12)


def test_choose_rounding_keeps_nearest_where_gptq_does_not_generalise():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(8, 32))
    scale = np.abs(w).max(axis=1) / 64
    shared = tuple(np.cov(correlated_inputs(4000, 32, s).T, bias=True) for s in (6, 7))
    q, how = choose_rounding(w, scale, 64, shared, (shared[0] + shared[1]) / 2)
    assert how.startswith("gptq(") and np.array_equal(q, round_gptq(w, (shared[0] + shared[1]) / 2, scale, 64,
                                                                      float(how[5:-1])))
    # one fold sees 32 copies of one input, the other independent inputs: what GPTQ learns on the
    # first (errors may cancel across columns) is wrong on the second
    decoy = (np.ones((32, 32)) + 1e-3 * np.eye(32), np.eye(32))
    q, how = choose_rounding(w, scale, 64, decoy, np.eye(32))
    assert how == "nearest" and np.array_equal(q, round_nearest(w, scale, 64))


def test_calibrator_rounds_dense_convs_with_gptq_and_depthwise_to_nearest():
    model = fold_batchnorm(name_nodes(conv_bn_model())[0])[0]
    layers = find_layers(model)
    names = observed_tensors(model, layers)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    covs = {"Conv_0": CovarianceObserver(ConvGeometry((3, 3), pads=(1, 1, 1, 1)))}
    observers, means = observe(make_session(with_outputs(model, names)), names, inputs,
                               mean_names=[layer.input for layer in layers], extra=[("x", covs["Conv_0"])])
    config = QuantConfig.default({layer.name: layer.op for layer in layers}, ActivationQuant(ActMethod.MINMAX),
                                 weight_max={"Conv_0": 64}, rounding=WeightRounding.GPTQ)
    cal = Calibrator(config).fit(model, observers, means, covs)
    rounding = cal.table_.set_index("layer")["weight_rounding"]
    assert rounding["Conv_3"] == "nearest"  # depthwise: no covariance, nearest
    assert rounding["Conv_0"] in ("nearest", "gptq(0.01)", "gptq(0.1)", "gptq(1)")
    assert np.abs(cal.quant_["Conv_0"].weight_q).max() <= 64
    saved = config_to_dict(cal.config)
    assert saved["Conv_0"]["weight_quant_params"]["wts_algo"] == "gptq"
    assert config_from_dict(saved, config).layers["Conv_0"].weight.rounding is WeightRounding.GPTQ
    with pytest.raises(ConfigError, match="wts_algo must be one of nearest, gptq, got 'adaround'"):
        config_from_dict({"Conv_0": {"weight_quant_params": {"wts_algo": "adaround"}}}, config)
