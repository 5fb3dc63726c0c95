"""nbquant's rows: auto_calibrate with the default strategy (frugal) or binary, cold (no cache: each row
pays the fixed cost a first run pays); nbquant's venv."""

from __future__ import annotations

import time
from pathlib import Path

from peerlib import SETTINGS, Data

STRATEGY = {"nbquant": "frugal", "nbquant-binary": "binary"}


def versions() -> dict:
    import numpy
    import onnxruntime

    import nbquant
    return {"nbquant": getattr(nbquant, "__version__", "0.1.0"), "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__}


def run(data: Data, tool: str, setting: str, out_dir: Path) -> dict:
    from nbquant.calibration.run import CalibrationSettings
    from nbquant.data.images import ImageDataset
    from nbquant.search.auto import AutoSettings, auto_calibrate

    per_channel, max_drop = SETTINGS[setting]
    n_eval, n_calib = len(data.labels), len(data.calib)
    images = ImageDataset(data.data_dir)
    if n_eval < len(images):
        images = images.subset(n_eval)
    auto = AutoSettings(max_drop=max_drop, strategy=STRATEGY[tool])
    start = time.perf_counter()
    result = auto_calibrate(data.model_path, images, save_dir=out_dir / "run",
                            settings=auto,
                            calib_settings=CalibrationSettings(calib_num=n_calib, per_channel=per_channel),
                            progress=False, cache=False)
    wall = time.perf_counter() - start
    n = result.n_layers
    # the ranking runs the float model and each layer quantized alone on the ranking images (none when the
    # all-int8 model met the budget: nothing was ranked)
    rank_images = min(auto.rank_num, n_calib) if not result.ranking.empty else 0
    # search steps count the float model; deploy models are evaluated for each step whose
    # fake-quant model passed (check_deploy), else once at the end
    deploy_evals = result.deploy_evaluations if auto.check_deploy else int(result.deploy_metric is not None)
    return {
        "ok": True, "met": bool(result.ok), "wall_s": round(wall, 1),
        "original_metric": float(result.original_metric),
        "final_metric": float(result.final_metric) if result.ok else None,
        "full_evaluations": result.evaluations + deploy_evals,
        "partial_calls": n + 1 if rank_images else 0, "partial_images": (n + 1) * rank_images,
        "tool_float_layers": f"{len(result.float_layers)} of {n}",
        "model": str(result.paths.deploy_model) if result.ok else None,
        "message": result.message,
        "config": {"strategy": STRATEGY[tool], "max_drop": max_drop, "per_channel": per_channel,
                   "calib_num": n_calib, "eval_images": len(images)},
        "note": "wall includes decoding the JPEGs (nbquant reads the image folder itself); "
                "final top-1 is nbquant's simulated (fake-quant) metric",
    }
