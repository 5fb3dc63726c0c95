"""Evaluation on executors and Dask workers gives what the in-process run gives, on the real model."""

import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nbquant.calibration.run import CalibrationSettings
from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.errors import ConfigError
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.evaluation.executors import EvaluationPool, open_pool
from nbquant.graph.prepare import prepare_model
from nbquant.search.auto import AutoSettings, auto_calibrate

pytestmark = pytest.mark.real
# Per-tensor weights on the portable target: the all-int8 model loses about 5 of 300 images on every CPU, so it
# misses max_drop 0.001 and is decided early wherever the test runs (the search may end without a passing step).
COARSE_CALIB = CalibrationSettings(calib_num=16, per_channel=False, deploy_target="portable")
SEARCH = AutoSettings(max_drop=0.001, eval_num=300, rank_num=8, max_evals=6)


def _folder_with_a_broken_image(real_data, tmp_path, n=40):
    """``n`` real images (symlinks) and one file that is not an image, named like the others."""
    for path in real_data.files[:n]:
        (tmp_path / path.name).symlink_to(path.resolve())
    broken = real_data.files[0].name.split("_")[0] + "_zz_broken.JPEG"
    (tmp_path / broken).write_bytes(b"not a jpeg")
    return ImageDataset(tmp_path)


def test_thread_pool_gives_the_in_process_outputs_and_decisions(real_model_path, real_data, tmp_path):
    model = prepare_model(real_model_path).model
    pre = resolve_preprocess(model, None)
    data = _folder_with_a_broken_image(real_data, tmp_path)
    here = LogitEvaluator(data, batch_size=8).prepare(model, pre, progress=False)
    with ThreadPoolExecutor(2) as executor:
        pooled = LogitEvaluator(data, batch_size=8, executor=executor).prepare(model, pre, progress=False)
        assert len(pooled.images_) == len(here.images_) == 40  # the broken file is left out by both
        assert pooled.images_.files == here.images_.files
        np.testing.assert_array_equal(pooled.reference_, here.reference_)
        np.testing.assert_array_equal(pooled.order_, here.order_)
        original = here.evaluate(model)
        assert pooled.evaluate(model) == original
        for target in (original, original + 0.2):  # a pass (all images) and an early fail
            assert pooled.decide(model, target) == here.decide(model, target)
        assert here.decide(model, original + 0.2)[1] < 40


def test_ranking_on_a_thread_pool_gives_the_in_process_scores(real_model_path, real_data):
    from nbquant.calibration.calibrator import Calibrator
    from nbquant.calibration.run import build_config, collect_statistics
    from nbquant.data.pixel_cache import cache_images
    from nbquant.evaluation.shards import ImageFiles
    from nbquant.search.ranking import rank_layers

    prepared = prepare_model(real_model_path)
    pre = resolve_preprocess(prepared.model, None)
    settings = CalibrationSettings(calib_num=8, weight_rounding="nearest")
    calib = real_data.spread(8)
    config = build_config(prepared, settings, None)
    calibrator = Calibrator(config).fit(prepared.model, *collect_statistics(prepared, calib, pre, settings, False))
    quant = dict(list(calibrator.quant_.items())[:6])
    here = rank_layers(prepared.model, quant, cache_images(calib, pre, progress=False), progress=False,
                       output_qparams=calibrator.tensor_qparams_)
    with ThreadPoolExecutor(2) as executor:
        files = ImageFiles.of(calib, pre)
        pooled = rank_layers(prepared.model, quant, files, progress=False, output_qparams=calibrator.tensor_qparams_,
                             pool=EvaluationPool(executor))
    assert pooled[["layer", "score"]].equals(here[["layer", "score"]])
    assert here["score"].nunique() == 6


def test_pool_settings_are_checked():
    with pytest.raises(ConfigError, match="Executor or a dask"):
        EvaluationPool(object())
    with pytest.raises(ConfigError, match="not both"):
        open_pool("tcp://127.0.0.1:1", 2)
    with pytest.raises(ConfigError, match="--workers"):
        open_pool(workers=0)
    assert open_pool() is None


# ---- Dask: a LocalCluster of two worker processes ----


@pytest.fixture(scope="module")
def in_process(real_model_path, real_data, tmp_path_factory):
    return auto_calibrate(real_model_path, real_data, save_dir=tmp_path_factory.mktemp("in_process"),
                          calib_settings=COARSE_CALIB, settings=SEARCH, progress=False)


@pytest.fixture(scope="module")
def dask_pool():
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    pool = open_pool(workers=2)
    yield pool
    pool.close()


def _record(result) -> dict:
    record = json.loads(result.paths.record.read_text())
    for step in record["steps"]:
        step.pop("seconds")
    return record


def _assert_same_run(result, reference):
    assert result.ok == reference.ok
    assert result.float_layers == reference.float_layers
    assert (result.original_metric, result.final_metric, result.deploy_metric) == \
        (reference.original_metric, reference.final_metric, reference.deploy_metric)
    assert _record(result) == _record(reference)


def test_dask_workers_give_the_in_process_run(in_process, dask_pool, real_model_path, real_data, tmp_path):
    assert len(dask_pool.workers()) == 2
    result = auto_calibrate(real_model_path, real_data, save_dir=tmp_path, calib_settings=COARSE_CALIB,
                            settings=SEARCH, progress=False, executor=dask_pool)
    first = result.history.set_index("kind").loc["all_int8"]
    assert not first["ok"] and first["decided_early"]  # misses the budget: the shards left were cancelled
    _assert_same_run(result, in_process)
    assert "evaluating on EvaluationPool(http://127.0.0.1" in result.paths.log_file.read_text()


def test_a_worker_killed_mid_evaluation_changes_nothing(in_process, dask_pool, real_model_path, real_data,
                                                          tmp_path):
    client, killed = dask_pool.executor, []
    pids = client.run(os.getpid)

    def kill_a_worker_during_a_search_step():
        record = tmp_path / "log" / "accuracy_based_auto_calibration_record.json"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            steps = json.loads(record.read_text())["steps"] if record.is_file() else []
            busy = [w for w, tasks in client.processing().items() if any("evaluate_shard" in t for t in tasks)]
            if steps and busy:  # the float model is evaluated: this is a search step's shard
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_during_a_search_step, daemon=True)
    killer.start()
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # the lost worker is expected
    result = auto_calibrate(real_model_path, real_data, save_dir=tmp_path, calib_settings=COARSE_CALIB,
                            settings=SEARCH, progress=False, executor=dask_pool)
    killer.join()
    assert killed, "no worker was killed during a search step"
    _assert_same_run(result, in_process)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it
