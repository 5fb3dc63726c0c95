"""Models that do not take images: arrays from .npz/.npy files, dicts or input dicts, through
calibration, evaluation, ranking, auto calibration and the command line (a synthetic sentence
encoder from tests/structures.py; the real one is in test_minilm_real.py)."""

import collections
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from structures import text_encoder, text_samples

from nbquant.calibration.run import CalibrationSettings, build_config, calibrate
from nbquant.cli import main
from nbquant.data.tensors import TensorDataset, open_data, save_arrays
from nbquant.errors import ConfigError, DataError
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.evaluation.metrics import cosine_similarity
from nbquant.evaluation.session import fused_ops, make_session
from nbquant.search.auto import AutoSettings, auto_calibrate
from nbquant.search.ranking import cosine_scores, shadow_model

CALIB = CalibrationSettings(calib_num=32, batch_size=8)
STATIC = CalibrationSettings(calib_num=32, batch_size=8, dynamic=False)  # calibrated MatMul inputs: the search runs


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    path = folder / "text_encoder.onnx"
    onnx.save(text_encoder(), path)
    np.savez(folder / "samples.npz", **text_samples(160))
    return path, folder / "samples.npz"


def test_array_sources_agree_and_sample_like_image_folders(encoder):
    _, npz = encoder
    arrays = text_samples(160)
    rows = [{k: v[i] for k, v in arrays.items()} for i in range(160)]
    from_file, from_dict, from_rows = open_data(npz), open_data(arrays), open_data(rows)
    for data in (from_dict, from_rows):
        assert len(data) == 160 and all(np.array_equal(data.inputs[k], from_file.inputs[k]) for k in arrays)
    spread = from_file.spread(4)
    assert spread.files == ["samples.npz[0]", "samples.npz[40]", "samples.npz[80]", "samples.npz[120]"]
    assert np.array_equal(spread.gather([1])["input_ids"], arrays["input_ids"][[40]])
    batches = list(from_file.subset(10, offset=5).iter_batches(batch_size=4))
    assert [len(b.labels) for b in batches] == [4, 4, 2] and not from_file.labeled
    assert np.array_equal(batches[0].images["attention_mask"], arrays["attention_mask"][5:9])


def test_saved_arrays_read_back(tmp_path):
    arrays = text_samples(6)
    path = save_arrays(tmp_path / "new" / "samples.npz", arrays, labels=np.arange(6))
    data = open_data(path)
    assert data.labeled and data.labels.tolist() == list(range(6)) and list(data.inputs) == list(arrays)
    assert all(np.array_equal(data.inputs[name], a) for name, a in arrays.items())
    assert [p.name for p in path.parent.iterdir()] == ["samples.npz"]  # no temp file left
    with pytest.raises(DataError, match="batch_size must be an int >= 1, got 0"):
        next(data.batches(0))


def test_bad_arrays_name_the_source_and_input(encoder, tmp_path):
    model = onnx.load(str(encoder[0]))
    arrays = text_samples(8)
    with pytest.raises(DataError, match=r"missing \['attention_mask'\]"):
        TensorDataset({"input_ids": arrays["input_ids"]}, source="x.npz").bind(model)
    with pytest.raises(DataError, match="x.npz: input input_ids is int32, the model wants int64"):
        TensorDataset({**arrays, "input_ids": arrays["input_ids"].astype(np.int32)}, source="x.npz").bind(model)
    with pytest.raises(DataError, match=r"input attention_mask has shape \[8, 9\], the model wants \['N', 16\]"):
        TensorDataset({**arrays, "attention_mask": arrays["attention_mask"][:, :9]}, source="x.npz").bind(model)
    with pytest.raises(DataError, match="different numbers of samples"):
        TensorDataset({**arrays, "attention_mask": arrays["attention_mask"][:5]})
    with pytest.raises(DataError, match="input input_ids of sample 1 has shape"):
        TensorDataset.from_dicts([{"input_ids": np.zeros(3)}, {"input_ids": np.zeros(4)}])
    np.save(tmp_path / "one.npy", arrays["input_ids"])
    with pytest.raises(DataError, match="one unnamed array but the model has 2 inputs"):
        open_data(tmp_path / "one.npy").bind(model)
    with pytest.raises(DataError, match="does not exist"):
        open_data(tmp_path / "missing.npz")


def test_calibrate_and_auto_calibrate_on_arrays(encoder, tmp_path):
    path, npz = encoder
    run = calibrate(path, npz, tmp_path / "calibrate", STATIC, progress=False)
    assert len(run.config.enabled) == len(run.prepared.layers) == 8  # 4 MatMul a block; attention MatMuls stay float
    data = open_data(npz).bind(run.prepared.model)
    float_out = make_session(path).run(None, data.gather(np.arange(64)))[0]
    deploy_out = make_session(run.deploy_model).run(None, data.gather(np.arange(64)))[0]
    assert float_out.shape == deploy_out.shape == (64, 32)
    fidelity = cosine_similarity(float_out, deploy_out)
    assert fidelity.min() > 0.99 and not np.allclose(float_out, deploy_out)
    result = auto_calibrate(path, npz, save_dir=tmp_path / "auto", calib_settings=STATIC, progress=False,
                            settings=AutoSettings(max_drop=0.0001, rank_num=16))
    assert result.ok, result.message
    record = json.loads(result.paths.record.read_text())
    assert "metric='auto'" in record["settings"]["evaluator"] and record["settings"]["preprocess"].startswith("none")
    assert result.evaluator.metric == "cosine"  # picked by the output's shape: not class scores, not a map
    assert "metric cosine (not class scores" in (result.paths.log_file).read_text()
    assert 0 < len(result.float_layers) + len(result.states) < 8 and result.deploy_metric >= 1 - 0.0001
    assert set(result.states.values()) <= {"dynamic"}  # latency: a MatMul that misses the budget goes dynamic
    assert result.history["loss"].iloc[1] > 0.0001  # all-int8 misses this tight budget: the search ran
    assert (result.ranking["metric"] == "output").all() and result.ranking["score"].between(0.99, 1).all()


def test_array_data_refuses_image_settings(encoder):
    path, npz = encoder
    with pytest.raises(ConfigError, match="holds arrays"):
        calibrate(path, npz, settings=CALIB, preprocess="imagenet", progress=False)


def test_arrays_on_an_executor_give_the_in_process_results(encoder, tmp_path):
    """Arrays travel with each shard to the executor's workers; outputs, metric and the whole search
    record are the same as in this process."""
    path, npz = encoder
    model = onnx.load(str(path))
    data = open_data(npz).bind(model)
    here = LogitEvaluator(data, "cosine", batch_size=8).prepare(model, None, progress=False)
    settings = AutoSettings(max_drop=0.0001, rank_num=16)
    in_process = auto_calibrate(path, npz, save_dir=tmp_path / "here", calib_settings=STATIC, progress=False,
                                settings=settings)
    with ThreadPoolExecutor(2) as executor:
        pooled = LogitEvaluator(data, "cosine", batch_size=8, executor=executor).prepare(model, None, progress=False)
        np.testing.assert_array_equal(pooled.reference_, here.reference_)
        quantized = calibrate(path, npz, settings=STATIC, progress=False).deploy_model
        assert pooled.evaluate(quantized) == here.evaluate(quantized) < 1
        on_pool = auto_calibrate(path, npz, save_dir=tmp_path / "pool", calib_settings=STATIC, progress=False,
                                 settings=settings, executor=executor)
    assert on_pool.float_layers == in_process.float_layers and on_pool.states == in_process.states
    assert len(in_process.float_layers) + len(in_process.states) > 0
    columns = ["kind", "float_layers", "states", "metric", "ok"]
    assert on_pool.history[columns].equals(in_process.history[columns])
    assert on_pool.ranking["score"].tolist() == in_process.ranking["score"].tolist()


def test_command_line_takes_npz(encoder, tmp_path, capsys):
    path, npz = encoder
    code = main(["calibrate", str(path), "--data", str(npz), "--calib-num", "32", "--save-dir",
                 str(tmp_path / "cli"), "--eval-num", "64"])
    out = capsys.readouterr().out
    assert code == 0 and "mean cosine similarity to float, deploy: 0.99" in out
    assert main(["calibrate", str(path), "--data", str(npz), "--crop", "32"]) == 2
    assert "--crop preprocess images" in capsys.readouterr().err
    code = main(["auto-calibrate", str(path), "--data", str(npz), "--calib-num", "32", "--rank-num", "16",
                 "--max-drop", "0.01", "--save-dir", str(tmp_path / "auto")])
    assert code == 0 and "target met: 8 of 8 layers in int8" in capsys.readouterr().out


def test_dynamic_inputs_become_onnxruntime_dynamic_kernels(encoder, tmp_path):
    path, npz = encoder
    run = calibrate(path, npz, tmp_path, CALIB, progress=False)  # dynamic MatMul inputs: the default
    ops = collections.Counter(n.op_type for n in run.deploy_model.graph.node)
    assert ops["DynamicQuantizeLinear"] == ops["MatMulInteger"] == 8 and ops["QuantizeLinear"] == 0
    assert (run.layers["act_method"] == "dynamic").all()
    saved = json.loads(run.paths.config.read_text())
    assert all(saved[name]["activation_quant_params"]["dynamic"] for name in run.config.layers)
    reread = build_config(run.prepared, CalibrationSettings(), run.paths.config)
    assert all(layer.activation.dynamic for layer in reread.layers.values())
    data = open_data(npz).bind(run.prepared.model).gather(np.arange(64))
    reference, fake, deploy = (make_session(m).run(None, data)[0]
                               for m in (path, run.fake_quant_model, run.deploy_model))
    np.testing.assert_allclose(fake, deploy, atol=1e-5)  # integer sums are exact: nothing to simulate
    assert cosine_similarity(reference, deploy).min() > 0.99 and not np.allclose(reference, deploy)
    fused = fused_ops(run.paths.deploy_model, tmp_path)
    assert fused["DynamicQuantizeMatMul"] + fused["MatMulIntegerToFloat"] == 8 and fused["MatMulInteger"] == 0
    # the reference tool's local ranking sees the dynamic layers as they run, not a calibrated range
    shadow, pairs = shadow_model(run.prepared.model, run.calibrator.quant_)
    assert collections.Counter(n.op_type for n in shadow.graph.node)["DynamicQuantizeLinear"] == 8 == len(pairs)
    scores = cosine_scores(run.prepared.model, run.calibrator.quant_, open_data(npz).bind(run.prepared.model),
                           progress=False)
    assert all(0.99 < v < 1 for v in scores.values()), scores
