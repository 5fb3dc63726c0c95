"""nbquant: accuracy-based automatic int8 quantization of ONNX models, notebook-first.

The public API; each name is imported on first use (PEP 562), so ``import nbquant`` and the
command line start fast. The package reads as the pipeline, each stage importing only the
ones before it (``tests/test_layout.py`` checks this):

    graph -> quantize -> data -> evaluation -> calibration -> search -> notebook, zoo

``errors``, ``options``, ``files``, ``settings``, ``timing`` (seconds per stage) and ``cache`` (results
kept across runs) are shared by every stage; ``cli`` is the command line over all of them.

>>> import nbquant
>>> nbquant.CalibrationSettings(calib_num=50).calib_num
50
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("nbquant")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

_API = {
    # graph
    "prepare_model": "graph.prepare", "PreparedModel": "graph.prepare", "load_model": "graph.load",
    # quantize
    "probe_int8": "quantize.cpu_probe", "DeployTarget": "quantize.deploy_target",
    "make_deploy_model": "quantize.deploy", "make_fake_quant_model": "quantize.fake_quant",
    "LayerState": "quantize.layer_quant", "make_state_model": "quantize.layer_states",
    # data
    "ImageDataset": "data.images", "TensorDataset": "data.tensors", "open_data": "data.tensors",
    "Preprocess": "data.preprocess", "get_preset": "data.preprocess", "resolve_preprocess": "data.binding",
    "cache_images": "data.pixel_cache",
    # evaluation
    "evaluate": "evaluation.accuracy", "predictions": "evaluation.accuracy", "make_session": "evaluation.session",
    "LogitEvaluator": "evaluation.evaluators", "Evaluator": "evaluation.evaluators", "Budget": "evaluation.metrics",
    "open_pool": "evaluation.executors", "measure_latency": "evaluation.latency", "cost_table": "evaluation.latency",
    "predict_latency": "evaluation.latency_model",
    # calibration
    "calibrate": "calibration.run", "CalibrationSettings": "calibration.run", "CalibrationResult": "calibration.run",
    "QuantConfig": "calibration.config", "ActMethod": "calibration.config", "WeightRounding": "calibration.config",
    "Equalize": "calibration.equalization",
    # search
    "auto_calibrate": "search.auto", "AutoSettings": "search.auto", "AutoCalibrationResult": "search.auto",
    "rank_layers": "search.ranking", "ranking_pairs": "search.ranking", "Objective": "search.objective",
    "load_record": "search.record", "load_ranking": "search.record",
    "FallbackExplorer": "search.retarget", "explorer_from_auto_result": "search.retarget",
    # notebook
    "FallbackWidget": "notebook.widgets", "show_side_by_side": "notebook.viewer", "serve_model": "notebook.viewer",
    # errors
    "NbquantError": "errors", "ConfigError": "errors", "DataError": "errors", "ModelError": "errors",
}
_SUBMODULES = ("graph", "quantize", "data", "evaluation", "calibration", "search", "notebook", "zoo",
               "errors", "options", "files", "settings", "timing", "cache", "cli")

__all__ = ["__version__", *_API, *_SUBMODULES]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'nbquant' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from . import (
        cache,
        calibration,
        cli,
        data,
        errors,
        evaluation,
        files,
        graph,
        notebook,
        options,
        quantize,
        search,
        settings,
        timing,
        zoo,
    )
    from .calibration.config import ActMethod, QuantConfig, WeightRounding
    from .calibration.run import CalibrationResult, CalibrationSettings, calibrate
    from .data.binding import resolve_preprocess
    from .data.images import ImageDataset
    from .data.pixel_cache import cache_images
    from .data.preprocess import Preprocess, get_preset
    from .data.tensors import TensorDataset, open_data
    from .errors import ConfigError, DataError, ModelError, NbquantError
    from .evaluation.accuracy import evaluate, predictions
    from .evaluation.evaluators import Evaluator, LogitEvaluator
    from .evaluation.executors import open_pool
    from .evaluation.metrics import Budget
    from .evaluation.session import make_session
    from .graph.load import load_model
    from .graph.prepare import PreparedModel, prepare_model
    from .notebook.viewer import serve_model, show_side_by_side
    from .notebook.widgets import FallbackWidget
    from .quantize.cpu_probe import probe_int8
    from .quantize.deploy import make_deploy_model
    from .quantize.deploy_target import DeployTarget
    from .quantize.fake_quant import make_fake_quant_model
    from .search.auto import AutoCalibrationResult, AutoSettings, auto_calibrate
    from .search.ranking import rank_layers, ranking_pairs
    from .search.record import load_ranking, load_record
    from .search.retarget import FallbackExplorer, explorer_from_auto_result
