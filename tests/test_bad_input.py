"""Bad input: one clear line naming the file, layer or setting, exit code 2, no result files."""

import json

import numpy as np
import onnx
import pytest
from PIL import Image
from synthetic import conv_bn_model, no_layer_model

from nbquant.cli import main

SMALL = ["--resize", "8", "--crop", "8", "--calib-num", "4", "--eval-num", "0"]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_bn_model(), path)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def no_results(save_dir):
    return not (save_dir / "results").exists() or not any((save_dir / "results").iterdir())


def test_good_run_writes_results(capsys, model_file, images, tmp_path):
    code, out, err = run(capsys, "calibrate", model_file, "--data", images, "--save-dir", tmp_path / "out", *SMALL,
                         "--deploy-target", "portable")
    assert code == 0, err
    assert (tmp_path / "out/results/tiny_deploy_model.onnx").is_file()
    assert "2 of 2 layers in int8" in out and "deploy target portable" in out
    config = json.loads((tmp_path / "out/tmp/config.json").read_text())
    assert config["deploy_target"] == "portable" and config["Conv_0"]["weight_quant_params"]["weight_max"] == 64


def test_cpu_command_prints_the_probe(capsys):
    code, out, _ = run(capsys, "cpu")
    assert code == 0
    assert "int8 flags:" in out and "depthwise5x5s2" in out and "steps_pair_safe" in out
    assert "deploy target auto picks: " in out


def test_bad_deploy_target_is_named(capsys, model_file, images, tmp_path):
    with pytest.raises(SystemExit):
        run(capsys, "calibrate", model_file, "--data", images, "--deploy-target", "fast")
    assert "invalid choice: 'fast'" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("missing", "missing.onnx does not exist"),
    ("text", "notes.onnx is not"),
    ("truncated", "cut.onnx"),
    ("no_layer", "has no quantizable layer"),
])
def test_bad_model(capsys, case, message, model_file, images, tmp_path):
    path = {"missing": tmp_path / "missing.onnx", "text": tmp_path / "notes.onnx",
            "truncated": tmp_path / "cut.onnx", "no_layer": tmp_path / "relu.onnx"}[case]
    if case == "text":
        path.write_text("not a model")
    elif case == "truncated":
        path.write_bytes(model_file.read_bytes()[:300])
    elif case == "no_layer":
        onnx.save(no_layer_model(), path)
    save_dir = tmp_path / "out"
    code, _, err = run(capsys, "calibrate", path, "--data", images, "--save-dir", save_dir, *SMALL)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert no_results(save_dir)


def test_empty_folder(capsys, model_file, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "calibrate", model_file, "--data", tmp_path / "empty", "--save-dir",
                       tmp_path / "out", *SMALL)
    assert code == 2 and "no images" in err and "empty" in err
    assert no_results(tmp_path / "out")


def test_no_decodable_image(capsys, model_file, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(5):
        (folder / f"img{i}.jpg").write_bytes(b"not a jpeg")
    code, _, err = run(capsys, "calibrate", model_file, "--data", folder, "--save-dir", tmp_path / "out", *SMALL)
    assert code == 2 and "could be decoded" in err
    assert no_results(tmp_path / "out")


def test_undecodable_image_among_good_ones_is_skipped(capsys, caplog, model_file, images, tmp_path):
    (images / "img0.png").write_bytes(b"\x89PNG broken")
    code, _, err = run(capsys, "calibrate", model_file, "--data", images, "--save-dir", tmp_path / "out", *SMALL)
    assert code == 0, err
    assert any("img0.png" in r.getMessage() for r in caplog.records)


def test_preprocessing_size_mismatch(capsys, model_file, images, tmp_path):
    code, _, err = run(capsys, "calibrate", model_file, "--data", images, "--save-dir", tmp_path / "out",
                       "--resize", "16", "--crop", "16", "--calib-num", "4")
    assert code == 2 and "tiny" in err and "[N, 3, 8, 8]" in err and "crop=16" in err
    assert no_results(tmp_path / "out")


def test_calibration_count_larger_than_data(capsys, model_file, images, tmp_path):
    code, _, err = run(capsys, "calibrate", model_file, "--data", images, "--save-dir", tmp_path / "out",
                       "--resize", "8", "--crop", "8", "--calib-num", "50")
    assert code == 2 and "calibration count 50" in err and "6 images" in err
    assert no_results(tmp_path / "out")


def test_config_with_unknown_layer(capsys, model_file, images, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"version": 1, "no_such_layer": {"quant_enable": False}}))
    code, _, err = run(capsys, "calibrate", model_file, "--data", images, "--save-dir", tmp_path / "out",
                       "--config", config, *SMALL)
    assert code == 2 and "'no_such_layer'" in err and "config.json" in err
    assert no_results(tmp_path / "out")


def test_failure_while_writing_leaves_no_results(model_file, images, tmp_path, monkeypatch):
    from nbquant.calibration import run as pipeline
    from nbquant.data.preprocess import Preprocess

    def broken(*_):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "format_scale_offset_record", broken)
    with pytest.raises(OSError, match="disk full"):
        pipeline.calibrate(model_file, images, tmp_path / "out", pipeline.CalibrationSettings(calib_num=4),
                           preprocess=Preprocess(resize=8, crop=8), progress=False)
    assert no_results(tmp_path / "out") and not list((tmp_path / "out").glob("temp*"))


@pytest.mark.parametrize("command, flags, message", [
    ("calibrate", ["--calib-num", "0"], "calib_num must be an int >= 1, got 0"),
    ("calibrate", ["--batch-size", "0"], "batch_size must be an int >= 1, got 0"),
    ("calibrate", ["--resize", "8", "--crop", "0"], "crop must be an int >= 1, got 0"),
    ("auto-calibrate", ["--rank-num", "-1"], "rank_num must be an int >= 1, got -1"),
    ("auto-calibrate", ["--workers", "0"], "--workers must be an int >= 1, got 0"),
])
def test_bad_setting_values(capsys, model_file, images, tmp_path, command, flags, message):
    code, _, err = run(capsys, command, model_file, "--data", images, "--save-dir", tmp_path / "out", *flags)
    assert code == 2 and message in err and err.count("\n") == 1
    assert no_results(tmp_path / "out")


def test_layers_command_lists_layers_and_float_ops(capsys, model_file):
    code, out, _ = run(capsys, "layers", model_file)
    assert code == 0
    assert "Conv_0" in out and "2 quantizable layers" in out and "1 BatchNormalization nodes folded" in out
    assert "Relu" in out and "absorbed by the next layer" in out


def test_model_that_cannot_be_quantized_fails_before_the_search_in_one_line(capsys, model_file, images, tmp_path,
                                                                          monkeypatch):
    import nbquant.calibration.run

    def broken(*args, **kwargs):
        raise ValueError("Nodes in a graph must be topologically sorted, however input 'x_dq' of node:\n"
                         "name: Shape_7 OpType: Shape\n is not output of any previous nodes.")
    monkeypatch.setattr(nbquant.calibration.run, "make_deploy_model", broken)
    save = tmp_path / "out"
    code, out, err = run(capsys, "auto-calibrate", model_file, "--data", images, "--save-dir", save,
                         "--metric", "agreement", "--resize", "8", "--crop", "8", "--calib-num", "4", "--rank-num", "2")
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("nbquant: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "tiny: building the deploy model failed at node Shape_7: ValueError: Nodes in a graph" in errors[0]
    assert no_results(save)
    record = json.loads((save / "log/accuracy_based_auto_calibration_record.json").read_text())
    assert [s["kind"] for s in record["steps"]] == ["original"]  # no search step ran


def test_unforeseen_error_is_one_line_without_verbose(capsys, model_file, images, monkeypatch):
    import nbquant.calibration.run
    monkeypatch.setattr(nbquant.calibration.run, "prepare_model", lambda *a, **k: 1 / 0)
    code, _, err = run(capsys, "calibrate", model_file, "--data", images, *SMALL)
    assert code == 2 and err.strip().count("\n") == 0
    assert "calibrate failed unexpectedly: ZeroDivisionError: division by zero (run with -v" in err
