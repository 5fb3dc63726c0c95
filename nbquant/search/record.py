"""The search record (log/accuracy_based_auto_calibration_record.json) and ranking files.

The record is typed (:class:`SearchRecord` of :class:`Step`) and written as the JSON keys it has
always had, so records of earlier runs still resume. Readers into DataFrames also take the
reference tool's files (its record is JSON objects written back to back).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..files import atomic_write_json

RECORD_VERSION = 1
HISTORY_COLUMNS = ["step", "kind", "n_float", "n_int8", "metric", "loss", "deploy_metric", "ok", "seconds",
                   "judged", "images", "decided_early", "metric_upper", "float_layers", "states"]
# the JSON keys of a step, in the order they have always been written
_KEYS = ("step", "kind", "float_layers", "metric", "loss", "ok")
_JUDGED_KEYS = ("judged", "images", "decided_early", "metric_upper")
_DEPLOY_KEYS = ("deploy_metric", "deploy_loss")


@dataclass
class Step:
    """One evaluated configuration: the float model (kind ``original``), all layers in int8 (``all_int8``)
    or a set the strategy tried (``search``).

    ``judged`` says which model was evaluated (``deploy`` or ``fake_quant``; None for the float model).
    A step ``decided_early`` has no metric, only ``metric_upper``, the best it could still have
    reached. ``deploy_metric``/``deploy_loss`` are the deploy model's (the metric itself when judged
    on it).
    """

    step: int
    kind: str
    float_layers: list[str]
    metric: object
    loss: float | None
    ok: bool
    seconds: float | None = None
    images: int | None = None
    judged: str | None = None
    decided_early: bool | None = None
    metric_upper: float | None = None
    deploy_metric: object = None
    deploy_loss: float | None = None
    states: dict[str, str] | None = None  # layers in a state other than int8 and float (a16w8, dynamic, ...)

    @property
    def has_deploy(self) -> bool:
        """Whether the step carries the deploy model's metric (its JSON has the deploy keys)."""
        return self.judged == "deploy" or self.deploy_metric is not None

    def to_dict(self) -> dict:
        deploy = _DEPLOY_KEYS if self.has_deploy else ()
        if self.judged is None:  # the float model's step, or a step of a record older than judging
            keys = _KEYS + deploy + ("seconds", "images")
        else:
            keys = _KEYS + _JUDGED_KEYS + deploy + ("seconds",)
        return {key: getattr(self, key) for key in keys} | ({"states": dict(self.states)} if self.states else {})

    @classmethod
    def from_dict(cls, data: dict) -> Step:
        values = {key: data.get(key) for key in _KEYS + _JUDGED_KEYS + _DEPLOY_KEYS + ("seconds",)}
        return cls(**{**values, "float_layers": list(data["float_layers"]), "states": data.get("states") or None})


@dataclass
class SavedRanking:
    """The layer ranking of a run, kept so that a resumed run does not rank again."""

    method: str
    rows: list[dict]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


@dataclass
class EvaluationOrder:
    """How the built-in evaluator orders its images (``rule``) and the file that lists them."""

    rule: str
    file: str


@dataclass
class SearchRecord:
    """Everything a run needs to resume: its settings, the float model's metric, the ranking and
    every step so far. ``settings`` must match for a record to be resumed (see :func:`check_resume`)."""

    settings: dict
    layers: list[str]
    original_metric: object = None
    ranking: SavedRanking | None = None
    steps: list[Step] = field(default_factory=list)
    evaluation_order: EvaluationOrder | None = None
    version: int = RECORD_VERSION
    tool: str = "nbquant"

    def to_dict(self) -> dict:
        data = {"version": self.version, "tool": self.tool, "settings": self.settings, "layers": self.layers,
                "original_metric": self.original_metric,
                "ranking": None if self.ranking is None else {"method": self.ranking.method,
                                                               "rows": self.ranking.rows},
                "steps": [step.to_dict() for step in self.steps]}
        if self.evaluation_order is not None:
            data["evaluation_order"] = {"rule": self.evaluation_order.rule, "file": self.evaluation_order.file}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SearchRecord:
        ranking, order = data.get("ranking"), data.get("evaluation_order")
        return cls(settings=data.get("settings", {}), layers=list(data.get("layers", [])),
                   original_metric=data.get("original_metric"),
                   ranking=SavedRanking(ranking["method"], ranking["rows"]) if ranking else None,
                   steps=[Step.from_dict(s) for s in data["steps"]],
                   evaluation_order=EvaluationOrder(order["rule"], order["file"]) if order else None,
                   version=data.get("version", RECORD_VERSION), tool=data.get("tool", "nbquant"))


def save_record(record: SearchRecord, path: Path) -> None:
    atomic_write_json(path, record.to_dict(), indent=2)


def read_record(path: Path) -> SearchRecord:
    """Our own record (for resuming)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot resume: record {path} is unreadable ({exc})") from exc
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION or "steps" not in data:
        raise ConfigError(f"cannot resume: {path} is not an nbquant record (version {RECORD_VERSION})")
    return SearchRecord.from_dict(data)


def check_resume(record: SearchRecord, settings: dict, path: Path) -> None:
    """Refuse to resume when the run's settings differ from the record's; name the first difference."""
    old = record.settings
    for key in sorted(set(old) | set(settings)):
        if old.get(key) != settings.get(key):
            raise ConfigError(f"cannot resume from {path}: {key} was {old.get(key)!r} in the record but is "
                              f"{settings.get(key)!r} now; rerun with the same arguments or without --resume")


def jsonable_metric(metric):
    """A metric as the record stores it: JSON scalars as they are, numbers as float, anything else as its repr.

    >>> jsonable_metric(np.float32(0.5)), jsonable_metric(None), jsonable_metric([1])
    (0.5, None, '[1]')
    """
    if isinstance(metric, (int, float, str, bool)) or metric is None:
        return metric
    try:
        return float(metric)
    except (TypeError, ValueError):
        return repr(metric)


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
    """One row per evaluated configuration (HISTORY_COLUMNS), from our record or the reference tool's."""
    objects = _json_objects(Path(path).read_text(encoding="utf-8"))
    if len(objects) == 1 and isinstance(objects[0], dict) and "steps" in objects[0]:
        record = SearchRecord.from_dict(objects[0])
        rows = [_history_row(step, len(record.layers)) for step in record.steps]
    else:
        rows = []
        for step, obj in enumerate(objects, start=1):
            flags = obj["roll_back_config"]
            ok, loss = obj.get("metric_eval", [None, None])
            float_layers = [name for name, quantized in flags.items() if not quantized]
            rows.append({"step": step, "kind": "search", "n_float": len(float_layers),
                         "n_int8": len(flags) - len(float_layers), "metric": np.nan, "loss": loss,
                         "deploy_metric": np.nan, "ok": ok, "seconds": np.nan, "judged": "fake_quant",
                         "float_layers": float_layers, "states": {}})
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _history_row(step: Step, n_layers: int) -> dict:
    states = dict(step.states or {})
    return {"step": step.step, "kind": step.kind, "n_float": len(step.float_layers),
            "n_int8": n_layers - len(step.float_layers) - len(states), "metric": step.metric, "loss": step.loss,
            "deploy_metric": step.deploy_metric if step.has_deploy else np.nan,  # steps judged on the deploy model
            "ok": step.ok, "seconds": step.seconds, "judged": step.judged, "images": step.images,
            "decided_early": step.decided_early, "metric_upper": step.metric_upper,
            "float_layers": list(step.float_layers), "states": states}


def load_ranking(path) -> pd.DataFrame:
    """A ranking file (``[[layer, score], ...]``, most sensitive first) as rank, layer, score."""
    pairs = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ConfigError(f"{path} is not a ranking file: expected a JSON list of [layer, score] pairs")
    frame = pd.DataFrame(pairs, columns=["layer", "score"])
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame
