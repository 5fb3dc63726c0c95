"""Evaluation: top-k math by hand, sessions, and accuracy on a tiny parsed ONNX model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx.reference import ReferenceEvaluator
from PIL import Image

from nbquant.data.images import ImageDataset
from nbquant.data.preprocess import Preprocess
from nbquant.errors import ConfigError, ModelError
from nbquant.evaluation.accuracy import EvalResult, evaluate, predictions, topk_correct
from nbquant.evaluation.session import make_session

PRE = Preprocess(resize=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def tiny_model(batch: str = "N", size: int = 8) -> onnx.ModelProto:
    """Logits = per-channel mean, so a red image predicts class 0, green 1, blue 2."""
    model = onnx.parser.parse_model(f"""
        <ir_version: 8, opset_import: ["" : 13]>
        tiny (float[{batch},3,{size},{size}] input) => (float[{batch},3] logits) {{
            pooled = GlobalAveragePool(input)
            logits = Flatten(pooled)
        }}""")
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def colour_dir(tmp_path) -> Path:
    """Class folders 0_red, 1_green, 2_blue; one blue image is filed under green (a miss)."""
    colours = {"0_red": [(255, 0, 0)] * 2, "1_green": [(0, 255, 0), (0, 0, 255)],
               "2_blue": [(0, 0, 255)]}
    for folder, fills in colours.items():
        (tmp_path / folder).mkdir()
        for i, fill in enumerate(fills):
            Image.new("RGB", (12, 10), fill).save(tmp_path / folder / f"{i}.png")
    return tmp_path


def test_topk_correct_hand_example():
    logits = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.3, 0.2, 0.1]])
    labels = np.array([2, 0, 1, -1])
    np.testing.assert_array_equal(topk_correct(logits, labels, 1), [False, True, False, False])
    np.testing.assert_array_equal(topk_correct(logits, labels, 2), [True, True, True, False])
    assert topk_correct(np.array([[np.nan, 1.0]]), np.array([0]), 2).tolist() == [False]


def test_topk_correct_matches_argmax_for_k1():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)).round(1)  # rounding makes ties
    labels = rng.integers(0, 10, size=200)
    np.testing.assert_array_equal(topk_correct(logits, labels, 1), logits.argmax(1) == labels)
    ranks = np.argsort(-logits, axis=1, kind="stable")
    np.testing.assert_array_equal(topk_correct(logits, labels, 3),
                                  (ranks[:, :3] == labels[:, None]).any(1))


def test_topk_correct_validates():
    with pytest.raises(ConfigError, match="k must be an int >= 1, got 0"):
        topk_correct(np.zeros((2, 3)), np.zeros(2, dtype=int), 0)
    with pytest.raises(ValueError, match=r"need logits \[N, C\] and labels \[N\]"):
        topk_correct(np.zeros((2, 3)), np.zeros(3, dtype=int), 1)


def test_make_session_from_proto_and_path(tmp_path):
    model = tiny_model()
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    for source in (model, path, str(path)):
        session = make_session(source, threads=1)
        assert session.get_providers() == ["CPUExecutionProvider"]
        assert session.get_inputs()[0].shape == ["N", 3, 8, 8]


def test_make_session_errors_name_the_file(tmp_path):
    with pytest.raises(ModelError, match=f"model file {tmp_path / 'missing.onnx'} does not exist"):
        make_session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=f"onnxruntime cannot load {bad}"):
        make_session(bad)


def test_evaluate_tiny_model(colour_dir):
    result = evaluate(tiny_model(), ImageDataset(colour_dir), PRE, batch_size=2, progress=False)
    assert isinstance(result, EvalResult)
    assert result.n == 5 and result.top1 == 0.8 and result.top5 == 1.0
    samples = result.samples
    assert list(samples.columns) == ["file", "label", "prediction", "correct", "top5_correct"]
    assert samples["file"].tolist() == ["0_red/0.png", "0_red/1.png", "1_green/0.png",
                                        "1_green/1.png", "2_blue/0.png"]
    assert samples["label"].tolist() == [0, 0, 1, 1, 2]
    assert samples["prediction"].tolist() == [0, 0, 1, 2, 2]
    assert samples["correct"].dtype == bool and samples["correct"].tolist() == [1, 1, 1, 0, 1]
    assert repr(result).startswith("EvalResult(top1=0.8000, top5=1.0000, n=5")


def test_evaluate_limit_and_unlabeled(colour_dir):
    assert evaluate(tiny_model(), ImageDataset(colour_dir), PRE, limit=2, progress=False).n == 2
    data = ImageDataset(colour_dir / "0_red")
    result = evaluate(tiny_model(), data, PRE, progress=False)
    assert math.isnan(result.top1) and math.isnan(result.top5) and result.n == 2
    assert result.samples["label"].tolist() == [-1, -1]


def test_evaluate_rejects_bad_limit(colour_dir):
    with pytest.raises(ConfigError, match="limit must be an int >= 1, got 0"):
        evaluate(tiny_model(), ImageDataset(colour_dir), PRE, limit=0, progress=False)


def test_evaluate_rejects_mismatched_preprocessing(colour_dir):
    with pytest.raises(ConfigError, match=r"model tiny expects input \[N, 3, 16, 16\] but "
                                          r"preprocessing crop=8 layout=NCHW gives \[3, 8, 8\]"):
        evaluate(tiny_model(size=16), ImageDataset(colour_dir), PRE, progress=False)


def test_predictions_match_reference_evaluator(colour_dir):
    data = ImageDataset(colour_dir)
    logits = predictions(tiny_model(), data, PRE, batch_size=3, progress=False)
    images = np.concatenate([b.images for b in data.iter_batches(PRE)])
    (expected,) = ReferenceEvaluator(tiny_model()).run(None, {"input": images})
    assert logits.shape == (5, 3)
    np.testing.assert_allclose(logits, expected, rtol=1e-6)


def test_fixed_batch_model_runs_in_padded_chunks(colour_dir):
    data = ImageDataset(colour_dir)
    fixed = predictions(tiny_model(batch="1"), data, PRE, batch_size=4, progress=False)
    dynamic = predictions(tiny_model(), data, PRE, batch_size=4, progress=False)
    np.testing.assert_array_equal(fixed, dynamic)
