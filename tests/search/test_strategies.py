"""Search strategies, budgets and record files on hand-made cases."""

import json
import math

import pytest

from nbquant.errors import ConfigError
from nbquant.evaluation.metrics import Budget
from nbquant.search.record import SearchRecord, check_resume, load_ranking, load_record
from nbquant.search.strategies import BudgetExhausted, search_binary, search_greedy, search_refine

RANKED = [f"L{i}" for i in range(20)]


class Checker:
    """ok when every culprit is in float and no more than ``limit`` layers are (if given)."""

    def __init__(self, culprits, limit=None, budget=None):
        self.culprits, self.limit, self.budget, self.seen = set(culprits), limit, budget, {}

    def __call__(self, float_layers):
        if float_layers not in self.seen:
            if self.budget is not None and len(self.seen) >= self.budget:
                raise BudgetExhausted()
            self.seen[float_layers] = self.culprits <= float_layers and (
                self.limit is None or len(float_layers) <= self.limit)
        return self.seen[float_layers]


def test_monotone_case_all_strategies_find_the_prefix():
    for search in (search_refine, search_binary, search_greedy):
        check = Checker({"L0", "L1"})
        assert search(RANKED, check) == frozenset({"L0", "L1"}), search.__name__
    check = Checker({"L0", "L1"})
    search_binary(RANKED, check)
    assert len(check.seen) <= math.ceil(math.log2(len(RANKED)))


def test_refine_puts_back_harmless_layers_the_prefix_search_keeps():
    # the reference tool's known weakness: the culprit is ranked 12th
    culprit = {"L11"}
    binary = search_binary(RANKED, Checker(culprit))
    refine_check = Checker(culprit)
    refine = search_refine(RANKED, refine_check)
    assert binary == frozenset(RANKED[:12])
    assert refine == frozenset(culprit)
    assert len(refine_check.seen) < len(RANKED)


def test_give_back_finds_few_culprits_among_many_in_few_evaluations():
    culprits = {"L3", "L17"}
    check = Checker(culprits)
    assert search_refine(RANKED, check) == frozenset(culprits)
    assert len(check.seen) <= 5 + 4 + 2 * 2 * 5  # doubling, bisection, about 2 log2(k) per culprit


def test_give_back_when_every_prefix_layer_is_needed():
    check = Checker({"L0", "L1", "L2"})
    assert search_refine(RANKED, check) == frozenset({"L0", "L1", "L2"})


def test_no_passing_configuration_returns_none():
    for search in (search_refine, search_binary, search_greedy):
        assert search(RANKED, Checker({"not-a-layer"})) is None


def test_budget_exhaustion_propagates():
    with pytest.raises(BudgetExhausted):
        search_refine(RANKED, Checker({"L19"}, budget=3))


def test_budget_absolute_and_relative():
    assert Budget(0.005).check(0.886, 0.882) == (True, pytest.approx(0.004))
    assert Budget(0.002).check(0.886, 0.883)[0] is False
    ok, loss = Budget(0.01, relative=True).check(0.8, 0.795)
    assert ok and loss == pytest.approx(0.00625)
    assert Budget(0.002).check(0.886, 0.884)[0] is True  # exactly at the limit


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "0.1", None, True])
def test_budget_rejects_bad_max_drop(bad):
    with pytest.raises(ConfigError, match="max_drop must be a number >= 0"):
        Budget(bad)


def test_load_reference_tool_record_and_ranking(tmp_path):
    record = tmp_path / "accuracy_based_auto_calibration_record.json"
    objects = [{"roll_back_config": {"Conv_0": True, "Conv_1": True}, "metric_eval": [False, 0.0178]},
               {"roll_back_config": {"Conv_0": False, "Conv_1": True}, "metric_eval": [True, 0.003]}]
    record.write_text("".join(json.dumps(o, indent=4) + "\n" for o in objects))
    frame = load_record(record)
    assert frame["n_float"].tolist() == [0, 1] and frame["ok"].tolist() == [False, True]
    assert frame["float_layers"].tolist() == [[], ["Conv_0"]] and frame["loss"].tolist() == [0.0178, 0.003]
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps([["Conv_1", 0.91], ["Conv_0", 0.99]], indent=4))
    assert load_ranking(ranking)[["rank", "layer"]].values.tolist() == [[1, "Conv_1"], [2, "Conv_0"]]
    ranking.write_text(json.dumps({"not": "a ranking"}))
    with pytest.raises(ConfigError, match="not a ranking file"):
        load_ranking(ranking)


def test_resume_with_other_arguments_is_refused(tmp_path):
    record = SearchRecord({"max_drop": 0.002, "strategy": "refine"}, ["L0"])
    check_resume(record, {"max_drop": 0.002, "strategy": "refine"}, tmp_path / "r.json")
    with pytest.raises(ConfigError, match="max_drop was 0.002 in the record but is 0.005 now"):
        check_resume(record, {"max_drop": 0.005, "strategy": "refine"}, tmp_path / "r.json")
