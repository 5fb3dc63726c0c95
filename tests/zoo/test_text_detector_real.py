"""The real text detector (PP-OCRv4's DBNet-style detector, from the rapidocr-onnxruntime package) on the shared
photos, letterboxed to 320: the float model scores exactly the best value of every dense metric against itself,
the int8 deploy model stays close, and the auto calibration meets an IoU budget by falling back a few layers.

Deploy target portable: the same integer results on VNNI and AVX2-only CPUs, so the thresholds hold on both.
Measured on an AMD EPYC with AVX512-VNNI, onnxruntime 1.32 (12 calibration photos, the 23 photos below):
all-int8 mean IoU@0.3 0.842, sqnr 33.3 dB, cosine 0.61; the twelve photos whose float map is empty stay empty.
"""

import onnx
import pytest
from conftest import need_ocr_package

from nbquant.cache import open_cache
from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.cli import main
from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.evaluation.metrics import BEST, SQNR_LIMIT_DB
from nbquant.search.auto import AutoSettings, auto_calibrate

pytestmark = pytest.mark.real

SIZE = 320
TEXT = ("scoreboard", "book_jacket", "digital_clock", "bookshop", "web_site", "cinema", "shoe_shop", "gas_pump",
        "street_sign", "comic_book", "tobacco_shop", "jersey")  # photos with text (street signs, book jackets, ...)
SETTINGS = CalibrationSettings(calib_num=12, deploy_target="portable")


@pytest.fixture(scope="module")
def detector(real_data, tmp_path_factory):
    """The zoo's detector written by the command line, its portable calibration, the evaluation photos (the
    text photos above and 12 spread over the folder) and the cache the two share."""
    need_ocr_package()
    folder = tmp_path_factory.mktemp("detector")
    path = folder / "pp_ocrv4_det.onnx"
    assert main(["zoo", "pp-ocrv4-det", "-o", str(path)]) == 0
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["nbquant.preprocess.letterbox"] == "640" and meta["nbquant.map_threshold"] == "0.3"
    for prop in model.metadata_props:
        if prop.key == "nbquant.preprocess.letterbox":
            prop.value = str(SIZE)  # smaller photos: a test of seconds
    onnx.save(model, str(path))
    files = [f for f in real_data.files if f.stem.split("_", 1)[1] in TEXT]
    files += [f for f in real_data.spread(12).files if f not in files]
    cache = folder / "cache"
    run = calibrate(path, real_data, folder / "run", SETTINGS, progress=False, cache=cache)
    return path, run, ImageDataset.from_files(files), cache


def test_the_float_detector_scores_exactly_the_best_value_under_every_dense_metric(detector):
    path, run, photos, cache = detector
    model = run.prepared.model
    pre = resolve_preprocess(model)
    assert pre.describe().startswith("letterbox 320 (bilinear, keep aspect, pad 0), BGR NCHW")
    default = LogitEvaluator(photos).prepare(model, pre, progress=False)
    assert default.metric == "iou@0.3" and default.kind_ == "map"  # a map, the threshold the model records
    above = default.samples(model)["float_above"]
    assert (above == 0).sum() >= 8 and (above > 0.01).sum() >= 8  # empty maps and maps with text, both
    again = onnx.ModelProto()
    again.CopyFrom(model)
    for metric in ("sqnr", "iou", "iou@0.5", "cosine"):
        evaluator = LogitEvaluator(photos, metric).prepare(model, pre, progress=False, cache=open_cache(cache))
        best = BEST[metric.split("@")[0]]
        assert evaluator.evaluate(model) == best, metric
        assert evaluator.evaluate(again) == best, metric  # run again: the same outputs, still exact
        if metric != "cosine":  # the file itself, its BatchNormalizations not folded: roundoff that sqnr and iou
            assert evaluator.evaluate(str(path)) == best, metric  # do not see (cosine of near-empty maps: 0.89)


def test_the_int8_detector_stays_close_and_empty_maps_stay_empty(detector):
    _, run, photos, _ = detector
    pre = resolve_preprocess(run.prepared.model)
    evaluator = LogitEvaluator(photos).prepare(run.prepared.model, pre, progress=False)
    reference = evaluator.samples(run.prepared.model)
    deploy = evaluator.samples(run.deploy_model)
    assert deploy["iou"].mean() >= 0.75 and deploy["sqnr_db"].mean() >= 28  # measured 0.842, 33.3 dB
    assert deploy["iou"].mean() < 0.97  # int8 does move the text regions' edges
    empty = reference["float_above"] == 0
    assert deploy["iou"][empty].mean() >= 0.95 and (deploy["sqnr_db"][empty] > 40).mean() >= 0.9
    # where the float map is empty the int8 map holds only tiny values: cosine calls that 0, iou and sqnr do not
    nothing = empty & (deploy["cosine"] < 0.05)
    assert nothing.any() and (deploy["iou"][nothing] == 1).all()
    assert (deploy["sqnr_db"][nothing] == SQNR_LIMIT_DB).all()


def test_auto_calibration_meets_an_iou_budget_by_falling_back_a_few_layers(detector, real_data, tmp_path):
    path, _, photos, cache = detector  # the calibration statistics come from the fixture's run, through the cache
    result = auto_calibrate(path, photos, calib_data=real_data, save_dir=tmp_path, progress=False, cache=cache,
                            settings=AutoSettings(max_drop=0.12, rank_num=4, max_evals=10), calib_settings=SETTINGS)
    assert result.ok, result.message
    assert result.evaluator.metric == "iou@0.3" and "a map" in result.evaluator.metric_why_
    history = result.history
    assert history["metric"].iloc[0] == 1.0 and history["kind"].iloc[1] == "all_int8"
    assert history["loss"].iloc[1] > 0.12  # all-int8 misses the budget (measured 0.162): layers fall back
    assert 1 <= len(result.float_layers) <= 16 and result.deploy_metric >= 1 - 0.12
    assert result.ranking["score"].between(0, 1).all() and result.ranking["score"].nunique() > 32  # cosine ranks
    check = LogitEvaluator(photos, "iou@0.3").prepare(onnx.load(str(path)), resolve_preprocess(onnx.load(str(path))),
                                                      progress=False)
    assert check.evaluate(str(result.paths.deploy_model)) == pytest.approx(result.deploy_metric)  # the file itself
