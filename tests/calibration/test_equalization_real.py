"""Cross-layer equalization on the real model and images (NBQUANT_MODEL / NBQUANT_DATA)."""

import numpy as np
import pytest

from nbquant.calibration.equalization import equalize_prepared
from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.binding import bind_data
from nbquant.data.images import ImageDataset
from nbquant.evaluation.accuracy import evaluate
from nbquant.evaluation.session import fused_ops, make_session
from nbquant.files import read_json
from nbquant.graph.equalization import equalize, find_pairs
from nbquant.graph.prepare import prepare_model

pytestmark = pytest.mark.real


def logits(model, images):
    session = make_session(model)
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def test_equalization_keeps_the_float_outputs(real_model_path, real_data):
    prepared = prepare_model(real_model_path)
    original = prepared.model
    data, pre = bind_data(prepared, real_data)
    calib = data.spread(100)
    calib_images = next(calib.iter_batches(pre, 32)).images
    others = ImageDataset.from_files([f for f in data.files if f not in set(calib.files)][:64])
    other_images = next(others.iter_batches(pre, 64)).images
    reference, reference_calib = logits(original, other_images), logits(original, calib_images)
    scaled, _ = equalize(original)  # rescaling alone: exact on any image
    np.testing.assert_allclose(logits(scaled, other_images), reference, atol=1e-3)
    pairs = find_pairs(original)
    table = equalize_prepared(prepared, calib, pre, progress=False, cache=False)
    # high-bias absorption too: exact where its bounds were measured, to a few 1e-2 of a logit elsewhere
    np.testing.assert_allclose(logits(prepared.model, calib_images), reference_calib, atol=1e-3)
    moved = logits(prepared.model, other_images)
    assert np.abs(moved - reference).max() < 0.1
    assert (moved.argmax(axis=1) == reference.argmax(axis=1)).all()
    assert len(table) == len({name for pair in pairs for name in (pair.first, pair.second)}) > 40
    assert table["bias_absorbed_max"].gt(0).any()
    assert table["weight_spread_after"].median() < 0.7 * table["weight_spread_before"].median()
    clips = sum(pair.activation is not None and pair.activation.op_type == "Clip" for pair in pairs)
    assert [node.op_type for node in prepared.model.graph.node].count("Min") == clips > 0


def test_per_tensor_weights_gain_top1_and_the_run_shows_it(real_model_path, real_data, tmp_path):
    runs, top1, agree = {}, {}, {}
    for equalize_ in ("off", "on"):
        settings = CalibrationSettings(per_channel=False, equalize=equalize_)
        runs[equalize_] = calibrate(real_model_path, real_data, save_dir=tmp_path / equalize_, settings=settings,
                                    progress=False)
        top1[equalize_] = evaluate(runs[equalize_].deploy_model, real_data, progress=False)
        fake = evaluate(runs[equalize_].fake_quant_model, real_data, progress=False)
        agree[equalize_] = (fake.samples["prediction"] == top1[equalize_].samples["prediction"]).mean()
    on = runs["on"]
    assert top1["on"].top1 >= top1["off"].top1 + 0.005 and top1["on"].top1 >= 0.875, top1
    # the simulation predicts the integer kernels as closely with the clips on the integers as without them
    assert agree["on"] >= agree["off"] - 0.01, agree
    assert read_json(on.paths.config)["cross_layer_equalization"] is True
    assert read_json(runs["off"].paths.config)["cross_layer_equalization"] is False
    table = on.layers
    assert table["weight_spread"].median() < 0.7 * table["weight_spread_before"].median()
    assert table["weight_spread"].max() < 0.3 * table["weight_spread_before"].max()
    assert (table["equalized_with"] != "").sum() == 49
    # the per-channel clips run on the integers: onnxruntime still fuses every Conv
    assert fused_ops(on.paths.deploy_model, tmp_path)["QLinearConv"] == \
        fused_ops(runs["off"].paths.deploy_model, tmp_path)["QLinearConv"] == 49
