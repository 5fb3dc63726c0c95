"""Settings of the auto calibration: clear errors for values it cannot use."""

import numpy as np
import pytest
from PIL import Image

from nbquant.cli import main
from nbquant.data.images import ImageDataset
from nbquant.errors import ConfigError
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.evaluation.metrics import agreement, mean_kl, neg_kl, top1
from nbquant.search.auto import AutoSettings


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "random"}, "strategy must be one of frugal, refine, binary, greedy, got 'random'"),
    ({"sensitivity": "hessian"}, "sensitivity must be one of output, cosine"),
    ({"max_drop": -0.1}, "max_drop must be a number >= 0, got -0.1"),
    ({"max_drop": float("nan")}, "max_drop must be a number >= 0"),
    ({"max_evals": 0}, "max_evals must be an int >= 1, got 0"),
    ({"eval_num": -5}, "eval_num must be an int >= 1, got -5"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        AutoSettings(**kwargs)


def test_cli_rejects_negative_max_drop(capsys, tmp_path):
    code = main(["auto-calibrate", str(tmp_path / "m.onnx"), "--data", str(tmp_path), "--max-drop", "-0.1"])
    assert code == 2
    assert "max_drop must be a number >= 0, got -0.1" in capsys.readouterr().err


def test_top1_needs_labels(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    data = ImageDataset(tmp_path)
    with pytest.raises(ConfigError, match="needs labels.*agreement"):
        LogitEvaluator(data, "top1")
    assert "agreement" in repr(LogitEvaluator(data, "agreement"))


def test_logit_metrics_hand_computed():
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    new = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    labels = np.array([0, 2])
    assert top1(new, labels) == 0.0 and top1(ref, labels) == 0.5
    assert agreement(new, labels, ref) == 0.5
    assert mean_kl(ref, ref) == pytest.approx(0.0) and neg_kl(new, labels, ref) < 0
    p = np.exp(ref[0]) / np.exp(ref[0]).sum()
    q = np.exp(new[0]) / np.exp(new[0]).sum()
    assert mean_kl(ref[:1], new[:1]) == pytest.approx(float(np.sum(p * np.log(p / q))))
