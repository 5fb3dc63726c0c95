"""Work spread over threads (nbquant.threads): results in order, errors raised, BLAS on one thread inside."""

import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from nbquant.threads import map_threads


def test_results_keep_the_items_order_and_run_on_several_threads():
    seen = set()

    def square(x):
        seen.add(threading.current_thread().name)
        time.sleep(0.005)  # long enough that both threads take items
        np.ones((64, 64)) @ np.ones((64, 64))  # BLAS is loaded and limited
        blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        return x * x, blas

    out = map_threads(square, range(20), cost=lambda x: x % 7, workers=2)
    assert [value for value, _ in out] == [x * x for x in range(20)]
    assert all(blas and set(blas) == {1} for _, blas in out)
    assert len(seen) == 2 and all(name.startswith("nbquant") for name in seen)


def test_the_first_error_is_raised():
    def fail_on_three(x):
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        map_threads(fail_on_three, range(6), workers=2)
    assert map_threads(fail_on_three, [1, 2], workers=2) == [1, 2]
