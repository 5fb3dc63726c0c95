"""The auto calibration flow on a small synthetic encoder with a user's evaluator: the files it is
given, the record it writes, an interrupted run resumed, and a result that comes complete."""

import json

import numpy as np
import onnx
import pytest
from structures import text_encoder, text_samples

from nbquant.calibration.run import CalibrationSettings
from nbquant.errors import ConfigError
from nbquant.search.auto import AutoSettings, EvaluatorError, auto_calibrate
from nbquant.search.record import load_record, read_record
from nbquant.search.retarget import explorer_from_auto_result

CALIB = CalibrationSettings(calib_num=16, batch_size=8, dynamic=False)
# objective count: on this tiny encoder the latency profile is noise (0.1 ms a run), and whether a float
# MatMul is then tried as dynamic would depend on the CPU's timing, not on the flow under test
SETTINGS = AutoSettings(rank_num=8, sensitivity="cosine", max_evals=30, objective="count")
HARMFUL = ["matmul_99/MatMul"]  # ranked second of 8 here: the search needs a few steps


class HarmfulLayers:
    """Reference-protocol evaluator: each 'harmful' layer still in int8 costs 0.01 of the metric."""

    def __init__(self, harmful, interrupt_at=None, nan_at=None):
        self.harmful, self.interrupt_at, self.nan_at, self.paths = set(harmful), interrupt_at, nan_at, []

    def __repr__(self):
        return f"HarmfulLayers({sorted(self.harmful)})"

    def evaluate(self, model_path):
        self.paths.append(model_path)
        if len(self.paths) == self.interrupt_at:
            raise KeyboardInterrupt
        if len(self.paths) == self.nan_at:
            return float("nan")
        model = onnx.load(model_path)
        dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        quantized = {n.name for n in model.graph.node if len(n.input) > 1 and n.input[1] in dequantized}
        return 1.0 - 0.01 * len(self.harmful & quantized)

    def metric_eval(self, original, new):
        return original - new <= 0.005, original - new


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    onnx.save(text_encoder(), folder / "text_encoder.onnx")
    np.savez(folder / "samples.npz", **text_samples(48))
    return folder / "text_encoder.onnx", folder / "samples.npz"


def test_interrupted_run_resumes_and_the_result_is_complete(encoder, tmp_path):
    path, npz = encoder
    with pytest.raises(KeyboardInterrupt):
        auto_calibrate(path, npz, evaluator=HarmfulLayers(HARMFUL, interrupt_at=4), save_dir=tmp_path,
                       settings=SETTINGS, calib_settings=CALIB, progress=False)
    record_file = tmp_path / "log/accuracy_based_auto_calibration_record.json"
    assert len(load_record(record_file)) == 3 and not list(tmp_path.glob("temp*"))
    evaluator = HarmfulLayers(HARMFUL)
    result = auto_calibrate(path, npz, evaluator=evaluator, save_dir=tmp_path, settings=SETTINGS,
                            calib_settings=CALIB, resume=True, progress=False)
    assert result.ok and result.float_layers == HARMFUL, result.history
    assert result.evaluator is evaluator and result.calibrator is not None and result.calibration is not None
    assert result.deploy_metric == result.final_metric == 1.0
    names = [p.rsplit("/", 1)[1] for p in evaluator.paths]
    assert names[0] == "step_3_deploy_model.onnx" and all(n.endswith("_deploy_model.onnx") for n in names)
    assert result.history["step"].tolist() == list(range(len(result.history)))
    assert result.history["kind"].tolist()[:2] == ["original", "all_int8"]
    assert result.history["judged"].iloc[1:].eq("deploy").all() and result.history["images"].isna().all()
    record = read_record(record_file)
    assert record.settings["evaluator"] == repr(evaluator) and record.ranking.method == "cosine"
    assert record.evaluation_order is None and "evaluation_order" not in json.loads(record_file.read_text())
    assert not list(tmp_path.glob("temp*")) and result.paths.deploy_model.is_file()


def test_the_original_model_is_given_as_a_file_and_a_nan_names_the_step(encoder, tmp_path):
    path, npz = encoder
    evaluator = HarmfulLayers(HARMFUL, nan_at=3)
    with pytest.raises(EvaluatorError, match=r"returned nan at step 2 \(\d+ layers in float, deploy model\)"):
        auto_calibrate(path, npz, evaluator=evaluator, save_dir=tmp_path, settings=SETTINGS, calib_settings=CALIB,
                       progress=False)
    assert [p.rsplit("/", 1)[1] for p in evaluator.paths[:2]] == ["original_model.onnx", "step_1_deploy_model.onnx"]
    assert len(load_record(tmp_path / "log/accuracy_based_auto_calibration_record.json")) == 2


def test_unreachable_target_reports_no_model_with_a_complete_result(encoder, tmp_path):
    path, npz = encoder
    result = auto_calibrate(path, npz, evaluator=HarmfulLayers(HARMFUL), save_dir=tmp_path, calib_settings=CALIB,
                            settings=AutoSettings(rank_num=8, sensitivity="cosine", max_evals=2), progress=False)
    assert not result.ok and "within max_evals=2" in result.message and result.evaluations == 2
    assert result.calibrator is not None and result.evaluator is not None and result.final_config is None


def test_all_int8_within_the_budget_needs_no_ranking_unless_asked(encoder, tmp_path):
    path, npz = encoder
    ranking_file = tmp_path / "results/accuracy_based_auto_calibration_ranking_information.json"
    ranked = auto_calibrate(path, npz, evaluator=HarmfulLayers([]), save_dir=tmp_path, calib_settings=CALIB,
                            settings=AutoSettings(rank_num=8, sensitivity="cosine", always_rank=True), progress=False)
    assert ranked.ok and not ranked.float_layers and len(ranked.ranking) == 8 and ranking_file.is_file()
    quick = auto_calibrate(path, npz, evaluator=HarmfulLayers([]), save_dir=tmp_path, calib_settings=CALIB,
                           settings=AutoSettings(rank_num=8, sensitivity="cosine"), progress=False, cache=False)
    assert quick.ok and quick.evaluations == 2 and quick.ranking.empty
    assert "ranking" not in set(quick.stage_times["stage"])
    assert not ranking_file.exists()  # the first run's ranking is gone with it: files describe one run
    assert "int8=8/8" in repr(quick) and quick.deploy_metric is not None
    with pytest.raises(ConfigError, match="ranked no layer"):
        explorer_from_auto_result(quick, None)
