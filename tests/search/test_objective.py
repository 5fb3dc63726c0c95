"""The search objective: what a configuration costs (latency, size, count) with layers in other states,
the Pareto table of evaluated configurations, and the cost table's cache form."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from nbquant.errors import ConfigError
from nbquant.evaluation.latency_model import LayerCosts, predict_latency, predict_size
from nbquant.search.auto_settings import AutoSettings
from nbquant.search.objective import (
    Objective,
    configuration_cost,
    latency_float_set,
    pareto_table,
    size_float_set,
)
from nbquant.search.record import Step


def hand_costs() -> LayerCosts:
    """a -> b -> c; int8 10/20/30 us, float 40/50/60 us; weights 1/2/3 bytes in int8, 4/8/12 in float."""
    table = pd.DataFrame({"kind": ["conv", "conv", "gemm"], "int8_us": [10.0, 20.0, 30.0],
                          "float_us": [40.0, 50.0, 60.0], "int8_bytes": [1, 2, 3], "float_bytes": [4, 8, 12],
                          "in_elements": [1, 2, 3], "out_elements": [2, 3, 4], "cross_in_us": [1.0, 2.0, 3.0],
                          "cross_out_us": [5.0, 6.0, 7.0]}, index=pd.Index(["a", "b", "c"], name="layer"))
    return LayerCosts(table, {"a": (), "b": ("a",), "c": ("b",)}, {"int8": 100.0, "float": 400.0}, 1000,
                      {"QuantizeLinear": (0.5, 0.01)}, batch=1, threads=1, run_us={"int8": 170.0})


def test_each_objective_prices_a_configuration():
    costs = hand_costs()
    assert configuration_cost("count", costs, ["b"], {"c": "dynamic"}) == 2
    assert configuration_cost(Objective.SIZE, costs, ["b"]) == predict_size(costs, ["b"]) == 1 + 8 + 3 + 1000
    assert configuration_cost("latency", costs, ["b"]) == pytest.approx(predict_latency(costs, ["b"]))
    assert configuration_cost("size", None, ["a", "b"]) == 2  # no cost table: the count
    with pytest.raises(ConfigError, match="objective must be one of latency, size, count"):
        configuration_cost("speed", costs, [])
    with pytest.raises(ConfigError, match="objective must be one of"):
        AutoSettings(objective="fastest")


def test_states_that_read_the_raw_tensor_take_their_producer_out_of_int8():
    costs = hand_costs()
    assert latency_float_set(costs, [], {"c": "a16w8"}) == {"b", "c"}  # runs as float, and b leaves int8
    assert latency_float_set(costs, [], {"c": "dynamic"}) == {"b"}  # an int8 kernel of its own
    assert latency_float_set(costs, ["a"], {"b": "float_raw"}) == {"a", "b"}
    assert size_float_set([], {"c": "a16w8", "b": "float_raw"}) == {"b"}  # a16w8 keeps int8 weights
    # for size a 16-bit-activation layer is cheaper than float; for latency it costs its producer too
    assert configuration_cost("size", costs, [], {"c": "a16w8"}) < configuration_cost("size", costs, ["c"])
    assert configuration_cost("latency", costs, [], {"c": "a16w8"}) > configuration_cost("latency", costs, ["c"])


def test_pareto_table_marks_the_undominated_passing_configurations_and_the_choice():
    costs = hand_costs()
    steps = [Step(0, "original", ["a", "b", "c"], 0.9, 0.0, True),
             Step(1, "all_int8", [], 0.8, 0.1, False),
             Step(2, "search", ["a", "b"], 0.9, 0.0, True),
             Step(3, "search", ["b"], 0.89, 0.01, True),
             Step(4, "states", [], 0.89, 0.01, True, states={"b": "a16w8"}),
             Step(5, "search", ["a", "b", "c"], 0.9, 0.0, True)]
    table = pareto_table(steps, costs, 3, chosen=3)
    assert table["step"].tolist() == [1, 2, 3, 4, 5]  # the float model's step is not a configuration
    assert table.set_index("step")["chosen"].tolist() == [False, False, True, False, False]
    assert table.loc[table["step"] == 4, ["n_int8", "n_float", "n_other_state"]].values.tolist() == [[2, 0, 1]]
    pareto = set(table.loc[table["pareto"], "step"])
    assert 1 not in pareto and 5 not in pareto  # fails; slower and bigger than step 3
    for row in table[table["ok"]].itertuples():
        dominated = any(o.predicted_ms <= row.predicted_ms and o.size_bytes <= row.size_bytes
                        and (o.predicted_ms < row.predicted_ms or o.size_bytes < row.size_bytes)
                        for o in table[table["ok"]].itertuples())
        assert (row.step in pareto) == (not dominated)


def test_the_cost_table_survives_its_cache_form():
    costs = dataclasses.replace(hand_costs(), wall_ms={"int8": 0.2, "float": 0.5})  # scales the predictions
    back = LayerCosts.from_dict(json.loads(json.dumps(costs.to_dict())))
    pd.testing.assert_frame_equal(back.layers, costs.layers)
    for float_layers in ([], ["b"], ["a", "c"]):
        assert predict_latency(back, float_layers) == predict_latency(costs, float_layers)
    assert (back.predecessors, back.crossing_rates, back.run_us, back.wall_ms) == (
        costs.predecessors, costs.crossing_rates, costs.run_us, costs.wall_ms)
