"""One model run over a plan of image batches, in this process or split into shards on workers.

A plan is a list of index arrays (the batches, in the order they are run). In this process the
images come from a :class:`~nbquant.image_cache.CachedImages`; on an
:class:`~nbquant.executors.EvaluationPool`, consecutive batches form a shard that one worker
runs: it reads the shard's image files from the path it is given, decodes them once and keeps
the uint8 pixels in an unlinked temp file (disk, not memory), and keeps the last model's
onnxruntime session, so a model travels once per configuration. Both ways run the same batches
through onnxruntime, so the outputs are the same.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from tqdm.auto import tqdm

from ..data.images import ImageDataset
from ..data.pixel_cache import CachedImages, cache_images
from ..data.preprocess import Preprocess
from ..data.tensors import TensorDataset
from .session import feed, make_session

SHARD_BATCHES = 4  # batches per worker task: 64 images at the evaluator's batch size; an early decision wastes little


@dataclass
class ImageFiles:
    """The evaluation images as files, for workers that decode them where they run."""

    pre: Preprocess
    labels: np.ndarray
    paths: list[str]
    root: str = "/"

    @classmethod
    def of(cls, dataset: ImageDataset, pre: Preprocess) -> ImageFiles:
        return cls(pre, dataset.labels, [str(p) for p in dataset.files], str(dataset.root))

    def __len__(self) -> int:
        return len(self.paths)

    @cached_property
    def files(self) -> list[str]:
        """Relative to the folder, as in :class:`~nbquant.image_cache.CachedImages`."""
        return [Path(p).relative_to(self.root).as_posix() for p in self.paths]

    def keep(self, mask: np.ndarray) -> ImageFiles:
        """The images where ``mask`` is true (those the workers could decode)."""
        return ImageFiles(self.pre, self.labels[mask], [p for p, k in zip(self.paths, mask) if k], self.root)


@dataclass(frozen=True)
class Derived:
    """A model built as ``build(base, *args)``: on a pool the base model travels to each worker
    once and the workers build the model themselves (the ranking's one-layer models: 50 models
    from one base, each as large as the base); in this process it is built here."""

    base: onnx.ModelProto
    build: Callable
    args: tuple

    def materialize(self) -> onnx.ModelProto:
        return self.build(self.base, *self.args)


def batch_plan(indices, batch_size: int) -> list[np.ndarray]:
    """``indices`` cut into batches of ``batch_size``, in order."""
    indices = np.asarray(indices, dtype=np.int64)
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def run_plan(model, images, plan: list[np.ndarray], pool=None, simulate: bool | None = None,
             keep: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, first output)`` for each batch of ``plan``, in order; indices drop images
    a worker could not decode. Closing the iterator early (an early decision) cancels the shards
    not run yet. ``keep``: workers keep the shard's pixels for later runs of the same plan."""
    if pool is None:
        session = make_session(model.materialize() if isinstance(model, Derived) else model, simulate=simulate)
        for picked in plan:
            yield picked, session.run(None, feed(session, images.gather(picked)))[0]
        return
    yield from _gather(_submit(model, images, plan, pool, simulate, keep), pool)


def _submit(model, images: ImageFiles, plan, pool, simulate, keep, first: int = 0) -> list[tuple[list, object]]:
    """Share the model once and submit one task per shard: ``[(shard's batches, future), ...]``;
    shard ``i`` prefers the pool's worker ``first + i`` (modulo their number)."""
    shards = [plan[i:i + SHARD_BATCHES] for i in range(0, len(plan), SHARD_BATCHES)]
    if isinstance(model, Derived):
        base, base_key = pool.share_model(model.base)
        payload = (base, base_key, model.build, model.args)
        key = hashlib.sha256(pickle.dumps((base_key, model.build.__name__, model.args))).hexdigest()
    else:
        data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes()
        key = hashlib.sha256(data).hexdigest()
        payload = pool.share(data) if len(shards) > 1 else data  # one task carries its model faster than scatter
    return [(shard, pool.submit(evaluate_shard, payload, key, _shard_inputs(images, np.concatenate(shard)),
                                [len(b) for b in shard], getattr(images, "pre", None), simulate, pool.threads, keep,
                                shard=first + number))
            for number, shard in enumerate(shards)]


def _shard_inputs(images, indices: np.ndarray):
    """What a worker needs for the samples at ``indices``: their image paths (it decodes them), or, for
    arrays (:class:`~nbquant.data.tensors.TensorDataset`), the feed dict itself."""
    if isinstance(images, ImageFiles):
        return [images.paths[i] for i in indices]
    return images.gather(indices)


def _gather(submitted, pool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    try:
        for shard, future in submitted:
            for picked, (kept, outputs) in zip(shard, future.result()):
                if outputs is not None:
                    yield picked[kept], outputs
    finally:
        pool.cancel([future for _, future in submitted])


def collect(batches: Iterator[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(outputs of ``n`` images in index order, which images have one) from ``run_plan``'s batches."""
    out, done = None, np.zeros(n, bool)
    for picked, batch in batches:
        if out is None:
            out = np.zeros((n,) + batch.shape[1:], batch.dtype)
        out[picked] = batch
        done[picked] = True
    return out, done


def outputs_of(models, images, batch_size: int, pool=None, simulate: bool | None = None,
               window: int = 4) -> Iterator[np.ndarray]:
    """The first output of each of ``models`` (an iterable, built lazily) on every image, in file
    order; on a pool, up to ``window`` models are in flight at once, so workers run them side by
    side (e.g. the ranking's one-layer models)."""
    plan = batch_plan(np.arange(len(images)), batch_size)
    if pool is None:
        for model in models:
            yield collect(run_plan(model, images, plan, simulate=simulate), len(images))[0]
        return
    queue = deque()
    for number, model in enumerate(models):  # model i's shards start at worker i: models run side by side
        queue.append(_submit(model, images, plan, pool, simulate, keep=True, first=number))
        if len(queue) >= window:
            yield collect(_gather(queue.popleft(), pool), len(images))[0]
    while queue:
        yield collect(_gather(queue.popleft(), pool), len(images))[0]


def reference_outputs(model, images, batch_size: int, pool=None, progress: bool = False,
                      desc: str = "float model outputs", simulate: bool = False):
    """(images a worker could decode, the float ``model``'s first output on them): the first run
    over a set of image files; workers do not keep these file-order shards."""
    plan = batch_plan(np.arange(len(images)), batch_size)
    batches = tqdm(run_plan(model, images, plan, pool, simulate=simulate, keep=False), total=len(plan), desc=desc,
                   disable=not progress)
    outputs, done = collect(batches, len(images))
    if not done.all():  # only workers decode here; an in-process cache holds decodable images only
        images, outputs = images.keep(done), outputs[done]
    return images, outputs


# ---- worker side: one process's caches ----

_shards: dict[str, CachedImages] = {}
_session: dict[tuple, object] = {}


def evaluate_shard(model, key: str, paths, sizes: list[int], pre: Preprocess | None,
                   simulate: bool | None, threads: int | None, keep: bool) -> list[tuple]:
    """Worker task: ``(decoded mask, first output or None)`` for each batch of ``sizes`` images
    of ``paths`` (or samples of a feed dict of arrays, which need no decoding); ``model`` is the
    model's bytes or ``(base bytes, base key, build, args)``."""
    session = _session_for(model, key, simulate, threads)
    if isinstance(paths, dict):
        images = TensorDataset(paths, source="shard")
        decoded = np.ones(len(images), bool)
    else:
        images, decoded = _shard_images(paths, pre, keep)
    position = np.cumsum(decoded) - 1
    results, start = [], 0
    for size in sizes:
        mask = decoded[start:start + size]
        picked = position[start:start + size][mask]
        outputs = session.run(None, feed(session, images.gather(picked)))[0] if len(picked) else None
        results.append((mask, outputs))
        start += size
    return results


_bases: dict[str, onnx.ModelProto] = {}


def _session_for(model, key: str, simulate: bool | None, threads: int | None):
    wanted = (key, simulate, threads)
    if wanted not in _session:
        _session.clear()
        if isinstance(model, tuple):
            base, base_key, build, args = model
            if base_key not in _bases:
                _bases.clear()
                _bases[base_key] = onnx.load_from_string(base)
            proto = build(_bases[base_key], *args)
        else:
            proto = onnx.load_from_string(model)
        _session[wanted] = make_session(proto, threads=threads, simulate=simulate)
    return _session[wanted]


def _shard_images(paths: list[str], pre: Preprocess, keep: bool) -> tuple[CachedImages, np.ndarray]:
    """The shard's decoded pixels (cached when ``keep``) and which paths could be decoded."""
    key = hashlib.sha1("\n".join(paths + [repr(pre)]).encode()).hexdigest()
    if key in _shards:
        images = _shards[key]
    else:
        dataset = ImageDataset.from_files(paths)
        path = None
        if keep:
            handle, path = tempfile.mkstemp(prefix="nbquant-shard-", suffix=".u8", dir=_worker_dir())
            os.close(handle)
        try:
            images = cache_images(dataset, pre, Path(path) if path else None, progress=False)
        finally:
            if path:
                os.unlink(path)  # the cache keeps its file open: no file is left behind if the worker dies
        images.skipped = {str(p) for p in dataset.skipped}
        if keep:
            _shards[key] = images
    decoded = np.array([p not in images.skipped for p in paths], dtype=bool)
    return images, decoded


def _worker_dir() -> str | None:
    """A Dask worker's local directory, else the system temp folder."""
    try:
        from distributed import get_worker
        return get_worker().local_directory
    except (ImportError, ValueError):
        return None
