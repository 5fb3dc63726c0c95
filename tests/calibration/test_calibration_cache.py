"""Calibration results kept across runs: reused while model, data, settings and the code's version hold."""

from __future__ import annotations

import logging

import numpy as np
from synthetic import conv_bn_model

from nbquant.calibration import run as calibration_run
from nbquant.calibration.run import CalibrationSettings, calibrate

SETTINGS = CalibrationSettings(calib_num=8, batch_size=4)


def arrays(seed=0):
    return {"x": np.random.default_rng(seed).normal(size=(8, 3, 8, 8)).astype(np.float32)}


def reused(caplog) -> bool:
    return any("from the cache" in r.getMessage() for r in caplog.records)


def test_statistics_and_roundings_are_reused_until_the_code_version_changes(tmp_path, caplog, monkeypatch):
    model, cache = conv_bn_model(), tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="nbquant")
    cold = calibrate(model, arrays(), settings=SETTINGS, progress=False, cache=cache)
    assert not reused(caplog)
    caplog.clear()
    warm = calibrate(model, arrays(), settings=SETTINGS, progress=False, cache=cache)
    assert reused(caplog)
    assert warm.deploy_model.SerializeToString() == cold.deploy_model.SerializeToString()
    caplog.clear()
    calibrate(model, arrays(seed=1), settings=SETTINGS, progress=False, cache=cache)  # other data
    assert not reused(caplog)
    for name in ("STATISTICS_VERSION", "ROUNDING_VERSION"):
        caplog.clear()
        monkeypatch.setattr(calibration_run, name, getattr(calibration_run, name) + 1)
        again = calibrate(model, arrays(), settings=SETTINGS, progress=False, cache=cache)
        assert not reused(caplog), name
        assert again.deploy_model.SerializeToString() == cold.deploy_model.SerializeToString()
