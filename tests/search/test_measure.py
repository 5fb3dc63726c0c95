"""The search's one evaluator interface over a user's evaluator and the built-in LogitEvaluator."""

import onnx
import pytest
from structures import text_encoder, text_samples

from nbquant.data.tensors import open_data
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.search.measure import BuiltinEvaluator, FileEvaluator, Measurement, search_evaluator


class PathsSeen:
    """Reference-protocol evaluator: the metric is the number of nodes of the model file it is given."""

    metric = "cosine"

    def __init__(self):
        self.paths = []

    def evaluate(self, model_path):
        self.paths.append(model_path)
        return float(len(onnx.load(model_path).graph.node))

    def metric_eval(self, original, new):
        return new >= original, original - new


@pytest.fixture(scope="module")
def encoder():
    model = text_encoder()
    return model, open_data(text_samples(12)).bind(model)


def test_a_users_evaluator_gets_a_file_removed_after(encoder, tmp_path):
    model, _ = encoder
    user = PathsSeen()
    adapted = search_evaluator(user, early=True)
    assert isinstance(adapted, FileEvaluator) and adapted.pool is None and adapted.evaluator is user
    adapted.prepare(model, None, tmp_path, progress=False)
    assert adapted.run_order() is None and adapted.distance == "cosine"
    n = float(len(model.graph.node))
    assert adapted.evaluate(model, "original_model") == Measurement(n, None, n)
    assert adapted.decide(model, "step_1_deploy_model", original=n) == Measurement(n, None, n)
    assert user.paths == [str(tmp_path / "original_model.onnx"), str(tmp_path / "step_1_deploy_model.onnx")]
    assert not list(tmp_path.iterdir())
    saved = tmp_path / "kept.onnx"
    onnx.save(model, saved)
    assert adapted.evaluate(None, "unused", saved=saved).metric == n and saved.is_file()
    assert adapted.metric_eval(2.0, 1.0) == (False, 1.0)


def test_the_builtin_evaluator_counts_images_and_decides_early_only_when_asked(encoder, tmp_path):
    model, data = encoder
    logit = LogitEvaluator(data, "agreement", max_drop=0.0, batch_size=4)
    adapted = search_evaluator(logit, early=False)
    assert isinstance(adapted, BuiltinEvaluator) and adapted.evaluator is logit and adapted.distance == "kl"
    adapted.prepare(model, None, tmp_path, progress=False)
    assert adapted.evaluate(model, "original_model") == Measurement(1.0, 12, 1.0)
    files, rule = adapted.run_order()
    assert sorted(files) == sorted(data.files) and rule.startswith("the float model's misses first")
    assert adapted.decide(model, "step_1", original=1.0) == Measurement(1.0, 12, 1.0)
    early = BuiltinEvaluator(logit, early=True)
    impossible = early.decide(model, "step_1", original=2.0)  # even all 12 agreeing cannot reach 2.0
    assert impossible.decided_early and impossible.metric is None and impossible.images == 4
    assert impossible.upper == pytest.approx(1.0)
    assert early.decide(model, "step_1", original=1.0) == Measurement(1.0, 12, 1.0)


def test_cosine_metric_ranks_by_cosine_distance(encoder):
    _, data = encoder
    assert BuiltinEvaluator(LogitEvaluator(data, "cosine")).distance == "cosine"
