"""The built-in evaluator on the real images: calibration and ranking take the pixels it decoded."""

import numpy as np
import pytest

import nbquant.data.images as images
from nbquant.data.binding import bind_data
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.graph.prepare import prepare_model
from nbquant.search.measure import search_evaluator

pytestmark = pytest.mark.real


def test_calibration_images_among_the_evaluation_ones_are_not_decoded_again(real_model_path, real_data, tmp_path,
                                                                            monkeypatch):
    prepared = prepare_model(real_model_path)
    data, pre = bind_data(prepared, real_data.subset(120), None)
    evaluator = search_evaluator(LogitEvaluator(data, "top1", 0.01))
    evaluator.prepare(prepared.model, pre, tmp_path, progress=False)
    calib, outside = data.spread(20), real_data.subset(10, offset=500)
    decoded = [b.images for b in calib.iter_batches(pre, 8)]
    monkeypatch.setattr(images, "_decode", lambda *a, **k: pytest.fail("an evaluation image was decoded again"))
    reused = evaluator.with_decoded(calib)
    assert [np.array_equal(b.images, d) for b, d in zip(reused.iter_batches(pre, 8), decoded)] == [True] * 3
    ranked = reused.spread(4).decode_pixels(pre)[0]  # the ranking's images: a spread of the calibration ones
    monkeypatch.undo()
    assert np.array_equal(ranked, calib.spread(4).decode_pixels(pre)[0])
    assert evaluator.with_decoded(outside) is outside  # not all evaluation images: decoded as usual
