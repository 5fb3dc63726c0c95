"""Runs that share a cache: a warm run gives what a cold run gives (record verdicts, config, models), a
corrupt entry is recomputed with a warning, and two runs at once leave a cache both can use."""

import json
import logging
import multiprocessing
from pathlib import Path

import numpy as np
import onnx
import pytest
from structures import text_encoder, text_samples

from nbquant.cache import Cache
from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.search.auto import AutoSettings, auto_calibrate
from nbquant.search.record import read_record

CALIB = CalibrationSettings(calib_num=16, batch_size=8)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    onnx.save(text_encoder(), folder / "encoder.onnx")
    np.savez(folder / "samples.npz", **text_samples(64))
    return folder / "encoder.onnx", folder / "samples.npz"


def run(encoder, folder, max_drop, cache, always_rank=False, **kwargs):
    path, npz = encoder
    settings = AutoSettings(max_drop=max_drop, rank_num=8, max_evals=12, always_rank=always_rank)
    return auto_calibrate(path, npz, save_dir=folder, settings=settings, calib_settings=CALIB, progress=False,
                          cache=cache, **kwargs)


def outcome(result) -> dict:
    """What a run decided: the verdict of every configuration, the final float set, config and models."""
    record = read_record(result.paths.record)
    files = result.paths
    return {"verdicts": [(tuple(s.float_layers), s.ok) for s in record.steps],
            "float_layers": sorted(result.float_layers), "final_metric": result.final_metric,
            "ranking": list(result.ranking["layer"]),
            "config": json.loads(files.final_config.read_text()) if result.ok else None,
            "deploy": files.deploy_model.read_bytes() if result.ok else None,
            "fake_quant": files.fake_quant_model.read_bytes() if result.ok else None}


def test_a_warm_run_gives_the_cold_runs_result_and_skips_the_fixed_cost(encoder, tmp_path):
    cache = Cache(tmp_path / "cache")
    first = run(encoder, tmp_path / "first", 0.001, cache, always_rank=True)
    warm = run(encoder, tmp_path / "warm", 0.01, cache, always_rank=True)  # all int8 passes: ranked on request
    cold = run(encoder, tmp_path / "cold", 0.01, False, always_rank=True)
    assert outcome(warm) == outcome(cold)
    assert first.ok is not None and set(cache.entries()["kind"]) >= {
        "calibration-statistics", "weight-rounding", "float-outputs", "ranking", "evaluation"}
    warm_stages, cold_stages = set(warm.stage_times["stage"]), set(cold.stage_times["stage"])
    assert {"calibration statistics", "ranking", "float reference pass"} <= cold_stages
    assert not {"calibration statistics", "ranking", "float reference pass"} & warm_stages
    assert not Cache(tmp_path / "unused", enabled=False).entries().shape[0]


def test_the_same_run_again_evaluates_nothing_new(encoder, tmp_path):
    cache = Cache(tmp_path / "cache")
    cold = run(encoder, tmp_path / "a", 0.005, cache)
    again = run(encoder, tmp_path / "b", 0.005, cache)
    assert outcome(again) == outcome(cold)
    assert not [s for s in again.stage_times["stage"] if s.startswith("search step")] or \
        again.stage_times.set_index("stage").filter(like="search step", axis=0)["seconds"].sum() < 1.0


def test_calibrate_reuses_statistics_and_roundings(encoder, tmp_path):
    path, npz = encoder
    cache = Cache(tmp_path / "cache")
    cold = calibrate(path, npz, tmp_path / "a", CALIB, progress=False, cache=cache)
    warm = calibrate(path, npz, tmp_path / "b", CALIB, progress=False, cache=cache)
    assert (tmp_path / "a/results").exists()
    for name in ("fake_quant_model", "deploy_model", "config", "scale_offset_record"):
        assert getattr(cold.paths, name).read_bytes() == getattr(warm.paths, name).read_bytes(), name
    assert "calibration statistics" not in set(warm.stage_times["stage"])
    other = calibrate(path, npz, tmp_path / "c", CalibrationSettings(calib_num=16, batch_size=8, bins=1024),
                      progress=False, cache=cache)
    assert "calibration statistics" in set(other.stage_times["stage"])  # another setting, another key


def test_a_corrupt_entry_is_recomputed_with_a_warning(encoder, tmp_path, caplog):
    cache = Cache(tmp_path / "cache")
    cold = run(encoder, tmp_path / "a", 0.005, cache)
    entries = cache.entries()
    for path in map(Path, entries["path"]):  # flip a byte in the middle of every entry
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="nbquant.cache"):
        again = run(encoder, tmp_path / "b", 0.005, cache)
    assert outcome(again) == outcome(cold)
    warned = [r.getMessage() for r in caplog.records if "recomputed" in r.getMessage()]
    assert len(warned) >= len(entries) - 1 and all("cache entry" in m for m in warned)
    assert "calibration statistics" in set(again.stage_times["stage"])


def _run_in_process(args):
    encoder, folder, cache_dir = args
    result = run(encoder, folder, 0.005, Cache(cache_dir))
    return outcome(result)


def test_two_runs_sharing_a_cache_at_once_agree_and_leave_it_usable(encoder, tmp_path):
    jobs = [(encoder, tmp_path / f"run{i}", tmp_path / "cache") for i in range(2)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        first, second = pool.map(_run_in_process, jobs)
    assert first == second
    assert outcome(run(encoder, tmp_path / "after", 0.005, Cache(tmp_path / "cache"))) == first
    assert not list((tmp_path / "cache").rglob("*.tmp*"))
