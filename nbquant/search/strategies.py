"""Fallback search strategies: which layers go back to float so that the budget holds.

Each strategy gets the layers ranked most sensitive first and ``check(float_layers) -> ok``
(the caller caches and counts evaluations, and has evaluated the all-int8 configuration, the
empty float set, before) and returns the float set it settles on, or None.
"""

from __future__ import annotations

from collections.abc import Callable

Check = Callable[[frozenset], bool]


class BudgetExhausted(Exception):
    """Raised by ``check`` when the evaluation budget is spent."""


class ChecksSpent(Exception):
    """Raised by :class:`LimitedCheck` once its own allowance is spent: ends a search, not the run."""


class LimitedCheck:
    """``check`` allowing at most ``limit`` distinct configurations (None: any number so far); the
    all-int8 one is free, since the run evaluates it before any strategy. Remembers the ones that failed."""

    def __init__(self, check: Check, limit: int | None = None):
        self.check, self.limit, self.asked, self.failed = check, limit, set(), [frozenset()]

    def __call__(self, float_layers: frozenset) -> bool:
        if float_layers and float_layers not in self.asked:
            if self.limit is not None and len(self.asked) >= self.limit:
                raise ChecksSpent()
            self.asked.add(float_layers)
        ok = self.check(float_layers)
        if not ok and float_layers not in self.failed:
            self.failed.append(float_layers)
        return ok

    def implied_failing(self, float_layers: frozenset) -> bool:
        """Whether a configuration that failed keeps all of ``float_layers`` in float (and more): the same
        layers with fewer in float fail too where more fallback never hurts."""
        return any(float_layers <= failed for failed in self.failed)


def search_binary(ranked: list[str], check: Check) -> frozenset | None:
    """The reference tool's search: bisect over k, the number of most sensitive layers in float.

    About ceil(log2 n) evaluations; assumes more fallback never hurts, which is not always true.
    """
    left, right, best = 0, len(ranked) - 1, None
    while left <= right:
        mid = (left + right) // 2
        if check(frozenset(ranked[:mid])):
            best, right = frozenset(ranked[:mid]), mid - 1
        else:
            left = mid + 1
    return best


def search_greedy(ranked: list[str], check: Check) -> frozenset | None:
    """Fall back one more layer, in rank order, until the budget holds."""
    for k in range(1, len(ranked)):
        if check(frozenset(ranked[:k])):
            return frozenset(ranked[:k])
    return None


def search_refine(ranked: list[str], check: Check) -> frozenset | None:
    """Find a passing prefix fast, bisect it, then put layers back into int8 (up to about 20 evaluations).

    1. double k (1, 2, 4, ...) until the k most sensitive layers in float pass;
    2. bisect k between the last failing and the first passing prefix;
    3. give back: try whole groups of that prefix back in int8 (least sensitive first),
       halving a group that fails, so harmless layers ranked high do not stay in float and
       a few culprits among many are found in about 2 log2(k) evaluations each.
    """
    n = len(ranked)
    low, high, k = 0, None, 1
    while k < n:
        if check(frozenset(ranked[:k])):
            high = k
            break
        low, k = k, 2 * k
    if high is None:
        if low >= n - 1 or not check(frozenset(ranked[:n - 1])):
            return None
        high = n - 1
    while high - low > 1:
        mid = (low + high) // 2
        if check(frozenset(ranked[:mid])):
            high = mid
        else:
            low = mid
    return give_back(list(reversed(ranked[:high])), check)


def give_back(candidates: list[str], check: Check, skip: Callable[[frozenset], bool] | None = None) -> frozenset:
    """Smallest float set found by returning groups of ``candidates`` (a passing float set,
    least sensitive first) to int8: a group that keeps the target goes back whole, a group
    that breaks it is split in two and each half tried. Trials ``skip`` says fail are split
    without an evaluation; a ``check`` that raises :class:`ChecksSpent` ends it with the set found so far."""
    current = frozenset(candidates)
    groups = [candidates]
    try:
        while groups:
            group = groups.pop(0)
            trial = current - set(group)
            if trial != current and not (skip is not None and skip(trial)) and check(trial):
                current = trial
            elif len(group) > 1:
                half = len(group) // 2
                groups[:0] = [group[:half], group[half:]]
    except ChecksSpent:
        pass
    return current


def grow_prefix(ranked: list[str], check: Check) -> int | None:
    """The first k of 1, 2, 4, ... (then n - 1) whose k most sensitive layers in float pass; None when
    none does. At most ceil(log2 n) + 1 evaluations."""
    n, k = len(ranked), 1
    while k < n:
        if check(frozenset(ranked[:k])):
            return k
        k *= 2
    if 0 < k // 2 < n - 1 and check(frozenset(ranked[:n - 1])):
        return n - 1
    return None


def search_frugal(ranked: list[str], check: Check, *, max_checks: int | None = None,
                  probe_below: int = 8) -> frozenset | None:
    """nbquant's default: a passing set within a few evaluations, then as many layers back in int8 as the
    evaluation budget allows (``check`` raising :class:`BudgetExhausted` ends it; ``max_checks`` limits
    it here too, though never below what step 1 needs).

    1. double k (1, 2, 4, ...) until the k most sensitive layers in float pass;
    2. when k <= ``probe_below``, try the last of them alone, then the last two: a short passing prefix
       says few layers matter, and where the metric is noisy (top-1 on 1000 images moves by a
       few images from one configuration to the next) such small sets often pass;
    3. give back (:func:`give_back`) from the smallest set passing so far, without evaluating a trial
       whose layers in float are all in float in a configuration that failed (the doubling's shorter
       prefixes, say).
    No bisection: the give-back's first trials are the bisection's prefixes anyway. With the run's
    default budget of 10 evaluations (8 here after the float and all-int8 models) it keeps 48 of
    Lite0's 50 layers in int8 at max drop 0.002; with a larger budget the give-back goes on until it
    has isolated the layers that must stay in float.
    """
    limited = LimitedCheck(check)
    k = grow_prefix(ranked, limited)
    if k is None:
        return None
    if max_checks is not None:
        limited.limit = max(max_checks, len(limited.asked))
    position = {layer: i for i, layer in enumerate(ranked)}
    best = frozenset(ranked[:k])
    try:
        for tail in (1, 2) if k <= probe_below else ():
            if tail < k and limited(frozenset(ranked[k - tail:k])):
                best = frozenset(ranked[k - tail:k])
                break
    except ChecksSpent:
        return best
    return give_back(sorted(best, key=position.get, reverse=True), limited, limited.implied_failing)


STRATEGIES: dict[str, Callable] = {"frugal": search_frugal, "refine": search_refine, "binary": search_binary,
                                   "greedy": search_greedy}
