"""Both cores busy with numpy work: items spread over threads, each with a single-threaded BLAS.

Work such as GPTQ's column loop is Python stepping through small numpy operations: it keeps one core
busy whatever BLAS does, and OpenBLAS's own threads spin while they wait for it. Layers in parallel,
each on one BLAS thread, use every core instead (GPTQ on EfficientNet-Lite0, 2 cores: 4.0 s -> 2.1-2.4 s,
same integers). With one BLAS thread a result no longer depends on how many cores BLAS found.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from threadpoolctl import threadpool_limits

T = TypeVar("T")
R = TypeVar("R")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells, else every CPU)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS (numpy's matrix products and linear algebra) on one thread inside the block."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def map_threads(fn: Callable[[T], R], items: Iterable[T], cost: Callable[[T], float] | None = None,
                workers: int | None = None) -> list[R]:
    """``[fn(item) for item in items]``, computed on ``workers`` threads (default: the usable CPUs) with a
    single-threaded BLAS; the costliest items (by ``cost``) start first, so no thread is left with a
    large one at the end. Results come in the items' order; the first exception is raised.

    >>> map_threads(lambda x: x * x, [3, 1, 2], cost=lambda x: x, workers=2)
    [9, 1, 4]
    """
    items = list(items)
    workers = min(workers or usable_cpus(), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    order = sorted(range(len(items)), key=lambda i: -cost(items[i])) if cost is not None else range(len(items))
    results: list = [None] * len(items)
    with single_threaded_blas(), ThreadPoolExecutor(workers, thread_name_prefix="nbquant") as pool:
        for i, result in zip(order, pool.map(lambda i: fn(items[i]), order)):
            results[i] = result
    return results
