"""The calibration run on the real model and images (NBQUANT_MODEL / NBQUANT_DATA)."""

import json

import numpy as np
import onnx
import pytest

from nbquant.calibration.config import QuantConfig, config_from_dict
from nbquant.evaluation.accuracy import evaluate
from nbquant.files import read_json
from nbquant.quantize.record_files import parse_scale_offset_record, read_quant_map

pytestmark = pytest.mark.real


def test_run_folder_holds_every_file(real_calibration):
    paths = real_calibration.paths
    for f in (paths.fake_quant_model, paths.deploy_model, paths.quant_json, paths.config,
              paths.scale_offset_record, paths.log_file):
        assert f.is_file() and f.stat().st_size > 0, f
    assert not list(paths.save_dir.glob("temp*")), "the temp folder is removed at the end"
    log = paths.log_file.read_text()
    assert "calibrating efficientnet_lite0" in log and "[nbquant]:" in log
    assert "preprocessing: resize 256 (round, bilinear), crop 224, RGB NCHW" in log and "int8 flags:" in log


def test_models_keep_io_names_and_pass_checker(real_calibration, real_model_path):
    original = onnx.load(str(real_model_path))
    for path in (real_calibration.paths.fake_quant_model, real_calibration.paths.deploy_model):
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == [i.name for i in original.graph.input]
        assert [o.name for o in model.graph.output] == [o.name for o in original.graph.output]
    deploy = onnx.load(str(real_calibration.paths.deploy_model))
    int8 = [i for i in deploy.graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("weight_quantized")]
    assert len(int8) == 50
    assert real_calibration.paths.deploy_model.stat().st_size < 0.35 * real_model_path.stat().st_size


def test_quantized_accuracy_on_1000_images(real_calibration, real_data):
    fake = evaluate(real_calibration.fake_quant_model, real_data, progress=False)
    deploy = evaluate(real_calibration.deploy_model, real_data, progress=False)
    assert fake.n == deploy.n == 1000
    assert fake.top1 >= 0.880, fake
    assert abs(int(deploy.samples["correct"].sum()) - int(fake.samples["correct"].sum())) <= 3, (fake, deploy)


def test_layer_table_and_files_agree(real_calibration):
    table = real_calibration.layers
    assert len(table) == 50 and table["enabled"].all()
    assert (table["act_scale"] > 0).all() and (table["clip_max"] <= table["act_max"] + 1e-6).all()
    stem = table.iloc[0]
    assert stem["layer"] == "/_conv_stem/Conv" and stem["act_min"] < 0 < stem["act_max"]
    records = parse_scale_offset_record(real_calibration.paths.scale_offset_record.read_text())
    assert list(records) == list(table["layer"])
    rec = records["/_conv_stem/Conv"]
    assert rec["scale_d"] == pytest.approx(stem["act_scale"], rel=1e-6)
    assert rec["offset_d"] == stem["act_zero_point"] - 128
    assert len(rec["scale_w"]) == 32 and rec["offset_w"] == [0] * 32
    quant_map = read_quant_map(read_json(real_calibration.paths.quant_json))
    assert len(quant_map["layers"]) == 50 and quant_map["fusions"] == []  # BN is already folded


def test_edited_config_is_accepted_by_the_next_run(real_calibration, real_model_path, real_data, tmp_path):
    from nbquant.calibration.run import calibrate
    data = read_json(real_calibration.paths.config)
    data["/_fc/Gemm"]["quant_enable"] = False
    data["/_conv_stem/Conv"]["activation_quant_params"]["act_algo"] = "minmax"
    edited = tmp_path / "config.json"
    edited.write_text(json.dumps(data))
    run = calibrate(real_model_path, real_data, save_dir=tmp_path / "run", config=edited, progress=False)
    table = run.layers.set_index("layer")
    assert not table.loc["/_fc/Gemm", "enabled"] and table.loc["/_conv_stem/Conv", "act_method"] == "minmax"
    gemm = next(n for n in run.fake_quant_model.graph.node if n.name == "/_fc/Gemm")
    assert "DequantizeLinear" not in {p.op_type for p in run.fake_quant_model.graph.node if p.output[0] in gemm.input}
    assert read_json(run.paths.config)["/_fc/Gemm"]["quant_enable"] is False
    # the reference tool's own algorithm names are read too
    data["/_conv_stem/Conv"]["activation_quant_params"]["act_algo"] = "ifmr"
    config = config_from_dict(data, real_calibration.config)
    assert isinstance(config, QuantConfig) and config.layers["/_conv_stem/Conv"].activation.method.value == "mse"


def test_calibration_memory_is_flat(real_calibration):
    hist = next(iter(real_calibration.calibrator.observers_.values()))
    assert hist.counts_.size == 4096 and hist.count_ == 100 * 3 * 224 * 224
    assert np.isclose(hist.counts_.sum(), hist.count_)


def test_layers_round_in_parallel_to_the_same_integers_as_in_series(real_model_path, real_data, monkeypatch):
    """GPTQ runs the layers on worker threads with a single-threaded BLAS (nbquant.threads): the integers and
    the rounding each layer chose are those of one layer after another."""
    import nbquant.threads
    from nbquant.calibration.calibrator import Calibrator
    from nbquant.calibration.run import CalibrationSettings, build_config, collect_statistics
    from nbquant.data.binding import bind_data
    from nbquant.graph.prepare import prepare_model

    prepared = prepare_model(real_model_path)
    data, pre = bind_data(prepared, real_data, None)
    settings = CalibrationSettings()
    histograms, means, covariances = collect_statistics(prepared, data.spread(20), pre, settings, progress=False)
    config = build_config(prepared, settings)
    parallel = Calibrator(config).fit(prepared.model, histograms, means, covariances)
    monkeypatch.setattr(nbquant.threads, "usable_cpus", lambda: 1)
    series = Calibrator(config).fit(prepared.model, histograms, means, covariances)
    assert len(parallel.roundings_) >= 30 and parallel.roundings_.keys() == series.roundings_.keys()
    assert {how for _, how in parallel.roundings_.values()} & {"gptq(0.01)", "gptq(0.1)", "gptq(1)"}
    for name, quant in parallel.layer_quant_.items():
        assert np.array_equal(quant.weight_q, series.layer_quant_[name].weight_q), name
        assert quant.rounding == series.layer_quant_[name].rounding, name
