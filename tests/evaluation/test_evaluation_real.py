"""Evaluation of the real model on the real images: the documented top-1."""

import pytest

from nbquant.evaluation.accuracy import evaluate

pytestmark = pytest.mark.real


def test_real_model_top1_is_documented_value(real_model_path, real_data):
    """The shared EfficientNet-Lite0 scores 886/1000 with the "half" preset (shared/README)."""
    result = evaluate(real_model_path, real_data, batch_size=32, progress=False)
    assert result.n == 1000 and not real_data.skipped
    assert int(result.samples["correct"].sum()) == 886
    assert result.top1 == 0.886
