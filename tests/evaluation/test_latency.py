"""Latency costs: onnxruntime's profile read and attributed to layers, and the pure predictions over the
cost table, on a small Conv chain (structure only: timings are measured by benchmarks/precision.py)."""

from __future__ import annotations

import collections
import json
import time

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import numpy_helper, parser

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.errors import ConfigError, ModelError
from nbquant.evaluation.latency import (
    attribute,
    cost_table,
    layer_bytes,
    measure_latency,
    profile_layers,
    profile_nodes,
    read_profile,
    rounds_agree,
    timed_rounds,
)
from nbquant.evaluation.latency_model import (
    LayerCosts,
    affine_fit,
    attribute_nodes,
    crossing_rates,
    crossings,
    layer_neighbours,
    predict_latency,
    predict_size,
    probe_float_layers,
)
from nbquant.evaluation.session import KEEP_FLOAT_OPTIMIZERS
from nbquant.search.steps import config_model

INTEGER_KERNELS = {"QLinearConv", "QGemm", "QLinearMatMul"}


def chain_model(seed: int = 0, size: int = 16) -> onnx.ModelProto:
    """Conv 3x3 -> Relu -> depthwise Conv -> Relu -> pointwise Conv -> Add(skip) -> pool -> Gemm."""
    rng = np.random.default_rng(seed)
    model = parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, {size}, {size}] x) => (float[N, 5] y) {{
        c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
        r1 = Relu (c1)
        c2 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3], group = 16> (r1, w2, b2)
        r2 = Relu (c2)
        c3 = Conv <kernel_shape = [1, 1]> (r2, w3, b3)
        a = Add (c3, r1)
        p = GlobalAveragePool (a)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w4, b4)
    }}""")
    weights = {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (16, 1, 3, 3), "b2": (16,), "w3": (16, 16, 1, 1),
               "b3": (16,), "w4": (5, 16), "b4": (5,)}
    model.graph.initializer.extend(numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)
                                   for name, shape in weights.items())
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def chain():
    """The chain calibrated (every layer int8), a builder of its mixed deploy models, and a batch of 2."""
    x = np.random.default_rng(1).normal(size=(16, 3, 16, 16)).astype(np.float32)
    run = calibrate(chain_model(), {"x": x}, progress=False, cache=False,
                    settings=CalibrationSettings(calib_num=16, weight_rounding="nearest"))
    calibrator = run.calibrator

    def build(float_layers):
        return config_model(run.prepared.model, calibrator.quant_, set(float_layers), calibrator.tensor_qparams_,
                            run.config.deploy_target, True)
    return run, build, x[:2]


def names_of(run):
    return [layer.name for layer in run.prepared.layers]


def test_attribute_nodes_by_name_prefix_and_by_the_tensor_a_layer_writes():
    layers = ["Conv_1", "Conv_12", "/b/Conv"]
    nodes = ["Conv_12_token_4", "Conv_1", "Conv_1/input/QuantizeLinear", "/b/Conv/output/DequantizeLinear/duplicated",
             "r1_nchwc", "c12", "Transpose_token_3", "ReorderOutput", "Conv_3"]
    assert attribute_nodes(nodes, layers, {"r1": "Conv_1", "c12": "Conv_12"}) == [
        "Conv_12", "Conv_1", "Conv_1", "/b/Conv", "Conv_1", "Conv_12", "other", "other", "other"]


def test_read_profile_keeps_the_runs_after_warmup(tmp_path):
    def node(name, dur, ts, shape=(1, 4)):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "ts": ts,
                "args": {"op_name": "Conv", "input_type_shape": [{"float": list(shape)}],
                         "output_type_shape": [{"float": [1, 2]}]}}
    events = []
    for run, (a, b) in enumerate([(1000, 1000), (10, 20), (30, 40), (20, 60)]):  # the first run is warm-up
        start = 1000 * run
        events += [{"cat": "Session", "name": "model_run", "ts": start, "dur": a + b + 5},
                   node("a", a, start + 1), node("b", b, start + 2)]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    nodes, run_us = read_profile(path, skip=1)
    assert nodes["node"].tolist() == ["a", "b"]
    assert nodes["us"].tolist() == [20.0, 40.0]
    assert nodes["elements"].tolist() == [4, 4] and nodes["out_elements"].tolist() == [2, 2]
    assert run_us == 75.0  # runs of 35, 75 and 85 us
    nodes, run_us = read_profile(path, skip={0, 2})  # the first run of a turn is skipped too
    assert nodes["us"].tolist() == [15.0, 40.0] and run_us == 60.0
    nodes, run_us = read_profile(path, skip=1, rounds={1: 0, 2: 1, 3: 1})  # round 0 (run 1) was the fastest
    assert nodes["us"].tolist() == [10.0, 20.0] and run_us == 35.0
    with pytest.raises(ModelError, match="4 runs, all of them skipped"):
        read_profile(path, skip=4)


def test_every_layer_is_found_in_the_float_and_the_int8_profiles(chain):
    run, build, x = chain
    names = names_of(run)
    float_nodes = attribute(profile_nodes(run.prepared.model, x, runs=3)[0], run.prepared.model, run.prepared.layers)
    int8_nodes = attribute(profile_nodes(build(()), x, runs=3)[0], run.prepared.model, run.prepared.layers)
    for name in names:
        float_ops = set(float_nodes.loc[float_nodes["layer"] == name, "op"])
        int8_ops = set(int8_nodes.loc[int8_nodes["layer"] == name, "op"])
        assert float_ops and not float_ops & INTEGER_KERNELS, (name, float_ops)
        assert int8_ops & INTEGER_KERNELS, (name, int8_ops)
    table = profile_layers(build(()), x, float_model=run.prepared.model, runs=3)
    assert table["layer"].tolist() == names + ["other"]
    assert (table.set_index("layer").loc[names, "nodes"] >= 1).all()
    assert table["nodes"].sum() == len(int8_nodes)  # every node counted once
    assert (table["us"] >= 0).all()


def test_a_layer_left_in_float_runs_in_float(chain, tmp_path):
    """onnxruntime gives a float layer between a per-tensor DequantizeLinear and a QuantizeLinear per-tensor
    int8 weights of its own (WeightBiasQuantization); the per-axis DequantizeLinear nbquant gives a float layer
    keeps it in float in any session, nbquant's and a user's."""
    run, build, x = chain
    middle = names_of(run)[1]  # the depthwise Conv: reads Conv_0's requantized output, feeds Conv_4's input Q
    mixed = build([middle])
    nodes = attribute(profile_nodes(mixed, x, runs=2)[0], run.prepared.model, run.prepared.layers)
    assert not set(nodes.loc[nodes["layer"] == middle, "op"]) & INTEGER_KERNELS
    assert set(nodes.loc[nodes["layer"] != middle, "op"]) & INTEGER_KERNELS

    def integer_convs(disabled):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(mixed.SerializeToString(), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled))
        ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
        return ops["QLinearConv"]
    assert integer_convs(()) == integer_convs(KEEP_FLOAT_OPTIMIZERS) == 2


def test_predictions_reproduce_both_profiles_and_sizes(chain):
    run, build, x = chain
    names = names_of(run)
    probe = probe_float_layers(layer_neighbours(run.prepared.model, run.prepared.layers))
    costs = cost_table(run.prepared.model, build(()), x, probe_model=build(probe), runs=3)
    assert list(costs.layers.index) == names and costs.batch == 2
    assert (costs.layers[["int8_us", "float_us"]] >= 0).all().all() and costs.total_us["int8"] > 0
    assert predict_latency(costs, (), kernels=True) * 1000 == pytest.approx(costs.total_us["int8"])
    assert predict_latency(costs, names, kernels=True) * 1000 == pytest.approx(costs.total_us["float"])
    assert predict_latency(costs, ()) == pytest.approx(costs.wall_ms["int8"])  # scaled to the measured wall times
    assert predict_latency(costs, names) == pytest.approx(costs.wall_ms["float"])
    assert crossings(costs, names).empty or not crossings(costs, names)[["cross_in", "cross_out"]].any().any()
    float_bytes = sum(numpy_helper.to_array(i).nbytes for i in run.prepared.model.graph.initializer)
    deploy_bytes = sum(numpy_helper.to_array(i).nbytes for i in build(()).graph.initializer)
    assert predict_size(costs, names) == float_bytes
    assert predict_size(costs, ()) == deploy_bytes
    assert (costs.layers["int8_bytes"] < costs.layers["float_bytes"]).all()
    with pytest.raises(ConfigError, match="nope"):
        predict_latency(costs, ["nope"])


def hand_costs() -> LayerCosts:
    """a -> b -> c, costs chosen by hand."""
    table = pd.DataFrame({"kind": ["conv"] * 3, "int8_us": [10.0, 20.0, 30.0], "float_us": [40.0, 50.0, 60.0],
                          "int8_bytes": [1, 2, 3], "float_bytes": [4, 8, 12], "in_elements": [1, 2, 3],
                          "out_elements": [2, 3, 4], "cross_in_us": [1.0, 2.0, 3.0], "cross_out_us": [5.0, 6.0, 7.0]},
                         index=pd.Index(["a", "b", "c"], name="layer"))
    return LayerCosts(table, {"a": (), "b": ("a",), "c": ("b",)}, {"int8": 100.0, "float": 400.0}, 1000,
                      {}, batch=1, threads=1)


def test_predict_latency_adds_states_other_ops_and_crossings_by_hand():
    costs = hand_costs()
    assert predict_latency(costs, []) == pytest.approx((10 + 20 + 30 + 100) / 1000)
    assert predict_latency(costs, ["a", "b", "c"]) == pytest.approx((40 + 50 + 60 + 400) / 1000)
    # b alone: 10 + 50 + 30, other 100 + (400 - 100) / 3, crossings in (2) and out (6)
    assert predict_latency(costs, ["b"]) == pytest.approx((90 + 200 + 8) / 1000)
    # measured wall times twice the int8 profile, the float one's own: int8 times x 2, crossings x 1.5
    costs.wall_ms = {"int8": 2 * 160 / 1000, "float": 550 / 1000}
    assert costs.scale == {"int8": 2.0, "float": 1.0}
    assert predict_latency(costs, []) == pytest.approx(0.32)
    assert predict_latency(costs, ["b"]) == pytest.approx((80 + 50 + 2 / 3 * 200 + 1 / 3 * 400 + 1.5 * 8) / 1000)
    assert predict_latency(costs, ["b"], kernels=True) == pytest.approx((90 + 200 + 8) / 1000)
    again = LayerCosts.from_dict(json.loads(json.dumps(costs.to_dict())))
    pd.testing.assert_frame_equal(again.layers, costs.layers)
    assert again.scale == costs.scale and predict_latency(again, ["b"]) == predict_latency(costs, ["b"])
    # a, b: no crossing between them; a has no input crossing (nothing feeds it), b crosses out
    cross = crossings(costs, ["a", "b"])
    assert cross.to_dict("index") == {"a": {"cross_in": False, "cross_out": False, "us": 0.0},
                                      "b": {"cross_in": False, "cross_out": True, "us": 6.0}}
    assert predict_size(costs, ["b"]) == 1 + 8 + 3 + 1000
    assert "3 layers" in repr(costs)
    assert costs.top(1).index.tolist() == ["a"]  # float minus int8: 30, 30, 30 -> the first


def test_affine_fit_and_crossing_rates():
    assert affine_fit(pd.DataFrame({"us": [5.0], "elements": [100]})) == (0.0, 0.05)
    assert affine_fit(pd.DataFrame({"us": [5.0, 3.0], "elements": [100, 200]})) == (4.0, 0.0)
    assert affine_fit(pd.DataFrame({"us": [], "elements": []})) is None
    nodes = pd.DataFrame({"op": ["QuantizeLinear", "QuantizeLinear", "Transpose"], "us": [3.0, 5.0, 2.0],
                          "elements": [100, 200, 100]})
    rates = crossing_rates([nodes])
    assert rates["QuantizeLinear"] == pytest.approx((1.0, 0.02))
    assert rates["DequantizeLinear"] == rates["QuantizeLinear"]  # none ran unfused: Q's rate
    assert rates["ReorderInput"] == (0.0, 0.0)


def test_probe_layers_are_never_neighbours(chain):
    run, _, _ = chain
    neighbours = layer_neighbours(run.prepared.model, run.prepared.layers)
    names = names_of(run)
    assert neighbours == {names[0]: (), names[1]: (names[0],), names[2]: (names[1],),
                          names[3]: tuple(sorted({names[0], names[2]}))}  # the Add joins the skip
    probe = set(probe_float_layers(neighbours))
    assert probe and all(not probe & set(neighbours[name]) for name in probe)


def test_layer_bytes_of_each_state(chain):
    run, build, _ = chain
    floats = layer_bytes(run.prepared.model, run.prepared.layers, quantized=False)
    int8 = layer_bytes(build(()), run.prepared.layers, quantized=True)
    first = run.prepared.layers[0]
    assert floats[first.name] == 4 * (16 * 3 * 3 * 3 + 16)
    assert 16 * 3 * 3 * 3 + 4 * 16 < int8[first.name] < floats[first.name]


def test_measure_latency_rows_per_batch_and_model(chain):
    run, build, x = chain
    frame = measure_latency(build(()), x, batch_sizes=(1, 3), runs=4, warmup=1)
    assert frame["batch"].tolist() == [1, 3] and frame["runs"].tolist() == [4, 4]
    assert (frame["min_ms"] > 0).all() and (frame["min_ms"] <= frame["median_ms"]).all()
    both = measure_latency({"int8": build(()), "float": run.prepared.model}, {"x": x}, batch_sizes=(2,), runs=3)
    assert both["model"].tolist() == ["int8", "float"]
    with pytest.raises(ConfigError, match="batch"):
        measure_latency(run.prepared.model, x, batch_sizes=(0,))


class Alternating:
    """A stand-in session: runs take 1 ms, except in every other block of ``block`` runs (10 ms)."""

    def __init__(self, block: int):
        self.block, self.calls = block, 0

    def run(self, outputs, feeds):
        self.calls += 1
        time.sleep(0.01 if (self.calls // self.block) % 2 else 0.001)


def test_rounds_agree_when_the_two_best_round_medians_are_close():
    assert rounds_agree({"a": [[1.0, 1.2], [1.05, 1.0], [3.0, 3.0]], "b": [[2.0], [2.1]]})
    assert not rounds_agree({"a": [[1.0, 1.0], [1.3, 1.3]]})  # 30 % apart: one round was disturbed
    assert rounds_agree({"a": [[1.0]]}) and rounds_agree({"a": [[1.0], []]})  # nothing to compare yet


def test_timed_rounds_stop_after_the_extra_rounds_allowed():
    for extra in (0, 3):
        times = timed_rounds({"m": Alternating(block=2)}, {"m": {}}, count=4, rounds=2, warmup=1, extra_rounds=extra)
        assert 2 <= len(times["m"]) <= 2 + extra and all(len(one) == 2 for one in times["m"])
