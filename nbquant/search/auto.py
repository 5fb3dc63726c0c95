"""Accuracy-based auto calibration: calibrate once, rank layers, fall back the fewest to float.

Flow (the reference tool's, with nbquant's differences in brackets): evaluate the float
model; calibrate all layers [once: scales come from float activations, so re-calibrating
after a fallback would change nothing]; evaluate the all-int8 model; rank layers; search
for a float set that meets the budget [evaluations cached by configuration, budget-bounded,
default strategy verifies each layer it keeps in float; a configuration passes only when
its deploy model, run with onnxruntime's integer kernels, meets the budget too]; write the
final models and files. Steps live in ``steps``, the ending in ``outcome``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ..cache import Cache, make_key, open_cache
from ..calibration.calibrator import Calibrator
from ..calibration.run import CalibrationSettings, build_config, fit_calibrator, quantize_models
from ..data.binding import bind_data, describe_preprocess, fingerprint
from ..data.pixel_cache import cache_images
from ..data.tensors import TensorDataset
from ..errors import ConfigError, stage
from ..evaluation.evaluators import LogitEvaluator
from ..evaluation.session import make_session
from ..evaluation.shards import ImageFiles
from ..files import DEFAULT_RUNS_DIR, RunPaths, atomic_write_json, atomic_write_text, log_to_file, remove_dir
from ..graph.prepare import prepare_model
from ..quantize.cpu_probe import probe_int8
from ..timing import StageTimes, recording, timed
from .auto_settings import AutoSettings
from .context import RunContext
from .measure import EvaluatorError, search_evaluator
from .outcome import AutoCalibrationResult, fail, finish
from .precision import costs_matter, layer_costs, preferred_step, settle_states
from .ranking import rank_layers, ranking_pairs, unranked
from .record import (
    EvaluationOrder,
    SavedRanking,
    SearchRecord,
    Step,
    check_resume,
    jsonable_metric,
    read_record,
    save_record,
)
from .steps import StepEvaluator, choose_judge

__all__ = ["AutoCalibrationResult", "AutoSettings", "EvaluatorError", "auto_calibrate"]

log = logging.getLogger(__name__)


def auto_calibrate(model, data, *, calib_data=None, evaluator=None, settings: AutoSettings | None = None,
                   calib_settings: CalibrationSettings | None = None, save_dir=None, resume: bool = False,
                   preprocess=None, config=None, progress: bool = True, executor=None,
                   cache=True) -> AutoCalibrationResult:
    """Quantize ``model`` with as many int8 layers as the accuracy budget allows.

    ``data``: evaluation images (first ``settings.eval_num``); ``calib_data``: calibration
    images (default ``data``; ``calib_settings.calib_num`` spread over it). For models that do not
    take images both can be arrays instead (a ``.npz``/``.npy`` file, a dict of arrays, input dicts;
    see :mod:`nbquant.data.tensors`). ``evaluator``: any object with ``evaluate(model_path)`` and
    ``metric_eval(original, new)``; by default the built-in one with ``settings.metric`` and
    ``settings.max_drop`` (no metric: top-1 for class scores with labels, else top-1 agreement with the
    float model; IoU with the float model's thresholded map for maps; mean cosine similarity to the float
    model's output for the rest, e.g. embeddings).
    ``config`` (QuantConfig or config.json path) sets per-layer methods; layers it disables
    stay in float and are not searched. ``executor`` (a ``concurrent.futures.Executor`` or a
    ``dask.distributed`` Client) runs the built-in evaluator's images in shards on its workers;
    the result and the record are the same as in this process. ``cache`` (True: the user's cache folder,
    a folder, a :class:`~nbquant.cache.Cache`, or False) keeps decoded images, float outputs, calibration
    statistics, the ranking and every evaluated configuration across runs, so a second run with another
    budget evaluates only what is new; the result is the same as without it.
    """
    with recording() as times:
        return _auto_calibrate(model, data, calib_data, evaluator, settings, calib_settings, save_dir, resume,
                               preprocess, config, progress, executor, open_cache(cache), times)


def _auto_calibrate(model, data, calib_data, evaluator, settings, calib_settings, save_dir, resume, preprocess,
                    config, progress, executor, cache: Cache, times: StageTimes) -> AutoCalibrationResult:
    start = time.perf_counter()
    settings = settings or AutoSettings()
    calib_settings = calib_settings or CalibrationSettings()
    with timed("preparing the model and data"):
        prepared = prepare_model(model)
        all_data, pre = bind_data(prepared, data, preprocess)
    eval_data = all_data.subset(min(settings.eval_num, len(all_data))) if settings.eval_num else all_data
    calib_all = bind_data(prepared, calib_data, preprocess)[0] if calib_data is not None else all_data
    if type(calib_all) is not type(all_data):
        raise ConfigError("calibration and evaluation data must both be images or both be arrays")
    calib_set = calib_all.spread(calib_settings.calib_num)
    if evaluator is None:  # metric None: the evaluator picks it from the float model's output (and logs it)
        evaluator = LogitEvaluator(eval_data, settings.metric, settings.max_drop, settings.relative,
                                   executor=executor)
    elif executor is not None:
        raise ConfigError("executor runs the built-in evaluator's shards; a custom evaluator brings its own "
                          "parallelism (leave executor unset)")
    config = build_config(prepared, calib_settings, config)
    save_dir = Path(save_dir) if save_dir is not None else DEFAULT_RUNS_DIR / prepared.name
    run = RunContext(prepared, eval_data, calib_set, pre, search_evaluator(evaluator, settings.early_decisions),
                     settings, calib_settings, config, RunPaths(save_dir, prepared.name), progress, start, times, cache)
    run.record = _open_record(run, _settings_dict(model, run), resume)
    run.temp = run.paths.make_temp_dir()
    try:
        with log_to_file(run.paths.log_file):
            return _run(run)
    finally:
        remove_dir(run.temp)


def _run(run: RunContext) -> AutoCalibrationResult:
    _log_start(run)
    if run.evaluator.pool is not None:
        log.info("evaluating on %r", run.evaluator.pool)
    run.evaluator.prepare(run.prepared.model, run.pre, run.temp, run.progress, run.cache)
    run.calib_set = run.evaluator.with_decoded(run.calib_set)  # calibration and ranking decode nothing new
    _write_order(run)
    _evaluate_original(run)
    calibrator = _calibrate(run)
    steps = StepEvaluator(run, calibrator, choose_judge(run.settings, calibrator))
    first = steps.step(frozenset(), kind="all_int8")
    log.info("Accuracy of global quantized model is %s", first.metric if not first.decided_early
             else f"below the target (decided after {first.images} images)")
    if first.ok and not run.settings.always_rank:
        log.info("the all-int8 model meets the budget: no layer falls back, so the layers are not ranked "
                 "(always_rank / --always-rank ranks them anyway)")
        ranking = unranked()
        for stale in (run.paths.ranking, run.paths.ranking.with_suffix(".csv")):  # an earlier run's, if any
            stale.unlink(missing_ok=True)
    else:
        ranking = _ranking(run, calibrator)
    final = frozenset() if first.ok else steps.search(run.settings.strategy, list(ranking["layer"]))
    if final is None:
        steps.close()
        return fail(run, calibrator, ranking)
    # profiled only where the choice depends on it (else the result profiles when asked: AutoCalibrationResult.costs)
    costs = layer_costs(run, calibrator) if final and costs_matter(run, calibrator, steps.cache[final]) else None
    chosen = preferred_step(run, costs, steps.cache[final])
    chosen = settle_states(run, steps, calibrator, costs, chosen)
    steps.close()
    return finish(run, calibrator, chosen, ranking, costs)


def _log_start(run: RunContext) -> None:
    settings, config = run.settings, run.config
    log.info("int8 on this CPU: %s", probe_int8().describe())
    log.info("preprocessing: %s", describe_preprocess(run.pre))
    log.info("auto calibration of %s: %d layers, budget %s %s, strategy %s, sensitivity %s, deploy target %s, "
             "save dir %s", run.prepared.name, len(config.layers), settings.max_drop,
             "relative" if settings.relative else "absolute", settings.strategy, settings.sensitivity,
             config.deploy_target.value, run.paths.save_dir)


def _write_order(run: RunContext) -> None:
    """The order the steps run the images in, one file name a line (log/evaluation_order.txt), where the
    evaluator says."""
    order = run.evaluator.run_order()
    if order is None:
        return
    files, rule = order
    atomic_write_text(run.paths.evaluation_order, "".join(f"{name}\n" for name in files))
    run.record.evaluation_order = EvaluationOrder(rule, run.paths.evaluation_order.name)
    save_record(run.record, run.paths.record)


def _evaluate_original(run: RunContext) -> None:
    """The float model's metric (step 0, once per record); refuse an evaluator that rejects it."""
    record = run.record
    if record.original_metric is None:
        with timed("evaluating the float model"):
            measured = run.evaluator.evaluate(run.prepared.model, "original_model")
        record.original_metric = jsonable_metric(measured.metric)
        record.steps.append(Step(0, "original", list(run.config.layers), record.original_metric, 0.0, True,
                                 seconds=0.0, images=measured.images))
        save_record(record, run.paths.record)
    original = record.original_metric
    log.info("Accuracy of original model is %s", original)
    ok, _ = run.evaluator.metric_eval(original, original)
    if not ok:
        raise ConfigError(f"metric_eval(original, original) is not ok for original metric {original!r}: "
                          "the evaluator's check rejects even the float model")


def _calibrate(run: RunContext) -> Calibrator:
    """Every layer calibrated once, and its models checked to load, before the search."""
    prepared = run.prepared
    with stage("the calibration pass", prepared.name):
        calibrator, run.calibration_key = fit_calibrator(prepared, run.calib_set, run.pre, run.calib_settings,
                                                         run.config, run.progress, run.cache)
    for model in quantize_models(prepared, calibrator):  # fail before the search, not after it
        with timed("checking the quantized models load"):
            make_session(model)
    return calibrator


def _ranking(run: RunContext, calibrator: Calibrator) -> pd.DataFrame:
    """The layers ranked most sensitive first (from the record when resuming), written to the results."""
    record, settings = run.record, run.settings
    if record.ranking is not None and record.ranking.method == settings.sensitivity:
        ranking = record.ranking.frame()
    else:
        rank_set = run.calib_set.spread(min(settings.rank_num, len(run.calib_set)))
        key = make_key("ranking", run.calibration_key, fingerprint(rank_set), run.pre, settings.sensitivity,
                       run.evaluator.distance)
        rows = run.cache.get(key)
        if rows is not None:
            log.info("ranking from the cache (%s)", key)
            ranking = pd.DataFrame(rows)
        else:
            ranking = _rank(run, calibrator, rank_set)
            run.cache.put(key, ranking.to_dict(orient="records"))
        record.ranking = SavedRanking(settings.sensitivity, ranking.to_dict(orient="records"))
        save_record(record, run.paths.record)
    atomic_write_json(run.paths.ranking, ranking_pairs(ranking))
    atomic_write_text(run.paths.ranking.with_suffix(".csv"), ranking.to_csv(index=False))
    return ranking


def _rank(run: RunContext, calibrator: Calibrator, rank_set) -> pd.DataFrame:
    settings = run.settings
    pool = run.evaluator.pool if settings.sensitivity == "output" else None  # cosine: one model, every twin
    if isinstance(rank_set, TensorDataset):
        images = rank_set
    elif pool is None:
        with timed("decoding images"):
            images = cache_images(rank_set, run.pre, progress=False)
    else:
        images = ImageFiles.of(rank_set, run.pre)
    with timed("ranking"), stage("ranking the layers", run.prepared.name):
        return rank_layers(run.prepared.model, calibrator.quant_, images, settings.sensitivity, run.progress,
                           run.prepared.table, calibrator.tensor_qparams_, pool, run.evaluator.distance)


def _open_record(run: RunContext, settings: dict, resume: bool) -> SearchRecord:
    path = run.paths.record
    if resume:
        if not path.is_file():
            raise ConfigError(f"cannot resume: no record at {path}; run once without --resume")
        record = read_record(path)
        check_resume(record, settings, path)
        return record
    record = SearchRecord(settings, list(run.config.layers))
    save_record(record, path)
    return record


def _settings_dict(model, run: RunContext) -> dict:
    """What must be equal for a record to be resumed (max_evals may grow between runs); the deploy
    target as resolved on this CPU, so ``auto`` resumes only where it picks the same target."""
    prepared, eval_data, calib_set = run.prepared, run.eval_data, run.calib_set
    digest = hashlib.sha256(prepared.model.SerializeToString()).hexdigest()[:16]
    auto = {k: v for k, v in asdict(run.settings).items() if k != "max_evals"}
    calib = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(run.calib_settings).items()}
    return {"model": str(model) if not hasattr(model, "graph") else prepared.name, "model_sha256": digest,
            "eval_data": str(eval_data.root), "eval_images": len(eval_data), "calib_data": str(calib_set.root),
            "calib_images": len(calib_set), "evaluator": repr(run.evaluator.evaluator), **auto,
            **{f"calib_{k}": v for k, v in calib.items()}, "deploy_target": run.config.deploy_target.value,
            "preprocess": describe_preprocess(run.pre)}
