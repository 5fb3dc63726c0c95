"""Where evaluation work runs: this process (the default), any ``concurrent.futures.Executor``,
or a ``dask.distributed`` Client (a real cluster, or a LocalCluster on 127.0.0.1 for ``--workers``).

:class:`EvaluationPool` is the one interface the evaluator uses: ``share`` a model once per
configuration, ``submit`` shard tasks (with Dask, each shard prefers the same worker every time,
so the worker's decoded images are reused, and may move when that worker is lost: Dask then
re-runs the task elsewhere), ``cancel`` what an early decision made unnecessary.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from concurrent.futures import Executor

from ..errors import ConfigError
from ..options import check_int

log = logging.getLogger(__name__)


def _is_dask_client(obj) -> bool:
    return type(obj).__module__.startswith("distributed") and hasattr(obj, "scatter")


class EvaluationPool:
    """An executor or Dask client that evaluation shards are submitted to.

    ``threads``: onnxruntime threads per task (None: onnxruntime's default, every core of the
    worker's machine). ``owned`` objects (a client and cluster this pool started) are closed by
    :meth:`close`.
    """

    def __init__(self, executor, threads: int | None = None, owned: tuple = ()):
        if not (_is_dask_client(executor) or isinstance(executor, Executor)):
            raise ConfigError(f"executor must be a concurrent.futures.Executor or a dask.distributed Client, "
                              f"got {type(executor).__name__}")
        self.executor, self.threads, self.owned = executor, threads, owned
        self.dask = _is_dask_client(executor)
        self._workers: list[str] = []
        self._model = None  # (model, handle, sha256) of the last shared base model
        if self.dask:  # a task that carries its model (a one-shard plan) is meant to: no advice needed
            for advice in ("Large object of size", "Sending large graph"):
                warnings.filterwarnings("ignore", message=advice, category=UserWarning)

    def __repr__(self) -> str:
        where = self.dashboard_link or type(self.executor).__name__
        return f"EvaluationPool({where}, workers={len(self.workers()) or '?'})"

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's address (None without Dask or without bokeh)."""
        if not self.dask:
            return None
        try:
            return self.executor.dashboard_link
        except Exception:  # no dashboard (bokeh missing): the link is a nicety
            return None

    def workers(self) -> list[str]:
        """Dask worker addresses, sorted (empty for other executors)."""
        if not self.dask:
            return []
        return sorted(self.executor.scheduler_info()["workers"])

    def share(self, data: bytes):
        """A handle to ``data`` for :meth:`submit`: with Dask, copied to every worker once (a worker
        that joins later fetches it from a peer); otherwise the bytes themselves."""
        if not self.dask:
            return data
        self._workers = self.workers()
        return self.executor.scatter(data, broadcast=True, hash=True)

    def share_model(self, model) -> tuple:
        """``(handle, sha256)`` of an ONNX model shared once: the same ModelProto object is not
        serialized, hashed or sent again."""
        if self._model is None or self._model[0] is not model:
            data = model.SerializeToString()
            self._model = (model, self.share(data), hashlib.sha256(data).hexdigest())
        return self._model[1], self._model[2]

    def submit(self, fn, *args, shard: int = 0):
        """Run ``fn(*args)``; with Dask, shard ``i`` prefers worker ``i mod n`` (its cache is there) and
        runs before shard ``i + 1``."""
        if not self.dask:
            return self.executor.submit(fn, *args)
        workers = self._workers or self.workers()
        preferred = [workers[shard % len(workers)]] if workers else None
        # earlier shards first: Dask does not keep submission order, and the caller reads shards in order
        return self.executor.submit(fn, *args, pure=False, workers=preferred, allow_other_workers=True,
                                    priority=-shard)

    @staticmethod
    def cancel(futures) -> None:
        for future in futures:
            future.cancel()

    def close(self) -> None:
        """Close the client and cluster this pool started (not a client or executor it was given)."""
        for obj in self.owned:
            obj.close()
        self.owned = ()


def as_pool(executor) -> EvaluationPool | None:
    """None (in-process), an EvaluationPool, or a new pool around an Executor / Dask client."""
    if executor is None or isinstance(executor, EvaluationPool):
        return executor
    return EvaluationPool(executor)


def open_pool(scheduler: str | None = None, workers: int | None = None) -> EvaluationPool | None:
    """The CLI's pool: a Dask client of the scheduler at ``scheduler``, or a LocalCluster of
    ``workers`` processes on 127.0.0.1 (each with an equal share of this machine's cores); None
    for neither. Needs the ``dask`` extra."""
    if scheduler is None and workers is None:
        return None
    if scheduler is not None and workers is not None:
        raise ConfigError("give --scheduler (an existing cluster) or --workers (a local one), not both")
    if workers is not None:
        workers = check_int("--workers", workers)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--scheduler and --workers need Dask: pip install 'nbquant[dask]'") from None
    if scheduler is not None:
        client = Client(scheduler)
        log.info("Dask scheduler %s: %d workers, dashboard %s", scheduler,
                 len(client.scheduler_info()["workers"]), client.dashboard_link)
        return EvaluationPool(client, owned=(client,))
    threads = max(1, (os.cpu_count() or 1) // workers)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    client = Client(cluster)
    log.info("Dask LocalCluster: %d workers, %d onnxruntime threads each, dashboard %s", workers, threads,
             client.dashboard_link)
    return EvaluationPool(client, threads=threads, owned=(client, cluster))
