"""Where a run's time goes: seconds per stage, recorded by whichever stage runs, shown at the end.

A run opens a :class:`StageTimes` with :func:`recording`; code anywhere below it wraps its work in
``with timed("decoding images"):`` (a no-op when no run records). Stages that run several times
(one per layer, per batch) add up under one name; stages do not nest (an inner ``timed`` inside an
outer one is not counted twice: the outer one excludes it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import pandas as pd

_current: ContextVar[StageTimes | None] = ContextVar("nbquant_stage_times", default=None)


class StageTimes:
    """Seconds per stage in the order stages first ran; ``frame`` is the DataFrame, ``text`` the log table."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._open: list[list] = []  # [name, start, seconds spent in inner stages]

    def __repr__(self) -> str:
        return f"StageTimes({len(self.seconds)} stages, {self.total:.1f} s)"

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        frame = [name, time.perf_counter(), 0.0]
        self._open.append(frame)
        try:
            yield
        finally:
            self._open.pop()
            spent = time.perf_counter() - frame[1]
            if self._open:
                self._open[-1][2] += spent
            self.add(name, spent - frame[2])

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    @property
    def frame(self) -> pd.DataFrame:
        """stage, seconds, calls, share of the total."""
        total = self.total or 1.0
        return pd.DataFrame({"stage": list(self.seconds), "seconds": [round(s, 3) for s in self.seconds.values()],
                             "calls": [self.calls[n] for n in self.seconds],
                             "share": [round(s / total, 3) for s in self.seconds.values()]})

    def text(self, cpu: str | None = None) -> str:
        """A plain table for logs and terminals, headed by the CPU it was measured on."""
        width = max([len(n) for n in self.seconds] + [5])
        lines = [f"time per stage{f' on {cpu}' if cpu else ''}:"]
        lines += [f"  {name:<{width}}  {seconds:7.2f} s  {100 * seconds / (self.total or 1):5.1f} %"
                  + (f"  ({self.calls[name]} calls)" if self.calls[name] > 1 else "")
                  for name, seconds in self.seconds.items()]
        lines.append(f"  {'total':<{width}}  {self.total:7.2f} s")
        return "\n".join(lines)


@contextmanager
def recording(times: StageTimes | None = None) -> Iterator[StageTimes]:
    """Record the stages run inside this block into ``times`` (a new one by default)."""
    times = times if times is not None else StageTimes()
    token = _current.set(times)
    try:
        yield times
    finally:
        _current.reset(token)


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Count the block's seconds under ``name`` in the run being recorded, if any.

    >>> with recording() as times:
    ...     with timed("decoding images"):
    ...         pass
    >>> list(times.frame["stage"])
    ['decoding images']
    """
    times = _current.get()
    if times is None:
        yield
        return
    with times.stage(name):
        yield
