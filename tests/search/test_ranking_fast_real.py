"""On the real EfficientNet-Lite0, the ranking from group models is the ranking from whole one-layer
models: same scores (to float rounding), same order."""

import pytest

from nbquant.calibration.calibrator import Calibrator
from nbquant.calibration.run import CalibrationSettings, build_config, collect_statistics
from nbquant.data.binding import resolve_preprocess
from nbquant.data.pixel_cache import cache_images
from nbquant.evaluation.shards import outputs_of
from nbquant.graph.prepare import prepare_model
from nbquant.search.ranking import DISTANCES, rank_layers
from nbquant.search.ranking_groups import one_layer_outputs

pytestmark = pytest.mark.real


def test_group_models_rank_lite0_as_the_whole_one_layer_models(real_model_path, real_data):
    prepared = prepare_model(real_model_path)
    pre = resolve_preprocess(prepared.model, None)
    settings = CalibrationSettings(calib_num=16, weight_rounding="nearest")
    calib = real_data.spread(16)
    calibrator = Calibrator(build_config(prepared, settings, None)).fit(
        prepared.model, *collect_statistics(prepared, calib, pre, settings, False))
    names = list(calibrator.quant_)
    quant = {name: calibrator.quant_[name] for name in names[::4] + names[-2:]}  # stem to head, 14 layers
    images = cache_images(calib, pre, progress=False)
    qparams = calibrator.tensor_qparams_
    ranking = rank_layers(prepared.model, quant, images, progress=False, output_qparams=qparams)
    reference = next(outputs_of([prepared.model], images, 16, simulate=True))
    whole = {name: DISTANCES["kl"](reference, out)
             for name, out in zip(quant, one_layer_outputs(prepared.model, quant, images, 16, qparams))}
    assert ranking["score"].nunique() == len(quant)
    assert list(ranking["layer"]) == sorted(whole, key=lambda name: (whole[name], names.index(name)))
    assert ranking.set_index("layer")["score"].to_dict() == pytest.approx(whole, rel=1e-6)
