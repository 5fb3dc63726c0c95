"""Where a run's time goes: stage times add up, nest without double counting, and every run reports them."""

import time

import numpy as np
import onnx
from structures import text_encoder, text_samples

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.search.auto import AutoSettings, auto_calibrate
from nbquant.timing import StageTimes, recording, timed


def test_repeated_stages_add_up_and_inner_stages_are_not_counted_twice():
    with recording() as times:
        for _ in range(3):
            with timed("outer"):
                time.sleep(0.01)
                with timed("inner"):
                    time.sleep(0.02)
    frame = times.frame.set_index("stage")
    assert list(frame.index) == ["inner", "outer"]
    assert frame.loc["outer", "calls"] == 3 and frame.loc["inner", "calls"] == 3
    assert 0.055 < frame.loc["inner", "seconds"] < 0.2 and 0.025 < frame.loc["outer", "seconds"] < 0.1
    assert abs(frame["share"].sum() - 1) < 0.01
    assert "total" in times.text("test CPU") and "on test CPU" in times.text("test CPU")


def test_nothing_is_recorded_outside_a_run():
    times = StageTimes()
    with timed("alone"):
        pass
    assert times.frame.empty


def test_calibrate_and_auto_calibrate_report_their_stages(tmp_path):
    onnx.save(text_encoder(), tmp_path / "encoder.onnx")
    np.savez(tmp_path / "samples.npz", **text_samples(32))
    calib = CalibrationSettings(calib_num=16, batch_size=8)
    start = time.perf_counter()
    result = calibrate(tmp_path / "encoder.onnx", tmp_path / "samples.npz", save_dir=tmp_path / "cal",
                       settings=calib, progress=False)
    wall = time.perf_counter() - start
    stages = set(result.stage_times["stage"])
    assert {"preparing the model and data", "calibration statistics", "calibrating the layers",
            "weight rounding", "building the quantized models", "writing files"} <= stages
    assert result.stage_times["seconds"].sum() <= wall
    assert "time per stage on " in (tmp_path / "cal/log/nbquant.log").read_text()

    auto = auto_calibrate(tmp_path / "encoder.onnx", tmp_path / "samples.npz", save_dir=tmp_path / "auto",
                          settings=AutoSettings(max_drop=0.0, rank_num=8, max_evals=4), calib_settings=calib,
                          progress=False, cache=False)  # the calibration above would be reused
    stages = list(auto.stage_times["stage"])
    assert {"float reference pass", "evaluating the float model", "calibration statistics", "ranking",
            "search step 1 (0 in float)"} <= set(stages)
    assert sum(s.startswith("search step") for s in stages) == auto.evaluations - 1  # the float model is step 0
    assert auto.stage_times["seconds"].sum() <= auto.seconds + 0.5
