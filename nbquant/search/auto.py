"""Accuracy-based auto calibration: calibrate once, rank layers, fall back the fewest to float.

Flow (the reference tool's, with nbquant's differences in brackets): evaluate the float
model; calibrate all layers [once: scales come from float activations, so re-calibrating
after a fallback would change nothing]; evaluate the all-int8 model; rank layers; search
for a float set that meets the budget [evaluations cached by configuration, budget-bounded,
default strategy verifies each layer it keeps in float; a configuration passes only when
its deploy model, run with onnxruntime's integer kernels, meets the budget too]; write the
final models and files.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..calibration.calibrator import Calibrator
from ..calibration.config import config_to_dict
from ..calibration.run import (
    CalibrationResult,
    CalibrationSettings,
    build_config,
    collect_statistics,
    quantize_models,
    write_run,
)
from ..data.binding import bind_data, describe_preprocess
from ..data.pixel_cache import cache_images
from ..data.tensors import TensorDataset
from ..errors import ConfigError, NbquantError, stage
from ..evaluation.evaluators import LogitEvaluator
from ..evaluation.session import make_session
from ..evaluation.shards import ImageFiles
from ..files import RunPaths, atomic_write_json, atomic_write_text, remove_dir, save_model
from ..graph.prepare import prepare_model
from ..quantize.cpu_probe import probe_int8
from ..quantize.deploy import make_deploy_model
from ..quantize.deploy_target import inexact_kinds_here, target_metadata
from ..quantize.fake_quant import make_fake_quant_model
from ..runlog import log_to_file
from .ranking import METHODS as SENSITIVITY_METHODS
from .ranking import rank_layers, ranking_pairs
from .record import check_resume, load_record, new_record, read_record, save_record
from .strategies import STRATEGIES, BudgetExhausted

log = logging.getLogger(__name__)


class EvaluatorError(NbquantError, RuntimeError):
    """The user's evaluator raised or returned an unusable metric."""


@dataclass(frozen=True)
class AutoSettings:
    """The search's settings: loss budget, strategy, sensitivity metric, evaluation budget, subsets."""

    max_drop: float = 0.005
    relative: bool = False
    strategy: str = "refine"
    sensitivity: str = "output"
    max_evals: int = 20
    eval_num: int | None = None
    rank_num: int = 32
    metric: str | None = None  # built-in evaluator: top1 when labeled, else agreement (images) or cosine (arrays)
    check_deploy: bool = True  # judge the deploy model (where this CPU runs it exactly); False: the simulation
    early_decisions: bool = True  # stop an evaluation once it cannot meet the budget (top1, agreement)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.sensitivity not in SENSITIVITY_METHODS:
            raise ConfigError(f"sensitivity must be one of {', '.join(SENSITIVITY_METHODS)}, "
                              f"got {self.sensitivity!r}")
        for name in ("max_evals", "rank_num") + (("eval_num",) if self.eval_num is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        value = self.max_drop
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"max_drop must be a number >= 0, got {value!r}")


@dataclass
class AutoCalibrationResult:
    """Outcome of one auto calibration; DataFrames for the history, ranking and final config."""

    ok: bool
    message: str
    original_metric: object
    final_metric: object
    float_layers: list[str]
    history: pd.DataFrame = field(repr=False)
    ranking: pd.DataFrame = field(repr=False)
    final_config: pd.DataFrame | None = field(repr=False)
    paths: RunPaths = field(repr=False)
    seconds: float = 0.0
    calibration: CalibrationResult | None = field(default=None, repr=False)
    deploy_metric: object = None  # the deploy model's metric (onnxruntime integer kernels)
    calibrator: Calibrator | None = field(default=None, repr=False)  # every layer, as searched
    evaluator: object = field(default=None, repr=False)  # prepared: images decoded, float outputs cached

    @property
    def evaluations(self) -> int:
        return len(self.history)

    @property
    def images_evaluated(self) -> int:
        """Images run through a model over the whole search (the float model included); an early
        decision counts the images it used."""
        return int(self.history["images"].fillna(0).sum())

    @property
    def deploy_evaluations(self) -> int:
        """Deploy models the search evaluated (every step, where it judged deploy models)."""
        return int((self.history["judged"] == "deploy").sum())

    def __repr__(self) -> str:
        n = len(self.ranking)
        return (f"AutoCalibrationResult(ok={self.ok}, int8={n - len(self.float_layers)}/{n}, "
                f"original={self.original_metric!r}, final={self.final_metric!r}, "
                f"evaluations={self.evaluations}, seconds={self.seconds:.1f})")


class _Search:
    """Evaluates configurations once each, records every step, tracks the best passing one.

    ``judge`` is ``deploy`` (the model that ships, run with onnxruntime's integer kernels, which
    compute it exactly on this CPU) or ``fake_quant`` (its float simulation: ``--no-check-deploy``,
    or a full-range target on a CPU that cannot run it exactly).
    """

    def __init__(self, prepared, calibrator, evaluator, record, paths, temp, max_evals, progress, judge: str,
                 early: bool):
        self.prepared, self.calibrator, self.evaluator = prepared, calibrator, evaluator
        self.record, self.paths, self.temp, self.max_evals = record, paths, temp, max_evals
        self.judge, self.early = judge, early
        self.cache = {frozenset(s["float_layers"]): s for s in record["steps"] if s["kind"] != "original"}
        self.bar = tqdm(total=max_evals, desc="auto-calibrate", unit="eval", disable=not progress)
        self.bar.update(min(len(record["steps"]), max_evals))

    def check(self, float_layers: frozenset) -> bool:
        return self.step(float_layers)["ok"]

    def step(self, float_layers: frozenset, kind: str = "search") -> dict:
        if float_layers in self.cache:
            return self.cache[float_layers]
        if len(self.record["steps"]) >= self.max_evals:
            raise BudgetExhausted()
        number = len(self.record["steps"])
        start = time.perf_counter()
        quant = {k: v for k, v in self.calibrator.quant_.items() if k not in float_layers}
        build = make_deploy_model if self.judge == "deploy" else make_fake_quant_model
        with stage(f"building the {self.judge.replace('_', '-')} model of step {number}", self.prepared.name):
            model = build(self.prepared.model, quant, self.calibrator.tensor_qparams_,
                          self.calibrator.config.deploy_target)
        metric, images, bound = self.evaluate(model, number, float_layers, self.judge)
        if metric is None:  # proved to miss the budget before the last image
            ok, loss = False, None
        else:
            ok, loss = self.evaluator.metric_eval(self.record["original_metric"], metric)
        step = {"step": number, "kind": kind, "float_layers": sorted(float_layers), "metric": _jsonable(metric),
                "loss": None if loss is None else float(loss), "ok": bool(ok), "judged": self.judge,
                "images": images, "decided_early": metric is None,
                "metric_upper": bound if metric is None else None}
        if self.judge == "deploy":
            step.update(deploy_metric=step["metric"], deploy_loss=step["loss"])
        step["seconds"] = round(time.perf_counter() - start, 3)
        self.record["steps"].append(step)
        save_record(self.record, self.paths.record)
        self.cache[float_layers] = step
        outcome = (f"metric {metric}, loss {loss:.5f}, {'ok' if ok else 'not ok'}" if metric is not None else
                   f"not ok, decided after {images} images")
        log.info("step %d: %d of %d layers in float, %s model %s", number, len(float_layers),
                 len(self.calibrator.quant_), self.judge.replace("_", "-"), outcome)
        self.bar.update(1)
        self.bar.set_postfix(step=number, float=len(float_layers), metric=f"{metric}", ok=ok)
        return step

    def evaluate(self, model, number: int, float_layers, which: str = "fake_quant") -> tuple:
        """(metric, images used, upper bound); the metric is None when the configuration was decided
        early to fail, and the bound is the best it could still have reached."""
        where = f"step {number} ({len(float_layers)} layers in float, {which.replace('_', '-')} model)"
        images = None
        try:
            if isinstance(self.evaluator, LogitEvaluator) and self.early and self.evaluator.decides_early:
                metric, images, bound = self.evaluator.decide(model, self.record["original_metric"])
                if metric is None:
                    return None, images, bound
            elif isinstance(self.evaluator, LogitEvaluator):
                metric, images = self.evaluator.evaluate(model), len(self.evaluator.images_)
            else:
                path = self.temp / f"step_{number}_{which}_model.onnx"
                save_model(model, path)
                metric = self.evaluator.evaluate(str(path))
                path.unlink(missing_ok=True)
        except (KeyboardInterrupt, NbquantError):
            raise
        except Exception as exc:
            raise EvaluatorError(f"the evaluator raised at {where}: {exc.__class__.__name__}: {exc}; "
                                 f"the record {self.paths.record} is kept") from exc
        if metric is None or (isinstance(metric, float) and math.isnan(metric)):
            raise EvaluatorError(f"the evaluator returned {metric!r} at {where}; the record {self.paths.record} "
                                 "is kept")
        return metric, images, metric

    def best_passing(self) -> frozenset | None:
        """The passing configuration with the fewest float layers (then the smallest loss)."""
        passing = [s for s in self.record["steps"] if s["ok"] and s["kind"] != "original"]
        best = min(passing, key=lambda s: (len(s["float_layers"]), s["loss"]), default=None)
        return None if best is None else frozenset(best["float_layers"])


def auto_calibrate(model, data, *, calib_data=None, evaluator=None, settings: AutoSettings | None = None,
                   calib_settings: CalibrationSettings | None = None, save_dir=None, resume: bool = False,
                   preprocess=None, config=None, progress: bool = True, executor=None) -> AutoCalibrationResult:
    """Quantize ``model`` with as many int8 layers as the accuracy budget allows.

    ``data``: evaluation images (first ``settings.eval_num``); ``calib_data``: calibration
    images (default ``data``; ``calib_settings.calib_num`` spread over it). For models that do not
    take images both can be arrays instead (a ``.npz``/``.npy`` file, a dict of arrays, input dicts;
    see :mod:`nbquant.tensor_data`). ``evaluator``: any object with ``evaluate(model_path)`` and
    ``metric_eval(original, new)``; by default top-1 (or, without labels, top-1 agreement with the
    float model; for arrays, mean cosine similarity to the float model's output) with
    ``settings.max_drop``.
    ``config`` (QuantConfig or config.json path) sets per-layer methods; layers it disables
    stay in float and are not searched. ``executor`` (a ``concurrent.futures.Executor`` or a
    ``dask.distributed`` Client) runs the built-in evaluator's images in shards on its workers;
    the result and the record are the same as in this process.
    """
    start = time.perf_counter()
    settings = settings or AutoSettings()
    calib_settings = calib_settings or CalibrationSettings()
    prepared = prepare_model(model)
    all_data, pre = bind_data(prepared, data, preprocess)
    eval_data = all_data.subset(min(settings.eval_num, len(all_data))) if settings.eval_num else all_data
    calib_all = bind_data(prepared, calib_data, preprocess)[0] if calib_data is not None else all_data
    if type(calib_all) is not type(all_data):
        raise ConfigError("calibration and evaluation data must both be images or both be arrays")
    calib_set = calib_all.spread(calib_settings.calib_num)
    if evaluator is None:
        unlabeled = "cosine" if isinstance(eval_data, TensorDataset) else "agreement"
        metric = settings.metric or ("top1" if eval_data.labeled else unlabeled)
        evaluator = LogitEvaluator(eval_data, metric, settings.max_drop, settings.relative, executor=executor)
    elif executor is not None:
        raise ConfigError("executor runs the built-in evaluator's shards; a custom evaluator brings its own "
                          "parallelism (leave executor unset)")
    config = build_config(prepared, calib_settings, config)
    paths = RunPaths(Path(save_dir) if save_dir is not None else Path("runs") / prepared.name, prepared.name)
    run_settings = _settings_dict(model, prepared, eval_data, calib_set, settings, calib_settings, evaluator, config)
    run_settings["preprocess"] = describe_preprocess(pre)
    record = _open_record(paths, run_settings, list(config.layers), resume)
    temp = paths.make_temp_dir()
    try:
        with log_to_file(paths.log_file):
            return _run(prepared, eval_data, calib_set, pre, evaluator, settings, calib_settings, config, paths,
                        record, temp, progress, start)
    finally:
        remove_dir(temp)


def _run(prepared, eval_data, calib_set, pre, evaluator, settings, calib_settings, config, paths, record, temp,
         progress, start) -> AutoCalibrationResult:
    log.info("int8 on this CPU: %s", probe_int8().describe())
    log.info("preprocessing: %s", describe_preprocess(pre))
    log.info("auto calibration of %s: %d layers, budget %s %s, strategy %s, sensitivity %s, deploy target %s, "
             "save dir %s", prepared.name, len(config.layers), settings.max_drop,
             "relative" if settings.relative else "absolute", settings.strategy, settings.sensitivity,
             config.deploy_target.value, paths.save_dir)
    if isinstance(evaluator, LogitEvaluator):
        if evaluator.pool is not None:
            log.info("evaluating on %r", evaluator.pool)
        evaluator.prepare(prepared.model, pre, temp / "evaluation_pixels.u8", progress)
        _write_order(evaluator, paths, record)
    if record["original_metric"] is None:
        original_model = prepared.model
        if not isinstance(evaluator, LogitEvaluator):
            original_model = str(save_model(prepared.model, temp / "original_model.onnx"))
        record["original_metric"] = _jsonable(evaluator.evaluate(original_model))
        images = len(evaluator.images_) if isinstance(evaluator, LogitEvaluator) else None
        record["steps"].append({"step": 0, "kind": "original", "float_layers": list(config.layers),
                                "metric": record["original_metric"], "loss": 0.0, "ok": True, "seconds": 0.0,
                                "images": images})
        save_record(record, paths.record)
    original = record["original_metric"]
    log.info("Accuracy of original model is %s", original)
    ok, _ = evaluator.metric_eval(original, original)
    if not ok:
        raise ConfigError(f"metric_eval(original, original) is not ok for original metric {original!r}: "
                          "the evaluator's check rejects even the float model")
    with stage("the calibration pass", prepared.name):
        statistics = collect_statistics(prepared, calib_set, pre, calib_settings, progress)
    with stage("calibrating the layers", prepared.name):
        calibrator = Calibrator(config).fit(prepared.model, *statistics)
    for model in quantize_models(prepared, calibrator):  # fail before the search, not after it
        make_session(model)
    judge = _judge(settings, calibrator)
    search = _Search(prepared, calibrator, evaluator, record, paths, temp, settings.max_evals, progress, judge,
                     settings.early_decisions)
    first = search.step(frozenset(), kind="all_int8")
    log.info("Accuracy of global quantized model is %s", first["metric"] if first["metric"] is not None
             else f"below the target (decided after {first['images']} images)")
    pool = evaluator.pool if isinstance(evaluator, LogitEvaluator) else None
    distance = "cosine" if getattr(evaluator, "metric", None) == "cosine" else "kl"
    ranking = _ranking(prepared, calibrator, calib_set, pre, settings, record, paths, progress, pool, distance)
    final = frozenset() if first["ok"] else _search(search, settings.strategy, list(ranking["layer"]))
    search.bar.close()
    history = load_record(paths.record)
    if final is None:
        result = _failed(record, history, ranking, paths, calibrator, prepared, settings, start)
    else:
        result = _finish(final, search, record, history, ranking, paths, calibrator, prepared, start)
    result.calibrator, result.evaluator = calibrator, evaluator
    return result


def _write_order(evaluator: LogitEvaluator, paths: RunPaths, record: dict) -> None:
    """The order the steps run the images in, one file name a line (log/evaluation_order.txt)."""
    files = evaluator.images_.files
    atomic_write_text(paths.evaluation_order, "".join(f"{files[i]}\n" for i in evaluator.order_))
    rule = ("the float model's misses first, then ascending float top-1 margin" if evaluator.decides_early
            else "file order")
    record["evaluation_order"] = {"rule": rule, "file": paths.evaluation_order.name}
    save_record(record, paths.record)


def _judge(settings: AutoSettings, calibrator: Calibrator) -> str:
    """``deploy`` where this CPU runs the deploy model exactly, else ``fake_quant`` (with a warning)."""
    if not settings.check_deploy:
        return "fake_quant"
    inexact = inexact_kinds_here(target_metadata(calibrator.quant_, calibrator.config.deploy_target))
    if inexact:
        log.warning("deploy target %s: this CPU computes full-range int8 inexactly for %s layers, so the search "
                    "judges the fake-quant simulation (what a CPU with exact int8 kernels computes) and the deploy "
                    "model is not evaluated here. --deploy-target portable is exact on every CPU.",
                    calibrator.config.deploy_target.value, ", ".join(inexact))
        return "fake_quant"
    return "deploy"


def _search(search: _Search, strategy: str, ranked: list[str]) -> frozenset | None:
    try:
        found = STRATEGIES[strategy](ranked, search.check)
    except BudgetExhausted:
        log.warning("evaluation budget of %d spent; keeping the best passing configuration found", search.max_evals)
        found = None
    best = search.best_passing()
    return found if found is not None else best


def _ranking(prepared, calibrator, calib_set, pre, settings, record, paths, progress, pool,
             distance) -> pd.DataFrame:
    if record.get("ranking") and record["ranking"]["method"] == settings.sensitivity:
        ranking = pd.DataFrame(record["ranking"]["rows"])
    else:
        rank_set = calib_set.spread(min(settings.rank_num, len(calib_set)))
        pool = pool if settings.sensitivity == "output" else None  # cosine: one model with every layer's twin
        if isinstance(rank_set, TensorDataset):
            images = rank_set
        else:
            images = cache_images(rank_set, pre, progress=False) if pool is None else ImageFiles.of(rank_set, pre)
        with stage("ranking the layers", prepared.name):
            ranking = rank_layers(prepared.model, calibrator.quant_, images, settings.sensitivity, progress,
                                  prepared.table, calibrator.tensor_qparams_, pool, distance)
        record["ranking"] = {"method": settings.sensitivity, "rows": ranking.to_dict(orient="records")}
        save_record(record, paths.record)
    atomic_write_json(paths.ranking, ranking_pairs(ranking))
    atomic_write_text(paths.ranking.with_suffix(".csv"), ranking.to_csv(index=False))
    return ranking


def _finish(found, search, record, history, ranking, paths, calibrator, prepared, start):
    step = search.cache[frozenset(found)]
    kept_float = {name for name, layer in calibrator.config.layers.items() if not layer.enabled}
    final = sorted(set(found) | kept_float)
    final_config = calibrator.config.with_float(final)
    final_cal = calibrator.with_config(final_config)
    fake, deploy = quantize_models(prepared, final_cal)
    result = CalibrationResult(prepared, final_config, final_cal, fake, deploy, 0.0, paths)
    write_run(result, paths)
    atomic_write_json(paths.final_config, config_to_dict(final_config))
    deploy_metric = step.get("deploy_metric")
    if deploy_metric is None and not inexact_kinds_here(target_metadata(final_cal.quant_, final_config.deploy_target)):
        deploy_metric = _check_deploy(search.evaluator, deploy, paths, record["original_metric"])
    seconds = time.perf_counter() - start
    n, n_int8 = len(final_config.layers), len(final_config.enabled)
    log.info("Accuracy of saved model is %s (%d of %d layers in int8, %d evaluations)", step["metric"],
             n_int8, n, len(record["steps"]))
    log.info("The generated model is stored in dir: %s", paths.results)
    log.info("Cost time %.1f s", seconds)
    message = (f"target met: {n_int8} of {n} layers in int8, metric {step['metric']} "
               f"(original {record['original_metric']}, loss {step['loss']:.5f}; deploy model {deploy_metric})")
    table = pd.DataFrame({"layer": list(final_config.layers),
                          "op": [layer.op for layer in prepared.layers],
                          "quant_enable": [c.enabled for c in final_config.layers.values()]})
    return AutoCalibrationResult(True, message, record["original_metric"], step["metric"], final, history,
                                 ranking, table, paths, seconds, result, deploy_metric)


def _check_deploy(evaluator, deploy, paths: RunPaths, original):
    """Evaluate the written deploy model once (search without ``check_deploy``): its integer
    kernels round differently from the simulation the search used, so say so when it misses."""
    metric = evaluator.evaluate(deploy if isinstance(evaluator, LogitEvaluator) else str(paths.deploy_model))
    ok, loss = evaluator.metric_eval(original, metric)
    log.info("Accuracy of deploy model is %s (loss %.5f)", metric, loss)
    if not ok:
        log.warning("the deploy model (onnxruntime integer kernels) misses the target by rounding: metric %s, "
                    "loss %.5f; the fake-quant model meets it. A tighter --max-drop leaves a margin.", metric, loss)
    return _jsonable(metric)


def _failed(record, history, ranking, paths, calibrator, prepared, settings, start):
    for stale in (paths.fake_quant_model, paths.deploy_model, paths.final_config, paths.quant_json):
        stale.unlink(missing_ok=True)
    spent = len(record["steps"]) >= settings.max_evals
    n = len(calibrator.config.layers)
    message = (f"No quantized model is generated: no configuration met the target within max_evals="
               f"{settings.max_evals} evaluations; raise --max-evals or relax --max-drop and run again."
               if spent else
               f"No quantized model is generated: even with {n - 1} of {n} layers in float the target is not met; "
               "the accuracy target may be too difficult to achieve. Relax the target (--max-drop) and run again.")
    log.warning(message)
    return AutoCalibrationResult(False, message, record["original_metric"], None, list(calibrator.config.layers),
                                 history, ranking, None, paths, time.perf_counter() - start)


def _open_record(paths: RunPaths, settings: dict, layers: list[str], resume: bool) -> dict:
    if resume:
        if not paths.record.is_file():
            raise ConfigError(f"cannot resume: no record at {paths.record}; run once without --resume")
        record = read_record(paths.record)
        check_resume(record, settings, paths.record)
        return record
    record = new_record(settings, layers)
    save_record(record, paths.record)
    return record


def _settings_dict(model, prepared, eval_data, calib_set, settings, calib_settings, evaluator, config) -> dict:
    """What must be equal for a record to be resumed (max_evals may grow between runs); the deploy
    target as resolved on this CPU, so ``auto`` resumes only where it picks the same target."""
    digest = hashlib.sha256(prepared.model.SerializeToString()).hexdigest()[:16]
    auto = {k: v for k, v in asdict(settings).items() if k != "max_evals"}
    calib = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(calib_settings).items()}
    return {"model": str(model) if not hasattr(model, "graph") else prepared.name, "model_sha256": digest,
            "eval_data": str(eval_data.root), "eval_images": len(eval_data), "calib_data": str(calib_set.root),
            "calib_images": len(calib_set), "evaluator": repr(evaluator), **auto,
            **{f"calib_{k}": v for k, v in calib.items()}, "deploy_target": config.deploy_target.value}


def _jsonable(metric):
    if isinstance(metric, (int, float, str, bool)) or metric is None:
        return metric
    try:
        return float(metric)
    except (TypeError, ValueError):
        return repr(metric)
