"""Auto calibration on the real model: target met, impossible target, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import onnx
import pytest

from nbquant.calibration.run import CalibrationSettings
from nbquant.cli import EXIT_NOT_MET
from nbquant.errors import ConfigError
from nbquant.evaluation.latency_model import predict_latency
from nbquant.quantize.metadata import SIMULATE_KEY
from nbquant.search.auto import AutoSettings, EvaluatorError, auto_calibrate
from nbquant.search.record import load_ranking, load_record

pytestmark = pytest.mark.real
FAST_CALIB = CalibrationSettings(calib_num=16)
# Per-tensor weights on the portable target: the all-int8 model loses about 5 of 300 images on every CPU (per-channel
# weights lose about one, so whether it meets a tight budget depends on the CPU's float rounding).
COARSE_CALIB = CalibrationSettings(calib_num=16, per_channel=False, deploy_target="portable")


class HarmfulLayers:
    """Reference-protocol evaluator: each 'harmful' layer still in int8 costs 0.01 of the metric."""

    def __init__(self, harmful, interrupt_at=None):
        self.harmful, self.interrupt_at, self.calls = set(harmful), interrupt_at, 0

    def __repr__(self):
        return f"HarmfulLayers({sorted(self.harmful)})"

    def evaluate(self, model_path):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        model = onnx.load(model_path)
        dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        # a layer is in int8 when its weight is dequantized (a float layer may read a dequantized input)
        quantized = {n.name for n in model.graph.node if len(n.input) > 1 and n.input[1] in dequantized}
        return 1.0 - 0.01 * len(self.harmful & quantized)

    def metric_eval(self, original, new):
        return original - new <= 0.005, original - new


def test_default_run_meets_a_tight_budget(real_model_path, real_data, tmp_path):
    result = auto_calibrate(real_model_path, real_data, save_dir=tmp_path,
                            settings=AutoSettings(max_drop=0.002, eval_num=500, rank_num=32), progress=False)
    assert result.ok, result.message
    assert result.original_metric - result.final_metric <= 0.002 + 1e-9
    assert result.original_metric - result.deploy_metric <= 0.002 + 1e-9  # the shipped model meets it too
    assert len(result.float_layers) <= 5 and result.evaluations <= 10
    # the default objective: the passing configuration predicted fastest here, its latency measured; the layer
    # costs are profiled during the search only where the choice depends on them, else when first asked for
    profiled = "profiling layer costs" in set(result.stage_times["stage"])
    assert result.latency["measured_ms"] > 0 and ("predicted_ms" in result.latency) == profiled
    float_ms = predict_latency(result.costs, result.costs.layers.index)
    chosen = result.pareto[result.pareto["chosen"]]
    assert 0 < chosen["predicted_ms"].iloc[0] < float_ms  # 1-5 float layers: int8 gains
    assert len(chosen) == 1 and chosen["ok"].all() and sorted(chosen["float_layers"].iloc[0]) == result.float_layers
    passing = result.pareto[result.pareto["ok"] & (result.pareto["n_other_state"] == 0)]
    assert chosen["predicted_ms"].iloc[0] <= passing["predicted_ms"].min() + 1e-9
    for path in (result.paths.fake_quant_model, result.paths.deploy_model, result.paths.final_config,
                 result.paths.ranking, result.paths.record, result.paths.log_file):
        assert path.is_file(), path
    final = json.loads(result.paths.final_config.read_text())
    assert sorted(k for k, v in final.items() if isinstance(v, dict) and not v["quant_enable"]) == result.float_layers
    history = load_record(result.paths.record)
    assert history["kind"].tolist()[:2] == ["original", "all_int8"]
    passing = history[history["ok"] & (history["kind"] != "original")]
    assert len(passing) and passing["deploy_metric"].notna().all()
    assert result.deploy_evaluations >= len(passing)
    configurations = [(tuple(f), tuple(sorted(s.items()))) for f, s in zip(history["float_layers"], history["states"])]
    assert len(set(configurations)) == len(configurations)  # each evaluated once
    ranking = load_ranking(result.paths.ranking)
    assert len(ranking) == 50 and ranking["score"].is_monotonic_increasing
    log = result.paths.log_file.read_text()
    assert "Accuracy of original model is" in log and "Accuracy of saved model is" in log
    assert not list(tmp_path.glob("temp*"))


def test_search_finds_the_culprits_and_binary_keeps_a_prefix(real_model_path, real_data, tmp_path):
    harmful = ["/_blocks.9/_project_conv/Conv", "/_conv_head/Conv"]
    refine = auto_calibrate(real_model_path, real_data, evaluator=HarmfulLayers(harmful), save_dir=tmp_path / "r",
                            settings=AutoSettings(rank_num=8, sensitivity="cosine", max_evals=40),
                            calib_settings=FAST_CALIB, progress=False)
    assert refine.ok and refine.float_layers == sorted(harmful), refine.history
    binary = auto_calibrate(real_model_path, real_data, evaluator=HarmfulLayers(harmful), save_dir=tmp_path / "b",
                            settings=AutoSettings(rank_num=8, sensitivity="cosine", strategy="binary"),
                            calib_settings=FAST_CALIB, progress=False)
    ranked = binary.ranking["layer"].tolist()
    assert binary.ok and set(binary.float_layers) == set(ranked[:len(binary.float_layers)])
    assert binary.evaluations <= 2 + 6  # original, all-int8, ceil(log2 50)


def test_with_one_passing_choice_the_cost_profile_waits_until_asked_for(real_model_path, real_data, tmp_path):
    harmful = ["/_blocks.3/_expand_conv/Conv"]  # every passing set holds it: one minimal choice, a Conv (no state)
    result = auto_calibrate(real_model_path, real_data, evaluator=HarmfulLayers(harmful), save_dir=tmp_path,
                            settings=AutoSettings(rank_num=8, sensitivity="cosine", max_evals=20),
                            calib_settings=FAST_CALIB, progress=False)
    assert result.ok and result.float_layers == harmful
    assert "profiling layer costs" not in set(result.stage_times["stage"]) and "predicted_ms" not in result.latency
    pareto = result.pareto  # profiled here, once
    assert result.costs is not None and result.costs is result.costs and pareto["predicted_ms"].notna().all()
    chosen = pareto[pareto["chosen"]]
    assert chosen["float_layers"].iloc[0] == harmful
    assert chosen["predicted_ms"].iloc[0] < predict_latency(result.costs, result.costs.layers.index)


def test_all_int8_within_budget_skips_ranking_and_cost_profile(real_model_path, real_data, tmp_path):
    result = auto_calibrate(real_model_path, real_data, evaluator=HarmfulLayers([]), save_dir=tmp_path,
                            settings=AutoSettings(rank_num=8, sensitivity="cosine"), calib_settings=FAST_CALIB,
                            progress=False)
    assert result.ok and result.evaluations == 2 and "int8=50/50" in repr(result)
    assert result.ranking.empty and not result.paths.ranking.exists() and result.costs is None
    stages = set(result.stage_times["stage"])
    assert not {"ranking", "profiling layer costs"} & stages and "measuring the final model's latency" in stages
    assert result.latency["measured_ms"] > 0 and "predicted_ms" not in result.latency


class DeployRounding(HarmfulLayers):
    """HarmfulLayers for fake-quant models; deploy models also lose 0.01 per ``deploy_harmful`` layer in int8."""

    def __init__(self, harmful, deploy_harmful):
        super().__init__(harmful)
        self.deploy_harmful = set(deploy_harmful)

    def evaluate(self, model_path):
        metric = super().evaluate(model_path)
        model = onnx.load(model_path)
        if any(p.key == SIMULATE_KEY for p in model.metadata_props):
            return metric
        dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        int8_layers = {n.name for n in model.graph.node if len(n.input) > 1 and n.input[1] in dequantized}
        return metric - 0.01 * len(self.deploy_harmful & int8_layers)


def test_search_judges_the_deploy_model_and_the_simulation_only_when_asked(real_model_path, real_data, tmp_path):
    deploy_only = ["/_blocks.5/_project_conv/Conv"]
    settings = AutoSettings(rank_num=8, sensitivity="cosine", max_evals=40)
    checked = auto_calibrate(real_model_path, real_data, evaluator=DeployRounding([], deploy_only),
                             save_dir=tmp_path / "checked", settings=settings, calib_settings=FAST_CALIB,
                             progress=False)
    assert checked.ok and checked.float_layers == deploy_only, checked.history
    assert checked.deploy_metric == checked.final_metric == 1.0
    steps = checked.history[checked.history["kind"] != "original"]
    assert set(steps["judged"]) == {"deploy"} and (steps["metric"] == steps["deploy_metric"]).all()
    first = checked.history.set_index("kind").loc["all_int8"]
    assert first["metric"] == 0.99 and not first["ok"]
    assert ("step 1: 0 of 50 layers in float, deploy model metric 0.99, loss 0.01000, not ok"
            in checked.paths.log_file.read_text())
    unchecked = auto_calibrate(real_model_path, real_data, evaluator=DeployRounding([], deploy_only),
                               save_dir=tmp_path / "unchecked", settings=replace(settings, check_deploy=False),
                               calib_settings=FAST_CALIB, progress=False)
    assert unchecked.ok and unchecked.float_layers == [] and unchecked.deploy_metric == 0.99
    assert set(unchecked.history["judged"].dropna()) == {"fake_quant"}
    assert "misses the target by rounding" in unchecked.paths.log_file.read_text()


def test_retarget_at_the_runs_budget_repeats_the_run_from_its_history(real_model_path, real_data, tmp_path):
    from nbquant.search.retarget import explorer_from_auto_result

    settings = AutoSettings(max_drop=0.002, eval_num=200, rank_num=8)
    result = auto_calibrate(real_model_path, real_data, save_dir=tmp_path, settings=settings,
                            calib_settings=FAST_CALIB, progress=False)
    assert result.ok, result.message
    explorer = explorer_from_auto_result(result, real_data, eval_num=200, metric="top1")
    answer = explorer.search(0.002)
    assert answer.ok and answer.new_evaluations == 0
    assert sorted(answer.float_layers) == result.float_layers
    assert answer.deploy_metric == result.deploy_metric


def test_unreachable_target_writes_no_model(real_model_path, real_data, tmp_path):
    code = subprocess.run(
        [sys.executable, "-m", "nbquant", "auto-calibrate", str(real_model_path), "--data", str(real_data.root),
         "--metric", "kl", "--max-drop", "0", "--eval-num", "24", "--calib-num", "16", "--rank-num", "8",
         "--save-dir", str(tmp_path)], capture_output=True, text=True)
    assert code.returncode == EXIT_NOT_MET, code.stderr
    assert "No quantized model is generated" in code.stdout and "Relax the target" in code.stdout
    results = {p.name for p in (tmp_path / "results").iterdir()}
    assert results == {"accuracy_based_auto_calibration_ranking_information.json",
                       "accuracy_based_auto_calibration_ranking_information.csv"}
    assert (tmp_path / "log/accuracy_based_auto_calibration_record.json").is_file()
    assert "the accuracy target may be too difficult" in (tmp_path / "log/nbquant.log").read_text()


def test_interrupt_then_resume_reevaluates_nothing(real_model_path, real_data, tmp_path):
    harmful = ["/_blocks.3/_expand_conv/Conv"]
    settings = AutoSettings(rank_num=8, sensitivity="cosine", max_evals=20)  # enough to isolate the layer
    with pytest.raises(KeyboardInterrupt):
        auto_calibrate(real_model_path, real_data, evaluator=HarmfulLayers(harmful, interrupt_at=4),
                       save_dir=tmp_path, settings=settings, calib_settings=FAST_CALIB, progress=False)
    before = load_record(tmp_path / "log/accuracy_based_auto_calibration_record.json")
    assert len(before) == 3 and not list(tmp_path.glob("temp*"))
    evaluator = HarmfulLayers(harmful)
    resumed = auto_calibrate(real_model_path, real_data, evaluator=evaluator, save_dir=tmp_path, settings=settings,
                             calib_settings=FAST_CALIB, resume=True, progress=False)
    fresh = HarmfulLayers(harmful)
    reference = auto_calibrate(real_model_path, real_data, evaluator=fresh, save_dir=tmp_path / "fresh",
                               settings=settings, calib_settings=FAST_CALIB, progress=False)
    assert resumed.float_layers == reference.float_layers == harmful
    assert evaluator.calls == fresh.calls - 3  # original and the two finished steps are not redone
    after = resumed.history
    assert after.iloc[:3].drop(columns="float_layers").equals(before.drop(columns="float_layers"))
    with pytest.raises(ConfigError, match="max_drop was 0.005 in the record but is 0.01 now"):
        auto_calibrate(real_model_path, real_data, evaluator=HarmfulLayers(harmful), save_dir=tmp_path,
                       settings=AutoSettings(rank_num=8, sensitivity="cosine", max_drop=0.01),
                       calib_settings=FAST_CALIB, resume=True, progress=False)


def test_killed_process_resumes_from_its_record(real_model_path, real_data, tmp_path):
    args = [sys.executable, "-m", "nbquant", "auto-calibrate", str(real_model_path), "--data", str(real_data.root),
            "--metric", "kl", "--max-drop", "0", "--eval-num", "24", "--calib-num", "16", "--rank-num", "8",
            "--save-dir", str(tmp_path)]
    record = tmp_path / "log/accuracy_based_auto_calibration_record.json"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if record.is_file() and len(json.loads(record.read_text())["steps"]) >= 4:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(record.read_text())["steps"]
    assert len(done) >= 4
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == EXIT_NOT_MET, resumed.stderr
    steps = json.loads(record.read_text())["steps"]
    assert steps[:len(done)] == done
    assert len({tuple(s["float_layers"]) for s in steps}) == len(steps)


def test_evaluator_that_fails_names_the_step(real_model_path, real_data, tmp_path):
    class Broken(HarmfulLayers):
        def evaluate(self, model_path):
            value = super().evaluate(model_path)
            return float("nan") if self.calls == 3 else value

    with pytest.raises(EvaluatorError, match="returned nan at step 2"):
        auto_calibrate(real_model_path, real_data, evaluator=Broken(["/_conv_head/Conv"]), save_dir=tmp_path,
                       settings=AutoSettings(rank_num=8, sensitivity="cosine"), calib_settings=FAST_CALIB,
                       progress=False)
    assert len(load_record(tmp_path / "log/accuracy_based_auto_calibration_record.json")) == 2


def test_early_decisions_give_the_verdicts_of_full_evaluations(real_model_path, real_data, tmp_path):
    from nbquant.quantize.deploy import make_deploy_model

    result = auto_calibrate(real_model_path, real_data, save_dir=tmp_path, calib_settings=COARSE_CALIB, progress=False,
                            settings=AutoSettings(max_drop=0.001, eval_num=300, rank_num=8, max_evals=6))
    steps = result.history[result.history["kind"] != "original"]
    assert not steps.set_index("kind").loc["all_int8", "ok"], steps  # the all-int8 model misses: decided early
    assert steps["decided_early"].any(), steps
    assert result.calibrator.config.equalize  # per-tensor: equalized; the deploy models are built from that model
    model, calibrator, evaluator = result.calibration.prepared.model, result.calibrator, result.evaluator
    for row in steps.itertuples():
        quant = {k: v for k, v in calibrator.quant_.items() if k not in set(row.float_layers)}
        full = evaluator.evaluate(make_deploy_model(model, quant, calibrator.tensor_qparams_,
                                                    calibrator.config.deploy_target))
        assert evaluator.metric_eval(result.original_metric, full)[0] == row.ok, row
        if row.decided_early:
            assert full <= row.metric_upper and row.images < 300
        else:
            assert full == row.metric and row.images == 300
    assert result.images_evaluated < 300 * result.evaluations
    assert "decided after" in result.paths.log_file.read_text()
    order = result.paths.evaluation_order.read_text().splitlines()  # recorded: the float model's misses first
    files = evaluator.images_.files
    misses = {files[i] for i in range(300) if evaluator.reference_[i].argmax() != evaluator.images_.labels[i]}
    assert sorted(order) == sorted(files) and set(order[:len(misses)]) == misses and 0 < len(misses) < 300
    assert json.loads(result.paths.record.read_text())["evaluation_order"]["file"] == "evaluation_order.txt"
