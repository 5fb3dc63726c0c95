"""The search record (log/accuracy_based_auto_calibration_record.json) and ranking files:
writers, readers into DataFrames, and the resume check. The readers also take the
reference tool's files (its record is JSON objects written back to back)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..files import atomic_write_json

RECORD_VERSION = 1
HISTORY_COLUMNS = ["step", "kind", "n_float", "n_int8", "metric", "loss", "deploy_metric", "ok", "seconds",
                   "judged", "images", "decided_early", "metric_upper", "float_layers"]


def new_record(settings: dict, layers: list[str]) -> dict:
    return {"version": RECORD_VERSION, "tool": "nbquant", "settings": settings, "layers": layers,
            "original_metric": None, "ranking": None, "steps": []}


def save_record(record: dict, path: Path) -> None:
    atomic_write_json(path, record, indent=2)


def read_record(path: Path) -> dict:
    """Our own record as a dict (for resuming)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot resume: record {path} is unreadable ({exc})") from exc
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION or "steps" not in data:
        raise ConfigError(f"cannot resume: {path} is not an nbquant record (version {RECORD_VERSION})")
    return data


def check_resume(record: dict, settings: dict, path: Path) -> None:
    """Refuse to resume when the run's settings differ from the record's; name the first difference."""
    old = record.get("settings", {})
    for key in sorted(set(old) | set(settings)):
        if old.get(key) != settings.get(key):
            raise ConfigError(f"cannot resume from {path}: {key} was {old.get(key)!r} in the record but is "
                              f"{settings.get(key)!r} now; rerun with the same arguments or without --resume")


def _json_objects(text: str) -> list:
    decoder, pos, out = json.JSONDecoder(), 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        obj, pos = decoder.raw_decode(text, pos)
        out.append(obj)


def load_record(path) -> pd.DataFrame:
    """One row per evaluated configuration, from our record or the reference tool's."""
    objects = _json_objects(Path(path).read_text(encoding="utf-8"))
    if len(objects) == 1 and isinstance(objects[0], dict) and "steps" in objects[0]:
        record = objects[0]
        layers = record.get("layers", [])
        rows = [{**{k: s.get(k) for k in HISTORY_COLUMNS if k not in ("float_layers", "deploy_metric")},
                 "deploy_metric": s.get("deploy_metric", np.nan),  # steps judged on the deploy model
                 "float_layers": list(s["float_layers"]),
                 "n_float": len(s["float_layers"]), "n_int8": len(layers) - len(s["float_layers"])}
                for s in record["steps"]]
    else:
        rows = []
        for step, obj in enumerate(objects, start=1):
            flags = obj["roll_back_config"]
            ok, loss = obj.get("metric_eval", [None, None])
            float_layers = [name for name, quantized in flags.items() if not quantized]
            rows.append({"step": step, "kind": "search", "n_float": len(float_layers),
                         "n_int8": len(flags) - len(float_layers), "metric": np.nan, "loss": loss,
                         "deploy_metric": np.nan, "ok": ok, "seconds": np.nan, "judged": "fake_quant",
                         "float_layers": float_layers})
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def load_ranking(path) -> pd.DataFrame:
    """A ranking file (``[[layer, score], ...]``, most sensitive first) as rank, layer, score."""
    pairs = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ConfigError(f"{path} is not a ranking file: expected a JSON list of [layer, score] pairs")
    frame = pd.DataFrame(pairs, columns=["layer", "score"])
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame
