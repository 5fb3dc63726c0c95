"""The built-in evaluator before and after prepare."""

import pytest
from structures import text_encoder, text_samples

from nbquant.data.tensors import open_data
from nbquant.errors import ConfigError
from nbquant.evaluation.evaluators import LogitEvaluator


def test_results_are_none_until_prepare_and_using_them_says_so():
    model = text_encoder()
    evaluator = LogitEvaluator(open_data(text_samples(6)).bind(model), "cosine", batch_size=4)
    assert evaluator.images_ is None and evaluator.reference_ is None and evaluator.order_ is None
    for use in (lambda: evaluator.evaluate(model), lambda: evaluator.logits(model),
                lambda: evaluator.decide(model, 1.0)):
        with pytest.raises(ConfigError, match=r"prepare\(float_model, preprocess\) must run before evaluate"):
            use()
    evaluator.prepare(model, None, progress=False)
    assert len(evaluator.images_) == 6 and evaluator.reference_.shape[0] == 6 and len(evaluator.order_) == 6
    assert evaluator.evaluate(model) == pytest.approx(1.0)
