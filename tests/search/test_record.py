"""The typed search record: dataclasses to JSON and back, and records written before it was typed."""

import json

import numpy as np
import pandas as pd
import pytest

from nbquant.errors import ConfigError
from nbquant.search.record import (
    HISTORY_COLUMNS,
    EvaluationOrder,
    SavedRanking,
    SearchRecord,
    Step,
    load_record,
    read_record,
    save_record,
)

LAYERS = ["Conv_0", "Conv_1", "Gemm_2"]

# a record as the dict-based code wrote it: the original step without the judging keys, deploy steps
# with deploy_metric/deploy_loss, fake-quant steps without them, an early decision without a metric
TODAYS_RECORD = {
    "version": 1, "tool": "nbquant",
    "settings": {"max_drop": 0.005, "strategy": "refine", "evaluator": "LogitEvaluator(metric='top1')"},
    "layers": LAYERS, "original_metric": 0.75,
    "ranking": {"method": "output", "rows": [{"layer": "Conv_1", "score": 0.9, "metric": "output"},
                                             {"layer": "Conv_0", "score": 0.99, "metric": "output"}]},
    "steps": [
        {"step": 0, "kind": "original", "float_layers": LAYERS, "metric": 0.75, "loss": 0.0, "ok": True,
         "seconds": 0.0, "images": 8},
        {"step": 1, "kind": "all_int8", "float_layers": [], "metric": None, "loss": None, "ok": False,
         "judged": "deploy", "images": 3, "decided_early": True, "metric_upper": 0.625, "deploy_metric": None,
         "deploy_loss": None, "seconds": 0.12},
        {"step": 2, "kind": "search", "float_layers": ["Conv_1"], "metric": 0.75, "loss": 0.0, "ok": True,
         "judged": "deploy", "images": 8, "decided_early": False, "metric_upper": None, "deploy_metric": 0.75,
         "deploy_loss": 0.0, "seconds": 0.2},
        {"step": 3, "kind": "search", "float_layers": ["Conv_0"], "metric": 0.625, "loss": 0.125, "ok": False,
         "judged": "fake_quant", "images": None, "decided_early": False, "metric_upper": None, "seconds": 0.3},
    ],
    "evaluation_order": {"rule": "file order", "file": "evaluation_order.txt"},
}


def _old_history(record: dict) -> pd.DataFrame:
    """load_record's DataFrame as the dict-based reader built it."""
    layers = record.get("layers", [])
    rows = [{**{k: s.get(k) for k in HISTORY_COLUMNS if k not in ("float_layers", "deploy_metric", "states")},
             "deploy_metric": s.get("deploy_metric", np.nan), "float_layers": list(s["float_layers"]), "states": {},
             "n_float": len(s["float_layers"]), "n_int8": len(layers) - len(s["float_layers"])}
            for s in record["steps"]]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def test_record_round_trips_through_json(tmp_path):
    record = SearchRecord({"max_drop": 0.01}, LAYERS, original_metric=0.5,
                          ranking=SavedRanking("cosine", [{"layer": "Conv_0", "score": 0.5}]),
                          evaluation_order=EvaluationOrder("file order", "evaluation_order.txt"))
    record.steps += [Step(0, "original", LAYERS, 0.5, 0.0, True, seconds=0.0, images=None),
                     Step(1, "all_int8", [], None, None, False, seconds=0.1, images=2, judged="deploy",
                          decided_early=True, metric_upper=0.25),
                     Step(2, "search", ["Conv_0"], 0.5, 0.0, True, seconds=0.1, images=4, judged="fake_quant",
                          decided_early=False),
                     Step(3, "states", [], 0.5, 0.0, True, seconds=0.1, images=4, judged="deploy",
                          decided_early=False, states={"Conv_0": "a16w8"})]
    path = tmp_path / "record.json"
    save_record(record, path)
    assert read_record(path) == record
    assert SearchRecord.from_dict(json.loads(path.read_text())).to_dict() == record.to_dict()


def test_a_record_written_by_the_dict_code_reads_and_writes_back_unchanged(tmp_path):
    path = tmp_path / "accuracy_based_auto_calibration_record.json"
    path.write_text(json.dumps(TODAYS_RECORD, indent=2))
    record = read_record(path)
    assert record.original_metric == 0.75 and record.ranking.method == "output"
    assert record.evaluation_order == EvaluationOrder("file order", "evaluation_order.txt")
    early, deploy, fake = record.steps[1:]
    assert early.decided_early and early.metric is None and early.metric_upper == 0.625 and early.has_deploy
    assert deploy.deploy_metric == 0.75 and fake.judged == "fake_quant" and not fake.has_deploy
    assert record.steps[0].judged is None and record.steps[0].images == 8
    assert record.to_dict() == TODAYS_RECORD
    for old, new in zip(TODAYS_RECORD["steps"], record.to_dict()["steps"]):
        assert list(new) == list(old)  # the keys in the order they were written
    save_record(record, path)
    assert json.loads(path.read_text()) == TODAYS_RECORD
    pd.testing.assert_frame_equal(load_record(path), _old_history(TODAYS_RECORD))


def test_older_records_without_judging_keys_keep_their_deploy_metric(tmp_path):
    old = {**TODAYS_RECORD, "ranking": None, "steps": [
        {"step": 0, "kind": "original", "float_layers": LAYERS, "metric": 0.75, "loss": 0.0, "ok": True,
         "seconds": 0.0},
        {"step": 1, "kind": "all_int8", "float_layers": [], "metric": 0.74, "loss": 0.01, "ok": True,
         "seconds": 0.5, "deploy_metric": 0.73, "deploy_loss": 0.02}]}
    old.pop("evaluation_order")
    path = tmp_path / "record.json"
    path.write_text(json.dumps(old))
    record = read_record(path)
    assert record.ranking is None and record.evaluation_order is None
    assert record.steps[1].deploy_metric == 0.73 and "evaluation_order" not in record.to_dict()
    frame = load_record(path)
    assert frame["deploy_metric"].iloc[1] == 0.73 and np.isnan(frame["deploy_metric"].iloc[0])
    assert frame[["n_float", "n_int8"]].values.tolist() == [[3, 0], [0, 3]]


def test_read_record_refuses_other_files(tmp_path):
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"version": 99, "steps": []}))
    with pytest.raises(ConfigError, match="is not an nbquant record"):
        read_record(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is unreadable"):
        read_record(path)
