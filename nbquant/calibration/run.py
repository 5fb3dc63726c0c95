"""The calibration run: model and images in, fake-quant and deploy models and their files out."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
import pandas as pd
from tqdm.auto import tqdm

from ..cache import Cache, CacheKey, make_key, open_cache
from ..data.binding import bind_data, describe_preprocess, fingerprint
from ..data.images import ImageDataset
from ..data.preprocess import Preprocess
from ..data.tensors import TensorDataset
from ..errors import ConfigError, stage
from ..evaluation.session import make_session
from ..files import RunPaths, atomic_write_json, atomic_write_text, log_to_file, read_json, remove_dir, save_model
from ..graph.helpers import constants
from ..graph.prepare import PreparedModel, prepare_model
from ..options import check_int
from ..quantize.cpu_probe import probe_int8
from ..quantize.deploy import make_deploy_model
from ..quantize.deploy_target import DeployTarget, resolve_target, weight_max
from ..quantize.fake_quant import make_fake_quant_model
from ..quantize.layer_states import state_quant
from ..quantize.record_files import format_scale_offset_record, make_quant_map
from ..timing import recording, timed
from .calibrator import Calibrator, observe, observed_tensors, with_outputs
from .config import (
    ActivationQuant,
    ActMethod,
    QuantConfig,
    WeightRounding,
    config_from_dict,
    config_to_dict,
)
from .equalization import Equalize, equalize_prepared
from .input_covariance import CovarianceObserver, conv_geometry, weight_matrix
from .stored import pack_roundings, pack_statistics, unpack_roundings, unpack_statistics

log = logging.getLogger(__name__)

DEFAULT_ACT_METHOD = ActMethod.MSE


@dataclass(frozen=True)
class CalibrationSettings:
    """How to calibrate: images used, activation method and symmetry (``dynamic``, the default: MatMul
    inputs quantized on each run, as transformers want; False: calibrated like the others), weight
    granularity, the deploy target (which CPUs the deploy model must be exact on; see
    :mod:`nbquant.deploy_target`) and cross-layer equalization (``auto``: with per-tensor weights; see
    :mod:`nbquant.calibration.equalization`)."""

    calib_num: int = 100
    act_method: ActMethod = DEFAULT_ACT_METHOD
    symmetric: bool = False
    per_channel: bool = True
    bias_correction: bool = True
    batch_size: int = 10
    bins: int = 4096
    deploy_target: DeployTarget = DeployTarget.AUTO
    weight_rounding: WeightRounding = WeightRounding.GPTQ
    dynamic: bool = True  # MatMul layers quantize their input on each run (see ActivationQuant.dynamic)
    equalize: Equalize = Equalize.AUTO

    def __post_init__(self):
        object.__setattr__(self, "act_method", ActMethod.parse(self.act_method))
        object.__setattr__(self, "weight_rounding", WeightRounding.parse(self.weight_rounding))
        object.__setattr__(self, "deploy_target", DeployTarget.parse(self.deploy_target))
        object.__setattr__(self, "equalize", Equalize.parse(self.equalize))
        for name in ("calib_num", "batch_size", "bins"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))


@dataclass
class CalibrationResult:
    """What a calibration produced; ``layers`` is the per-layer table (a DataFrame)."""

    prepared: PreparedModel = field(repr=False)
    config: QuantConfig = field(repr=False)
    calibrator: Calibrator = field(repr=False)
    fake_quant_model: onnx.ModelProto = field(repr=False)
    deploy_model: onnx.ModelProto = field(repr=False)
    seconds: float
    paths: RunPaths | None = None
    stage_times: pd.DataFrame | None = field(default=None, repr=False)  # seconds per stage (nbquant.timing)

    @property
    def layers(self) -> pd.DataFrame:
        return self.calibrator.table

    def __repr__(self) -> str:
        where = f", save_dir='{self.paths.save_dir}'" if self.paths else ""
        return (f"CalibrationResult(model={self.prepared.name!r}, layers={len(self.config.layers)}, "
                f"int8={len(self.config.enabled)}, seconds={self.seconds:.1f}{where})")


def build_config(prepared: PreparedModel, settings: CalibrationSettings, config=None) -> QuantConfig:
    """Default config from ``settings`` (deploy target resolved for this CPU); a QuantConfig, or a
    config.json path, overrides the per-layer settings but not the weight ranges the target sets."""
    target = resolve_target(settings.deploy_target)
    ranges = {layer.name: weight_max(layer.kind, target) for layer in prepared.layers}
    activation = ActivationQuant(settings.act_method, settings.symmetric, dynamic=settings.dynamic)
    base = QuantConfig.default({layer.name: layer.op for layer in prepared.layers}, activation, settings.per_channel,
                               settings.bias_correction, ranges, target, settings.weight_rounding)
    base = replace(base, equalize=settings.equalize.resolve(settings.per_channel))
    if config is None:
        return base
    if isinstance(config, QuantConfig):
        base.check_layers(config.layers, "the given config")
        config = config if config.equalize is not None else replace(config, equalize=base.equalize)
        return with_weight_ranges(config, base)
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = read_json(path)
    except ValueError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
    return config_from_dict(data, base, str(path))


def with_weight_ranges(config: QuantConfig, base: QuantConfig) -> QuantConfig:
    """``config`` with ``base``'s deploy target and per-layer weight ranges."""
    layers = {name: replace(layer, weight=replace(layer.weight, weight_max=base.layers[name].weight.weight_max))
              for name, layer in config.layers.items()}
    return replace(config, layers=layers, deploy_target=base.deploy_target)


# Bump when the code changes what the statistics or the roundings are: cached ones of the old code are then
# never reused (every result derived from a calibration, the ranking and the evaluations, is keyed on these).
STATISTICS_VERSION = 3  # 2: channel means summed per sample in float32 first; 3: large batches binned in a sample
ROUNDING_VERSION = 3  # 2: vectorized GPTQ candidates; 3: lazy updates every 32 columns (issue 18)


def fit_calibrator(prepared: PreparedModel, data: ImageDataset | TensorDataset, pre: Preprocess | None,
                   settings: CalibrationSettings, config: QuantConfig, progress: bool = True,
                   cache: Cache | None = None) -> tuple[Calibrator, CacheKey]:
    """Every layer calibrated on ``data``: the statistics of one float pass and GPTQ's roundings come from
    ``cache`` when the model, the images and the settings that change them are the same, else they are
    computed (and stored). Returns the calibrator and the key naming it, for the results derived from it.
    With ``config.equalize`` the prepared model is equalized first, in place (what every later stage
    quantizes; the keys name the equalized model)."""
    cache = open_cache(cache)
    if config.equalize:
        with stage("cross-layer equalization", prepared.name):
            equalize_prepared(prepared, data, pre, settings.batch_size, progress, cache)
    elif prepared.equalization is not None:
        raise ConfigError(f"model {prepared.name} is equalized but the config says cross_layer_equalization "
                          "false: prepare the model anew")
    stats_key = make_key("calibration-statistics", STATISTICS_VERSION, prepared.model, fingerprint(data), pre,
                         settings.bins, settings.batch_size)
    rounding_key = make_key("weight-rounding", ROUNDING_VERSION, stats_key, config)
    gptq = settings.weight_rounding is WeightRounding.GPTQ
    stored, roundings = cache.get(stats_key), cache.get(rounding_key) if gptq else None
    if stored is None or (gptq and roundings is None):
        histograms, means, covariances = collect_statistics(prepared, data, pre, settings, progress)
        cache.put(stats_key, pack_statistics(histograms, means))
    else:
        log.info("calibration statistics%s from the cache (%s)", " and weight roundings" if gptq else "", stats_key)
        histograms, means = unpack_statistics(stored, settings.bins)
        covariances = {}
    with timed("calibrating the layers"), stage("calibrating the layers", prepared.name):
        given = unpack_roundings(roundings) if roundings is not None else None
        calibrator = Calibrator(config, prepared.equalization).fit(prepared.model, histograms, means, covariances,
                                                                   given)
    if gptq and roundings is None:
        cache.put(rounding_key, pack_roundings(calibrator.roundings_))
    return calibrator, rounding_key


def collect_statistics(prepared: PreparedModel, data: ImageDataset | TensorDataset, pre: Preprocess | None,
                       settings: CalibrationSettings, progress: bool = True) -> tuple[dict, dict, dict]:
    """One float pass over the calibration images: histograms of every needed activation,
    channel means of every layer input and, for GPTQ rounding, each layer's input covariance."""
    with timed("calibration statistics"):
        return _collect_statistics(prepared, data, pre, settings, progress)


def _collect_statistics(prepared, data, pre, settings, progress):
    names = observed_tensors(prepared.model, prepared.layers)
    session = make_session(with_outputs(prepared.model, names))
    batches = tqdm(data.iter_batches(pre, settings.batch_size), desc="calibrate", unit="batch",
                   total=-(-len(data) // settings.batch_size), disable=not progress)
    mean_names = list(dict.fromkeys(layer.input for layer in prepared.layers))
    covariances = covariance_observers(prepared) if settings.weight_rounding is WeightRounding.GPTQ else {}
    histograms, means = observe(session, names, (batch.images for batch in batches), settings.bins, mean_names,
                                [(layer_input(prepared, name), obs) for name, obs in covariances.items()])
    return histograms, means, covariances


def covariance_observers(prepared: PreparedModel) -> dict[str, CovarianceObserver]:
    """An input-covariance observer for every layer GPTQ can round (Conv group 1, Gemm, 2-D MatMul)."""
    nodes, values = {n.name: n for n in prepared.model.graph.node}, constants(prepared.model)
    out = {}
    for layer in prepared.layers:
        w = values[layer.weight]
        if weight_matrix(layer, w) is None:
            continue
        if layer.op == "Conv":
            geometry = conv_geometry(nodes[layer.name], w.shape)
            if geometry is not None:
                out[layer.name] = CovarianceObserver(geometry)
        else:
            out[layer.name] = CovarianceObserver()
    return out


def layer_input(prepared: PreparedModel, name: str) -> str:
    return next(layer.input for layer in prepared.layers if layer.name == name)


def quantize_models(prepared: PreparedModel, calibrator: Calibrator):
    """Fake-quant and deploy models for the calibrator's enabled layers; a failure names the stage
    and the node (:class:`~nbquant.errors.StageError`)."""
    target, outputs = calibrator.config.deploy_target, calibrator.tensor_qparams_
    with timed("building the quantized models"), stage("building the fake-quant model", prepared.name):
        fake = make_fake_quant_model(prepared.model, calibrator.quant_, outputs, target)
    with timed("building the quantized models"), stage("building the deploy model", prepared.name):
        deploy = make_deploy_model(prepared.model, calibrator.quant_, outputs, target)
    return fake, deploy


def calibrate(model, data, save_dir=None, settings: CalibrationSettings | None = None, config=None,
              preprocess=None, progress: bool = True, cache=True) -> CalibrationResult:
    """Calibrate every layer of ``model`` on ``calib_num`` images of ``data`` spread over it (after
    cross-layer equalization where ``settings.equalize`` or the config asks for it).

    ``data``: an image folder or :class:`ImageDataset`, or arrays for models that do not take
    images (a ``.npz``/``.npy`` file, a dict of arrays, input dicts: see :func:`~nbquant.data.tensors.open_data`).
    ``config`` (QuantConfig or config.json path) may disable layers or change methods.
    With ``save_dir`` the run folder is written (results/, tmp/, log/), all or nothing.
    ``cache``: True (the user's cache folder, see :mod:`nbquant.cache`), a folder, a
    :class:`~nbquant.cache.Cache`, or False: statistics and roundings computed before are reused.
    """
    with recording() as times:
        return _calibrate(model, data, save_dir, settings, config, preprocess, progress, cache, times)


def _calibrate(model, data, save_dir, settings, config, preprocess, progress, cache, times) -> CalibrationResult:
    start = time.perf_counter()
    settings = settings or CalibrationSettings()
    with timed("preparing the model and data"):
        prepared = prepare_model(model)
        dataset, pre = bind_data(prepared, data, preprocess)
    calib = dataset.spread(settings.calib_num)
    quant_config = build_config(prepared, settings, config)
    paths = RunPaths(Path(save_dir), prepared.name) if save_dir is not None else None
    with _maybe_log(paths):
        log.info("int8 on this CPU: %s", probe_int8().describe())
        log.info("preprocessing: %s", describe_preprocess(pre))
        log.info("calibrating %s: %d layers, %d samples from %s, activations %s%s, weights %s%s, deploy target %s%s",
                 prepared.name, len(prepared.layers), len(calib), dataset.root, settings.act_method.value,
                 " symmetric" if settings.symmetric else "", "per channel" if settings.per_channel else "per tensor",
                 ", cross-layer equalization" if quant_config.equalize else "", quant_config.deploy_target.value,
                 " (auto)" if settings.deploy_target is DeployTarget.AUTO else "")
        calibrator, _ = fit_calibrator(prepared, calib, pre, settings, quant_config, progress, open_cache(cache))
        fake, deploy = quantize_models(prepared, calibrator)
        result = CalibrationResult(prepared, quant_config, calibrator, fake, deploy,
                                   time.perf_counter() - start, paths)
        if paths is not None:
            write_run(result, paths)
            log.info("calibration done in %.1f s; files in %s", result.seconds, paths.save_dir)
        result.stage_times = times.frame
        log.info("%s", times.text(probe_int8().cpu))
    return result


def write_run(result: CalibrationResult, paths: RunPaths) -> None:
    """Stage every result file in a temp folder, then move them into place together."""
    with timed("writing files"):
        _write_run(result, paths)


def _write_run(result: CalibrationResult, paths: RunPaths) -> None:
    staging = paths.make_temp_dir()
    try:
        staged = RunPaths(staging, paths.name)
        prepared = result.prepared
        save_model(result.fake_quant_model, staged.fake_quant_model)
        save_model(result.deploy_model, staged.deploy_model)
        atomic_write_json(staged.quant_json, make_quant_map(
            prepared.name, [layer.name for layer in prepared.layers], prepared.fusions,
            prepared.renamed, result.config.enabled,
            {name: layer.weight.weight_max for name, layer in result.config.layers.items()},
            result.config.deploy_target.value))
        atomic_write_json(staged.config, config_to_dict(result.config))
        quant, _ = state_quant(result.calibrator.quant_, result.config.states)  # a16w8: its 16-bit params
        atomic_write_text(staged.scale_offset_record, format_scale_offset_record(quant))
        for attr in ("fake_quant_model", "deploy_model", "quant_json", "config", "scale_offset_record"):
            target = getattr(paths, attr)
            target.parent.mkdir(parents=True, exist_ok=True)
            getattr(staged, attr).replace(target)
    finally:
        remove_dir(staging)


def _maybe_log(paths: RunPaths | None):
    return nullcontext() if paths is None else log_to_file(paths.log_file)
