"""Fallback search strategies: which layers go back to float so that the budget holds.

Each strategy gets the layers ranked most sensitive first and ``check(float_layers) -> ok``
(the caller caches and counts evaluations) and returns the float set it settles on, or None.
"""

from __future__ import annotations

from collections.abc import Callable

Check = Callable[[frozenset], bool]


class BudgetExhausted(Exception):
    """Raised by ``check`` when the evaluation budget is spent."""


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
    """nbquant's default: find a passing prefix fast, then put layers back into int8.

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


def give_back(candidates: list[str], check: Check) -> frozenset:
    """Smallest float set found by returning groups of ``candidates`` (a passing float set,
    least sensitive first) to int8: a group that keeps the target goes back whole, a group
    that breaks it is split in two and each half tried."""
    current = frozenset(candidates)
    groups = [candidates]
    while groups:
        group = groups.pop(0)
        trial = current - set(group)
        if trial != current and check(trial):
            current = trial
        elif len(group) > 1:
            half = len(group) // 2
            groups[:0] = [group[:half], group[half:]]
    return current


STRATEGIES: dict[str, Callable] = {"refine": search_refine, "binary": search_binary, "greedy": search_greedy}
