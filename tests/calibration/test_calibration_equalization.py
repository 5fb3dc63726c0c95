"""Cross-layer equalization as a calibration option: settings, config, layer table, cache and the
quantized models it gives (synthetic graphs)."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from synthetic import relu6_chain_model

from nbquant.calibration.equalization import Equalize
from nbquant.calibration.run import CalibrationSettings, build_config, calibrate, fit_calibrator
from nbquant.data.tensors import TensorDataset
from nbquant.errors import ConfigError
from nbquant.evaluation.session import fused_ops, make_session
from nbquant.files import read_json
from nbquant.graph.prepare import prepare_model
from nbquant.quantize.numerics import qparams_from_range, quantize

PER_TENSOR = CalibrationSettings(calib_num=16, batch_size=8, per_channel=False)


def arrays(seed=0, n=16):
    return {"x": np.random.default_rng(seed).normal(0, 3, (n, 3, 8, 8)).astype(np.float32)}


def outputs(model, x):
    return make_session(model).run(None, x)[0]


def test_auto_equalizes_per_tensor_weights_only():
    assert Equalize.AUTO.resolve(per_channel=False) and not Equalize.AUTO.resolve(per_channel=True)
    assert Equalize.ON.resolve(per_channel=True) and not Equalize.OFF.resolve(per_channel=False)
    with pytest.raises(ConfigError, match="equalize must be one of auto, on, off"):
        CalibrationSettings(equalize="yes")


def test_calibration_records_it_and_shows_what_it_changed(tmp_path):
    run = calibrate(relu6_chain_model(), arrays(), save_dir=tmp_path, settings=PER_TENSOR, progress=False)
    assert run.config.equalize and read_json(run.paths.config)["cross_layer_equalization"] is True
    table = run.layers.set_index("layer")
    assert table.loc["c1", "equalized_with"] == "c2" and table.loc["c2", "equalized_with"] == "c1, c3"
    assert (table["weight_spread"] < table["weight_spread_before"]).all(), table
    assert table.loc["c2", "bias_absorbed_max"] > 0  # its high bias went into c3's
    plain = calibrate(relu6_chain_model(), arrays(), settings=CalibrationSettings(calib_num=16, batch_size=8),
                      progress=False)  # per channel: auto is off
    assert plain.config.equalize is False and "equalized_with" not in plain.layers
    np.testing.assert_allclose(plain.layers["weight_spread"], table["weight_spread_before"], rtol=1e-5)
    assert not any(node.op_type == "Min" for node in plain.deploy_model.graph.node)


def test_the_per_channel_clip_runs_on_the_integers(tmp_path):
    """The equalized ReLU6's Min sits between QuantizeLinear and DequantizeLinear, on uint8, in both
    quantized models; it computes what quantizing the float Min computes; onnxruntime still fuses every Conv."""
    run = calibrate(relu6_chain_model(), arrays(), save_dir=tmp_path, settings=PER_TENSOR, progress=False)
    for model in (run.fake_quant_model, run.deploy_model):
        producers = {out: node for node in model.graph.node for out in node.output}
        mins = [node for node in model.graph.node if node.op_type == "Min"]
        assert len(mins) == 1 and producers[mins[0].input[0]].op_type == "QuantizeLinear"
        points = next(i for i in model.graph.initializer if i.name == mins[0].input[1])
        assert points.data_type == onnx.TensorProto.UINT8
    off = calibrate(relu6_chain_model(), arrays(), save_dir=tmp_path / "off", progress=False,
                    settings=CalibrationSettings(calib_num=16, batch_size=8, per_channel=False, equalize="off"))
    fused = fused_ops(run.paths.deploy_model, tmp_path)["QLinearConv"]
    assert fused == fused_ops(off.paths.deploy_model, tmp_path)["QLinearConv"] == 2  # the last is the output
    # the same model with the float Min ahead of the QuantizeLinear gives the same bits
    fake = run.fake_quant_model
    moved = onnx.ModelProto()
    moved.CopyFrom(fake)
    integer_min = next(node for node in moved.graph.node if node.op_type == "Min")
    q = next(node for node in moved.graph.node if node.output[0] == integer_min.input[0])
    clip_points = run.prepared.model.graph.initializer
    float_points = next(i for i in clip_points if i.name.endswith("per_channel_clip_points"))
    moved.graph.initializer.append(float_points)
    float_min = onnx.helper.make_node("Min", [q.input[0], float_points.name], ["float_min"], name="float_min")
    q.input[0] = "float_min"
    for node in moved.graph.node:
        node.input[:] = [q.output[0] if name == integer_min.output[0] else name for name in node.input]
    moved.graph.node.remove(integer_min)
    moved.graph.node.insert(list(moved.graph.node).index(q), float_min)
    x = arrays(seed=3)
    np.testing.assert_array_equal(outputs(moved, x), outputs(fake, x))
    expected = outputs(fake, x)
    np.testing.assert_allclose(outputs(run.deploy_model, x), expected, atol=0.05 * np.abs(expected).max())


def test_quantize_commutes_with_min():
    x = np.random.default_rng(0).uniform(-1, 8, (1000, 4))
    c = np.array([0.3, 2.2, 5.0, 7.5])
    p = qparams_from_range(0.0, 6.0)
    np.testing.assert_array_equal(quantize(np.minimum(x, c), p), np.minimum(quantize(x, p), quantize(c, p)))
    assert (np.minimum(x, c) != x).any() and (quantize(x, p) == 255).any()


def test_a_config_file_decides_and_the_cache_keeps_them_apart(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nbquant")
    cache = tmp_path / "cache"
    off = calibrate(relu6_chain_model(), arrays(), save_dir=tmp_path / "off", progress=False, cache=cache,
                    settings=CalibrationSettings(calib_num=16, batch_size=8, per_channel=False, equalize="off"))
    caplog.clear()
    config = read_json(off.paths.config)
    config["cross_layer_equalization"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    on = calibrate(relu6_chain_model(), arrays(), progress=False, cache=cache, config=tmp_path / "config.json",
                   settings=CalibrationSettings(calib_num=16, batch_size=8, per_channel=False, equalize="off"))
    assert on.config.equalize and not off.config.equalize
    assert not any("from the cache" in r.getMessage() for r in caplog.records), "statistics of the other model"
    assert on.layers.set_index("layer").loc["c2", "act_max"] != off.layers.set_index("layer").loc["c2", "act_max"]
    config["cross_layer_equalization"] = "yes"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="cross_layer_equalization must be true or false"):
        calibrate(relu6_chain_model(), arrays(), progress=False, config=tmp_path / "config.json", settings=PER_TENSOR)


def test_an_equalized_model_is_not_calibrated_as_the_original():
    prepared = prepare_model(relu6_chain_model())
    data = TensorDataset(arrays())
    settings = PER_TENSOR
    calibrator, _ = fit_calibrator(prepared, data, None, settings, build_config(prepared, settings), progress=False)
    assert prepared.equalization is not None and calibrator.equalization is prepared.equalization
    again, _ = fit_calibrator(prepared, data, None, settings, build_config(prepared, settings), progress=False)
    assert (again.table["weight_spread"] == calibrator.table["weight_spread"]).all(), "equalized once"
    off = CalibrationSettings(calib_num=16, batch_size=8, per_channel=False, equalize="off")
    with pytest.raises(ConfigError, match="is equalized but the config says"):
        fit_calibrator(prepared, data, None, off, build_config(prepared, off), progress=False)


def test_auto_calibration_searches_the_equalized_model(tmp_path):
    """The search stage quantizes, ranks and writes the equalized model fit_calibrator left in its
    PreparedModel, and its record names the setting (a resume with another one is refused)."""
    from nbquant.search.auto import AutoSettings, auto_calibrate
    from nbquant.search.record import read_record
    model_path = tmp_path / "chain.onnx"
    onnx.save(relu6_chain_model(), model_path)
    result = auto_calibrate(model_path, arrays(n=32), calib_settings=PER_TENSOR, save_dir=tmp_path / "run",
                            settings=AutoSettings(max_drop=0.5, rank_num=8, sensitivity="output"), progress=False)
    assert result.ok and "equalized_with" in result.calibrator.table
    final = onnx.load(tmp_path / "run" / "results" / "chain_deploy_model.onnx")
    assert [node.op_type for node in final.graph.node].count("Min") == 1
    assert read_json(tmp_path / "run" / "results" /
                     "accuracy_based_auto_calibration_final_config.json")["cross_layer_equalization"] is True
    assert read_record(tmp_path / "run" / "log" / "accuracy_based_auto_calibration_record.json") \
        .settings["calib_equalize"] == "auto"
