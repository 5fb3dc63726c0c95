"""The structures users bring (tests/structures.py), end to end: calibrate, auto-calibrate with a
label-free metric, and a deploy model that passes the checker, runs in onnxruntime and stays
close to the float model. Real photos, resized to the models' 32x32 input from their shape."""

import numpy as np
import onnx
import pytest
from structures import STRUCTURES

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.evaluation.accuracy import predictions
from nbquant.evaluation.metrics import agreement
from nbquant.evaluation.session import make_session
from nbquant.search.auto import AutoSettings, auto_calibrate

pytestmark = pytest.mark.real
CALIB = CalibrationSettings(calib_num=16, batch_size=8)


@pytest.fixture(scope="module")
def images(real_data):
    return real_data.spread(96)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_structure_calibrates_and_auto_calibrates(name, images, tmp_path):
    path = tmp_path / f"{name}.onnx"
    onnx.save(STRUCTURES[name](), path)
    run = calibrate(path, images, tmp_path / "calibrate", CALIB, progress=False)
    assert len(run.config.enabled) == len(run.prepared.layers) > 0
    deploy = onnx.load(str(run.paths.deploy_model))
    onnx.checker.check_model(deploy, full_check=True)
    make_session(deploy)
    reference, quantized = (predictions(m, images, progress=False) for m in (path, run.deploy_model))
    fidelity = agreement(quantized, None, reference)
    assert fidelity >= 0.8, f"{name}: deploy top-1 agrees with float on {fidelity:.2f} of the images"
    result = auto_calibrate(path, images, save_dir=tmp_path / "auto", calib_settings=CALIB, progress=False,
                            settings=AutoSettings(metric="agreement", max_drop=0.02, rank_num=8, max_evals=8,
                                                  always_rank=True))  # every structure ranks, even all-int8 ones
    assert result.ok, result.message
    assert result.paths.deploy_model.is_file() and result.deploy_metric >= 0.98
    assert np.isfinite(result.ranking["score"]).all() and len(result.ranking) == len(run.prepared.layers)
