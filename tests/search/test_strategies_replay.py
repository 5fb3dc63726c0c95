"""The ``frugal`` strategy's evaluation bound on synthetic oracles: monotone culprits, culprits far
down the ranking, and noisy metrics that are not monotone in the float set."""

import hashlib
import math

import pytest

from nbquant.search.auto_settings import AutoSettings
from nbquant.search.strategies import (
    BudgetExhausted,
    ChecksSpent,
    LimitedCheck,
    grow_prefix,
    search_frugal,
    search_refine,
)

RUN_CHECKS = AutoSettings().max_evals - 2  # a run's default budget, less the float and all-int8 models


def names(n):
    return [f"L{i}" for i in range(n)]


class Oracle:
    """Counts the distinct configurations asked (the empty one, evaluated by the run before any strategy,
    apart); ``ok`` decides a float set."""

    def __init__(self, ok, budget=None):
        self.ok, self.budget, self.seen = ok, budget, {}

    def __call__(self, float_layers):
        if float_layers not in self.seen:
            if self.budget is not None and len(self.seen) >= self.budget:
                raise BudgetExhausted()
            self.seen[float_layers] = bool(self.ok(float_layers))
        return self.seen[float_layers]

    @property
    def evaluations(self):
        return len([s for s in self.seen if s])

    @property
    def passing(self):
        return sum(ok for s, ok in self.seen.items() if s)


def culprits(*layers):
    return lambda float_layers: set(layers) <= float_layers


def noisy(n, seed, budget_images=2.0, sigma=2.0, total=4.0):
    """Top-1 on 1000 images, in images: each int8 layer loses a little (more when ranked higher) and
    every configuration gets its own deterministic noise, so more float layers can measure worse."""
    weights = [0.8 ** i for i in range(n)]
    cost = {f"L{i}": total * w / sum(weights) for i, w in enumerate(weights)}

    def ok(float_layers):
        digest = hashlib.sha256(f"{seed}:{'|'.join(sorted(float_layers))}".encode()).digest()
        u1, u2 = (int.from_bytes(digest[:8], "big") + 1) / 2 ** 64, int.from_bytes(digest[8:16], "big") / 2 ** 64
        noise = sigma * math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
        loss = sum(c for layer, c in cost.items() if layer not in float_layers) + noise
        return round(loss) <= budget_images
    return ok


def bound(n, max_checks=8):
    """``max_checks``, or the doubling's own length (prefixes 1, 2, 4, ... below n, then n - 1) when the
    ranking is longer than 2 ** (max_checks - 1) + 1."""
    powers = [2 ** i for i in range(n.bit_length()) if 2 ** i < n]
    return max(max_checks, len(powers) + (1 if powers and powers[-1] < n - 1 else 0))


ORACLES = ([("top two", culprits("L0", "L1")), ("one at 12", culprits("L11")), ("two apart", culprits("L3", "L17")),
            ("last", culprits("L18"))]
           + [(f"noisy {seed}", noisy(20, seed)) for seed in range(40)])


@pytest.mark.parametrize(("label", "ok"), ORACLES, ids=[label for label, _ in ORACLES])
def test_frugal_stays_within_eight_evaluations_and_returns_a_passing_set(label, ok):
    check = Oracle(ok)
    found = search_frugal(names(20), check, max_checks=RUN_CHECKS)
    assert check.evaluations <= 8, label
    assert found is not None and check(found), label  # a configuration it measured passing
    assert search_frugal(names(20), Oracle(ok), max_checks=RUN_CHECKS) == found  # deterministic


@pytest.mark.parametrize("n", [2, 3, 5, 9, 17, 50, 64, 65, 129, 130, 300])
def test_frugal_bound_over_ranking_lengths(n):
    for seed in range(10):
        check = Oracle(noisy(n, seed, budget_images=1))
        search_frugal(names(n), check, max_checks=RUN_CHECKS)
        assert check.evaluations <= bound(n), (n, seed)
    check = Oracle(culprits(f"L{n - 1}"))  # needs the whole ranking: no prefix the search tries passes
    assert search_frugal(names(n), check, max_checks=RUN_CHECKS) is None
    assert check.evaluations <= bound(n)
    assert (bound(50), bound(129), bound(130), bound(300)) == (8, 8, 9, 10)


def test_frugal_finds_the_top_culprits_exactly():
    check = Oracle(culprits("L0", "L1"))
    assert search_frugal(names(20), check) == {"L0", "L1"}
    assert check.evaluations == 3 and check.passing == 1  # {L0}, {L0, L1}, {L1}


def test_frugal_probes_the_tail_of_a_short_passing_prefix():
    # the first passing prefix has 8 layers; the two least sensitive of them are enough
    check = Oracle(culprits("L6", "L7"))
    assert search_frugal(names(50), check) == {"L6", "L7"}
    assert check.evaluations <= 7 and check.passing == 2  # the prefix and the probe


def test_frugal_keeps_the_best_so_far_when_its_checks_run_out():
    # a culprit far down: the doubling needs 16 layers, the give-back then has 3 checks left
    check = Oracle(culprits("L11"))
    found = search_frugal(names(20), check, max_checks=RUN_CHECKS)
    assert check.evaluations == 8 and check(found) and "L11" in found and len(found) <= 12
    unbounded = Oracle(culprits("L11"))
    assert search_frugal(names(20), unbounded) == {"L11"} and unbounded.evaluations > 8
    assert search_refine(names(20), Oracle(culprits("L11"))) == {"L11"}


def test_frugal_uses_at_most_max_checks():
    for max_checks in (3, 5, 12):
        for seed in range(10):
            check = Oracle(noisy(50, seed))
            search_frugal(names(50), check, max_checks=max_checks)
            assert check.evaluations <= max(max_checks, 7)


def test_frugal_passes_the_run_budget_through():
    with pytest.raises(BudgetExhausted):
        search_frugal(names(20), Oracle(culprits("L19"), budget=3))


def test_grow_prefix_and_limited_check():
    check = Oracle(culprits("L4"))
    assert grow_prefix(names(20), check) == 8 and check.evaluations == 4
    assert grow_prefix(names(1), Oracle(culprits())) is None
    assert grow_prefix(names(5), Oracle(culprits("L3"))) == 4  # 1, 2, 4 = n - 1
    limited = LimitedCheck(Oracle(culprits()), limit=1)
    assert limited(frozenset()) and limited(frozenset({"L0"})) and limited(frozenset({"L0"}))
    with pytest.raises(ChecksSpent):
        limited(frozenset({"L1"}))


# EfficientNet-Lite0 (shared model and photos), deploy target portable, deploy models on a VNNI CPU:
# images right of 1000 for each configuration measured (layers in float by rank, 1 = most sensitive),
# from `python benchmarks/strategies.py --models lite0 --targets portable`. The float model gets 886.
# A configuration missing here fails the test: re-measure with the benchmark.
LITE0_PORTABLE = {"": 882, "1": 857, "7": 883, "8": 883, "1-2": 882, "7-8": 884, "1-4": 882, "1-2,7-8": 883,
                  "5-8": 881, "1-4,7": 883, "1-6": 881, "1-4,7-8": 884, "1-7": 883, "1-6,8": 883, "1-8": 884}


def recorded(table, max_drop, original=886):
    """A check over a recorded table (``Budget`` arithmetic in images) and the ranked layer names."""
    def ranks(text):
        out = set()
        for part in filter(None, text.split(",")):
            low, _, high = part.partition("-")
            out |= set(range(int(low), int(high or low) + 1))
        return frozenset(out)
    hits = {ranks(text): value for text, value in table.items()}

    def ok(float_layers):
        return original - hits[frozenset(int(name[1:]) for name in float_layers)] <= max_drop * 1000
    return ok, [f"r{i}" for i in range(1, 51)]


@pytest.mark.parametrize(("max_drop", "evaluations", "float_layers"), [(0.002, 9, {"r7", "r8"}), (0.003, 7, {"r8"})])
def test_frugal_on_recorded_lite0_metrics(max_drop, evaluations, float_layers):
    ok, ranked = recorded(LITE0_PORTABLE, max_drop)
    check = Oracle(ok)
    assert not check(frozenset())  # the run's all-int8 step
    assert search_frugal(ranked, check, max_checks=RUN_CHECKS) == float_layers
    assert 2 + check.evaluations == evaluations <= 10  # float model and all-int8 counted, as the run does
    refine = Oracle(ok)
    refine(frozenset())
    search_refine(ranked, refine)
    assert 2 + refine.evaluations > evaluations
