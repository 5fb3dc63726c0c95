"""The metrics for outputs that are not class scores (cosine, sqnr, iou): exactly their best value for the
float model itself, empty, constant and tiny outputs included; and the evaluator picks its metric by the
output's shape and says which."""

import logging
import math

import numpy as np
import pytest
from PIL import Image
from structures import probability_map

from nbquant.data.images import ImageDataset
from nbquant.data.preprocess import Preprocess
from nbquant.errors import ConfigError
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.evaluation.metrics import (
    BEST,
    SQNR_LIMIT_DB,
    cosine_similarity,
    map_iou,
    map_threshold,
    metric_function,
    output_kind,
    parse_metric,
    sqnr_db,
)

DENSE = ("cosine", "sqnr", "iou", "iou@0.3")

EDGE_CASES = {
    "empty maps": np.zeros((3, 1, 8, 8), np.float32),
    "constant maps": np.full((3, 1, 8, 8), 0.7, np.float32),
    "negative constants": np.full((2, 5), -3.0, np.float32),
    "tiny values": np.random.default_rng(0).uniform(0, 1e-30, (3, 1, 4, 4)).astype(np.float32),
    "subnormal float32": np.full((2, 1, 2, 2), 1e-44, np.float32),
    "huge values": np.full((2, 3), 3e38, np.float32),
    "one sample, one value": np.array([[0.25]], np.float32),
    "mixed empty and full": np.stack([np.zeros((1, 4, 4)), np.ones((1, 4, 4))]).astype(np.float32),
    "float64 tiny": np.full((2, 4), 1e-300),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
@pytest.mark.parametrize("metric", DENSE)
def test_the_float_model_scores_exactly_the_best_value_against_itself(metric, case):
    outputs = EDGE_CASES[case]
    value = metric_function(metric)(outputs.copy(), None, outputs)
    assert value == BEST[parse_metric(metric)[0]], (metric, case, value)


def test_random_outputs_against_themselves_are_exactly_best():
    rng = np.random.default_rng(1)
    for shape in ((5, 1, 16, 16), (4, 384), (3, 2, 7, 9)):
        ref = rng.normal(0, 3, shape).astype(np.float32)
        assert cosine_similarity(ref, ref.copy()).tolist() == [1.0] * shape[0]
        assert sqnr_db(ref, ref.copy()).tolist() == [SQNR_LIMIT_DB] * shape[0]
        assert map_iou(ref, ref.copy(), 0.0).tolist() == [1.0] * shape[0]


def test_cosine_of_zero_outputs():
    zero, tiny = np.zeros((1, 4)), np.array([[0.0, 1e-20, 0.0, 0.0]])
    assert cosine_similarity(zero, zero).tolist() == [1.0]  # was 0: a float model scored below itself
    assert cosine_similarity(zero, tiny).tolist() == [0.0] == cosine_similarity(tiny, zero).tolist()
    assert cosine_similarity(tiny, 2 * tiny).tolist() == [1.0]  # scale-free even far below float32's range
    assert cosine_similarity(np.array([[1.0, 2.0]]), np.array([[-1.0, -2.0]])) == pytest.approx([-1.0])


def test_sqnr_by_hand():
    ref = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    out = ref + np.array([[0.3, 0.4], [0.0, 0.0], [0.0, 0.1]])
    # sample 0: signal 12.5, error 0.125 -> 20 dB; sample 1: no error -> the limit
    # sample 2: signal 0.5 counts as the mean signal (13 / 3), error 0.005 -> 10 log10(866.7)
    expected = [20.0, SQNR_LIMIT_DB, 10 * math.log10((13 / 3) / 0.005)]
    assert sqnr_db(ref, out) == pytest.approx(expected)
    zeros = sqnr_db(ref, ref * 0)  # all-zero output: error power = signal power, 0 dB (sample 2: the mean's)
    assert zeros == pytest.approx([0.0, SQNR_LIMIT_DB, 10 * math.log10((13 / 3) / 0.5)])
    empty = np.zeros((2, 3))
    assert sqnr_db(empty, np.array([[0.0, 0.0, 1e-9], [0.0, 0.0, 0.0]])).tolist() == [-SQNR_LIMIT_DB, SQNR_LIMIT_DB]
    assert sqnr_db(ref, ref * 1e6).min() == -SQNR_LIMIT_DB  # clipped, not -inf or nan


def test_iou_by_hand():
    ref = np.array([[[[0.9, 0.1], [0.5, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    out = np.array([[[[0.8, 0.6], [0.2, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.9], [0.0, 0.0]]]])
    # sample 0 at 0.3: {00, 10} vs {00, 01}: 1 of 3; sample 1: both empty; sample 2: one pixel only in the output
    assert map_iou(ref, out, 0.3).tolist() == [pytest.approx(1 / 3), 1.0, 0.0]
    assert metric_function("iou@0.3")(out, None, ref) == pytest.approx((1 / 3 + 1) / 3)
    assert map_iou(ref, out, 0.55).tolist() == [pytest.approx(1 / 2), 1.0, 0.0]  # {00} vs {00, 01}


def test_metric_specs():
    assert parse_metric("iou@0.25") == ("iou", 0.25) and parse_metric("cosine") == ("cosine", None)
    for bad, message in (("iou@x", "finite number"), ("iou@nan", "finite number"), ("sqnr@3", "only iou"),
                         ("psnr", "metric must be one of")):
        with pytest.raises(ConfigError, match=message):
            parse_metric(bad)
    with pytest.raises(ConfigError, match="cannot be compared"):
        sqnr_db(np.zeros((2, 4)), np.zeros((2, 5)))


def test_output_kinds_and_thresholds():
    assert output_kind(np.zeros((4, 1000)), images=True) == "scores"
    assert output_kind(np.zeros((4, 1000, 1, 1)), images=True) == "scores"
    assert output_kind(np.zeros((4, 1, 32, 32)), images=True) == "map"
    assert output_kind(np.zeros((4, 21, 8, 8)), images=False) == "map"
    assert output_kind(np.zeros((4, 384)), images=False) == "vectors"  # embeddings of arrays
    assert output_kind(np.zeros((4, 128, 384)), images=False) == "vectors"  # token embeddings
    assert map_threshold(np.array([0.0, 0.4, 1.0])) == 0.5 and map_threshold(np.array([-3.0, 2.0])) == 0.0


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    for i, size in enumerate(((40, 30), (30, 40), (32, 32), (64, 16))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    return ImageDataset(tmp_path)


def test_the_default_metric_follows_the_output_and_is_logged(photos, caplog):
    pre = Preprocess(letterbox=24, pad_multiple=8)
    with caplog.at_level(logging.INFO, logger="nbquant"):
        evaluator = LogitEvaluator(photos, batch_size=3).prepare(probability_map(), pre, progress=False)
    assert evaluator.kind_ == "map" and evaluator.metric == "iou@0.5" and "a map" in evaluator.metric_why_
    assert "metric iou@0.5 (a map" in caplog.text and "[N, 1, 24, 24]" in caplog.text
    assert evaluator.distance == "cosine" and not evaluator.decides_early
    assert evaluator.evaluate(evaluator._float_model) == 1.0
    frame = evaluator.samples(probability_map())  # the same model from another object: run again, still exact
    assert list(frame.columns) == ["file", "sqnr_db", "cosine", "iou", "float_above"] and len(frame) == 4
    assert (frame["sqnr_db"] == SQNR_LIMIT_DB).all() and (frame["iou"] == 1).all() and (frame["cosine"] == 1).all()
    assert 0 < frame["float_above"].max() < 1
    recorded = LogitEvaluator(photos, "iou").prepare(probability_map(threshold="0.3"), pre, progress=False)
    assert recorded.metric == "iou@0.3" and recorded.threshold == 0.3  # the model's own threshold
    given = LogitEvaluator(photos, "iou@0.7").prepare(probability_map(threshold="0.3"), pre, progress=False)
    assert given.metric == "iou@0.7" and given.threshold == 0.7 and "metric='iou@0.7'" in repr(given)


def test_a_class_metric_on_a_map_is_warned_about(photos, caplog):
    with caplog.at_level(logging.WARNING, logger="nbquant"):
        evaluator = LogitEvaluator(photos, "agreement").prepare(probability_map(), Preprocess(letterbox=16),
                                                                progress=False)
    assert evaluator.metric == "agreement" and "compares class scores, but the model's output [N, 1, 16, 16] is a map" \
        in caplog.text
    with pytest.raises(ConfigError, match="metric must be one of"):
        LogitEvaluator(photos, "psnr")


def test_large_outputs_are_compared_in_chunks_with_the_same_result(monkeypatch):
    import nbquant.evaluation.metrics as metrics
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 1, (7, 1, 6, 5)).astype(np.float32)
    ref[2] = 0  # an empty map among them
    out = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
    whole = sqnr_db(ref, out), cosine_similarity(ref, out)
    monkeypatch.setattr(metrics, "CHUNK_VALUES", 60)  # two rows a chunk
    assert np.array_equal(sqnr_db(ref, out), whole[0]) and np.array_equal(cosine_similarity(ref, out), whole[1])
