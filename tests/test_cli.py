"""The command line: options take their defaults and choices from the settings, every option reaches
the settings it names, and ``nbquant --help`` does not import onnx."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image
from synthetic import conv_bn_model

from nbquant.calibration.run import CalibrationSettings
from nbquant.cli import main
from nbquant.errors import ConfigError
from nbquant.evaluation.metrics import METRICS
from nbquant.files import DEFAULT_RUNS_DIR
from nbquant.search.auto import AutoSettings
from nbquant.search.ranking import METHODS
from nbquant.search.strategies import STRATEGIES


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def model_file(tmp_path):
    onnx.save(conv_bn_model(), tmp_path / "tiny.onnx")
    return tmp_path / "tiny.onnx"


@pytest.fixture
def received(monkeypatch):
    """What the calibration and auto calibration the CLI calls are given; they stop there."""
    import nbquant.calibration.run
    import nbquant.search.auto
    seen = {}

    def calibrate(model, data, save_dir, settings, config, preprocess, cache=True):
        seen.update(save_dir=save_dir, calib_settings=settings, preprocess=preprocess, cache=cache)
        raise ConfigError("stopped by the test")

    def auto_calibrate(model, data, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(nbquant.calibration.run, "calibrate", calibrate)
    monkeypatch.setattr(nbquant.search.auto, "auto_calibrate", auto_calibrate)
    return seen


def run(*argv):
    assert main([str(a) for a in argv]) == 2  # stopped by the test, after the settings were made


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        main(list(argv) + ["--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_does_not_import_onnx():
    code = "import sys\nfrom nbquant.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "print('onnx' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "auto-calibrate" in out and out.splitlines()[-1] == "False False"


def test_help_shows_the_defaults_and_choices_of_the_settings(capsys):
    calib, auto = CalibrationSettings(), AutoSettings()
    text = help_text(capsys, "calibrate")
    assert f"calibration images (default {calib.calib_num})" in text
    assert f"calibrating and evaluating (default {calib.batch_size})" in text
    assert f"{calib.act_method.value} (default)" in text and f"{calib.deploy_target.value} (default):" in text
    assert f"run folder (default {DEFAULT_RUNS_DIR / '<model name>'})" in text
    text = help_text(capsys, "auto-calibrate")
    for option, choices, default in (("--strategy", STRATEGIES, auto.strategy),
                                     ("--sensitivity", METHODS, auto.sensitivity), ("--metric", METRICS, None)):
        assert f"{option} {{{','.join(choices)}}}" in text
        assert default is None or f"{default} (default):" in text
    assert f"(default {auto.max_drop})" in text and f"(default {auto.max_evals})" in text
    assert f"used for ranking (default {auto.rank_num})" in text


def test_defaults_make_the_default_settings(received, model_file, images):
    run("calibrate", model_file, "--data", images)
    assert received["calib_settings"] == CalibrationSettings()
    assert received["save_dir"] == DEFAULT_RUNS_DIR / "tiny"
    run("auto-calibrate", model_file, "--data", images)
    assert received["settings"] == AutoSettings() and received["calib_settings"] == CalibrationSettings()


def test_every_calibration_option_reaches_the_settings(received, model_file, images, tmp_path):
    flags = ["--calib-num", 4, "--batch-size", 5, "--act-method", "kl", "--symmetric", "--matmul-inputs", "static",
             "--per-tensor", "--no-bias-correction", "--deploy-target", "portable", "--equalize", "off"]
    expected = CalibrationSettings(calib_num=4, batch_size=5, act_method="kl", symmetric=True, dynamic=False,
                                   per_channel=False, bias_correction=False, deploy_target="portable",
                                   equalize="off")
    run("calibrate", model_file, "--data", images, "--save-dir", tmp_path / "out", *flags)
    assert received["calib_settings"] == expected and received["save_dir"] == tmp_path / "out"
    run("auto-calibrate", model_file, "--data", images, *flags, "--max-drop", 0.01, "--relative", "--strategy",
        "greedy", "--sensitivity", "cosine", "--max-evals", 7, "--eval-num", 3, "--rank-num", 2, "--metric", "kl",
        "--no-check-deploy", "--no-early-decisions")
    assert received["calib_settings"] == expected
    assert received["settings"] == AutoSettings(max_drop=0.01, relative=True, strategy="greedy", sensitivity="cosine",
                                                max_evals=7, eval_num=3, rank_num=2, metric="kl", check_deploy=False,
                                                early_decisions=False)


def test_size_flags_change_what_the_model_gives(received, tmp_path, images):
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 240, 240] x) => (float[N, 3, 240, 240] y) { y = Relu (x) }
    """)
    onnx.save(model, tmp_path / "m.onnx")
    for flags, sizes in (([], (240, 274)), (["--crop", 200], (200, 229)),
                         (["--crop", 200, "--resize", 210], (200, 210)), (["--preset", "imagenet"], (240, 274))):
        run("calibrate", tmp_path / "m.onnx", "--data", images, *flags)
        assert (received["preprocess"].crop, received["preprocess"].resize) == sizes
    assert received["preprocess"].mean == (0.485, 0.456, 0.406)

