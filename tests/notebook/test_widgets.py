"""The cached fallback search and the fallback-loop widget, driven from Python (no browser)."""

import onnx
import pandas as pd
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from synthetic import gemm_matmul_model

from nbquant.errors import ConfigError, ModelError
from nbquant.evaluation.latency_model import LayerCosts, predict_latency
from nbquant.evaluation.session import make_session
from nbquant.graph.prepare import prepare_model
from nbquant.notebook.widgets import FallbackWidget
from nbquant.search.retarget import FallbackExplorer, model_evaluator

RANKED = [f"L{i}" for i in range(10)]
HARMFUL = {"L0", "L3"}


class CountingMetric:
    """Metric 1.0, minus 0.01 per harmful layer and 0.0002 per other layer left in int8; counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, float_layers):
        self.calls += 1
        int8 = set(RANKED) - set(float_layers)
        return 1.0 - 0.01 * len(int8 & HARMFUL) - 0.0002 * len(int8 - HARMFUL)


def make_explorer():
    metric = CountingMetric()
    return FallbackExplorer(RANKED, metric, original_metric=1.0), metric


def test_looser_target_is_answered_from_the_cache():
    explorer, metric = make_explorer()
    tight = explorer.search(0.005)
    assert tight.ok and set(tight.float_layers) == HARMFUL and tight.new_evaluations == metric.calls > 0
    calls = metric.calls
    looser = explorer.search(0.01)
    assert looser.new_evaluations == 0 and metric.calls == calls
    assert looser.ok and len(looser.float_layers) <= len(tight.float_layers)
    assert set(looser.visited) <= set(explorer.cache_)


def test_every_strategy_reuses_the_cache_and_reports_unreachable_targets():
    explorer, metric = make_explorer()
    for strategy in ("refine", "binary", "greedy"):
        first = explorer.search(0.005, strategy=strategy)
        calls = metric.calls
        assert explorer.search(0.005, strategy=strategy).new_evaluations == 0 and metric.calls == calls
        assert first.ok and set(first.float_layers) >= HARMFUL, strategy
    impossible = explorer.search(0.0)
    assert not impossible.ok and impossible.metric is None and impossible.summary()["n_float"].isna().all()


def test_relative_budget_and_seed_from_history():
    import pandas as pd
    explorer, metric = make_explorer()
    history = pd.DataFrame({"kind": ["original", "all_int8"], "metric": [1.0, 0.972],
                            "float_layers": [RANKED, []]})
    explorer.seed(history)
    answer = explorer.search(0.05, relative=True)
    assert answer.ok and answer.float_layers == [] and metric.calls == 0


def test_deploy_check_rejects_what_only_the_simulation_passes():
    import pandas as pd
    deploy_calls = []

    def deploy(float_layers):  # the integer kernels also lose 0.01 while L5 is in int8
        deploy_calls.append(frozenset(float_layers))
        return CountingMetric()(float_layers) - (0.01 if "L5" not in float_layers else 0.0)

    metric = CountingMetric()
    explorer = FallbackExplorer(RANKED, metric, 1.0, evaluate_deploy=deploy)
    answer = explorer.search(0.005)
    assert answer.ok and set(answer.float_layers) == HARMFUL | {"L5"}, answer
    assert answer.deploy_metric == explorer.deploy_cache_[frozenset(answer.float_layers)] >= 0.995
    assert set(deploy_calls) <= {s for s, m in explorer.cache_.items() if m >= 0.995}  # only passing simulations
    assert answer.summary()["deploy_metric"].item() == answer.deploy_metric
    assert explorer.points()["deploy_metric"].notna().sum() == len(explorer.deploy_cache_)
    unchecked = FallbackExplorer(RANKED, CountingMetric(), 1.0).search(0.005)
    assert set(unchecked.float_layers) == HARMFUL and unchecked.deploy_metric is None
    seeded = FallbackExplorer(RANKED, CountingMetric(), 1.0, evaluate_deploy=deploy)
    seeded.seed(pd.DataFrame({"kind": ["all_int8"], "metric": [1.0], "deploy_metric": [0.97],
                              "float_layers": [[]]}))
    assert seeded.deploy_cache_ == {frozenset(): 0.97}


def test_bad_strategy_and_empty_ranking_raise():
    explorer, _ = make_explorer()
    with pytest.raises(ConfigError, match="strategy must be one of"):
        explorer.search(0.01, strategy="random")
    with pytest.raises(ConfigError, match="max_drop must be a number >= 0"):
        explorer.search(-1)
    with pytest.raises(ConfigError, match="at least one ranked layer"):
        FallbackExplorer([], lambda f: 1.0, 1.0)


def test_widget_slider_and_run_button_change_the_result():
    explorer, metric = make_explorer()
    widget = FallbackWidget(explorer, max_drop=0.005)
    widget.run_button.click()
    first_table, first_plot = widget.table.value, widget.plot.value
    assert "L0" in first_table and "L3" in first_table and "data:image/png;base64,iVBORw0KGgo" in first_plot
    calls = metric.calls
    widget.target.value = 0.03
    widget.run_button.click()
    assert widget.answer_.float_layers == [] and metric.calls == calls
    assert widget.table.value != first_table and "all layers in int8" in widget.table.value
    assert "from the evaluation cache" in widget.status.value and widget.plot.value != first_plot
    widget.mode.value, widget.strategy.value = "relative", "binary"
    widget.run_button.click()
    assert widget.answer_.relative and widget.answer_.strategy == "binary" and len(widget.answers_) == 3


def line_costs(names) -> LayerCosts:
    """A chain of layers, each 10 us in int8 and 30 us in float; a crossing costs 1 us each way."""
    n = len(names)
    table = pd.DataFrame({"kind": ["conv"] * n, "int8_us": [10.0] * n, "float_us": [30.0] * n, "int8_bytes": [1] * n,
                          "float_bytes": [4] * n, "in_elements": [1] * n, "out_elements": [1] * n,
                          "cross_in_us": [1.0] * n, "cross_out_us": [1.0] * n}, index=pd.Index(names, name="layer"))
    return LayerCosts(table, {b: (a,) for a, b in zip(names, names[1:])} | {names[0]: ()},
                      {"int8": 5.0, "float": 5.0}, 0, {}, batch=1, threads=1)


def test_answers_carry_the_predicted_latency_of_their_configuration():
    costs = line_costs(RANKED + ["kept"])  # "kept": a layer the config keeps in float, never ranked
    explorer = FallbackExplorer(RANKED, CountingMetric(), 1.0, costs=costs)
    tight, loose = explorer.search(0.005), explorer.search(0.05)
    assert tight.predicted_ms == pytest.approx(predict_latency(costs, set(tight.float_layers) | {"kept"}))
    assert loose.predicted_ms == pytest.approx(predict_latency(costs, {"kept"}))
    assert loose.predicted_ms < tight.predicted_ms
    assert explorer.search(0.0).predicted_ms is None  # nothing passes, nothing to time
    widget = FallbackWidget(explorer, max_drop=0.005)
    widget.run()
    assert f"predicted {tight.predicted_ms:.2f} ms" in widget.status.value
    assert widget.answer_.summary()["predicted_ms"].iloc[0] == pytest.approx(tight.predicted_ms)
    assert FallbackExplorer(RANKED, CountingMetric(), 1.0).search(0.005).predicted_ms is None


def test_widget_shows_unmet_targets_and_errors_in_its_status():
    widget = FallbackWidget(FallbackExplorer(RANKED, CountingMetric(), 1.0), max_drop=0.0)
    assert widget.run() is not None and not widget.answer_.ok and "target not met" in widget.status.value

    def broken(float_layers):
        raise ModelError("onnxruntime cannot load the model")

    widget = FallbackWidget(FallbackExplorer(RANKED, broken, 1.0))
    assert widget.run() is None and "cannot load the model" in widget.status.value
    assert not widget.run_button.disabled
    with pytest.raises(AttributeError, match="no search has run yet"):
        _ = widget.answer_


def test_model_evaluator_builds_fake_quant_models_without_the_float_layers():
    import numpy as np

    from nbquant.calibration.calibrator import Calibrator, observe, observed_tensors, with_outputs
    from nbquant.calibration.config import QuantConfig

    prepared = prepare_model(gemm_matmul_model())
    names = observed_tensors(prepared.model, prepared.layers)
    session = make_session(with_outputs(prepared.model, names))
    batches = [np.random.default_rng(i).normal(size=(4, 6)).astype(np.float32) for i in range(3)]
    histograms, _ = observe(session, names, batches)
    config = QuantConfig.default({layer.name: layer.op for layer in prepared.layers})
    calibrator = Calibrator(config).fit(prepared.model, histograms)
    quant, outputs = calibrator.quant_, calibrator.tensor_qparams_

    class QuantizedNodes:
        def evaluate(self, model):
            dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
            return float(sum(1 for n in model.graph.node if n.name in quant and n.input[0] in dq))

    evaluate = model_evaluator(prepared.model, quant, QuantizedNodes(), outputs)
    first = prepared.layers[0].name
    assert evaluate(frozenset()) == 2.0 and evaluate(frozenset({first})) == 1.0

    class IntegerBiases:  # only deploy models carry int32 biases (the Gemm's; the MatMul has none)
        def evaluate(self, model):
            return float(sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32
                             and t.name.endswith("/bias_quantized")))

    deploy = model_evaluator(prepared.model, quant, IntegerBiases(), outputs, deploy=True)
    assert deploy(frozenset()) == 1.0 and deploy(frozenset({first})) == 0.0
    assert model_evaluator(prepared.model, quant, IntegerBiases(), outputs)(frozenset()) == 0.0
