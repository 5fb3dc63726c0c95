"""Model inputs given as arrays, for models that do not take images (text, audio, tabular).

A :class:`TensorDataset` holds one array per model input, the first axis indexing samples:
from a ``.npz`` file (one array per input name, optional ``labels``), a ``.npy`` file (a
single-input model), a dict of arrays, or an iterable of input dicts. It plays both parts an
image folder and its decoded cache play: it is sampled (``spread``, ``subset``), streamed in
batches for calibration and gathered by index for evaluation; a batch is a feed dict
``{input name: array}``. :meth:`TensorDataset.bind` checks it against a model's inputs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from ..errors import DataError
from ..files import atomic_write_bytes
from ..options import check_count
from .images import Batch, ImageDataset

ARRAY_SUFFIXES = (".npz", ".npy")
LABELS_KEY = "labels"
_UNNAMED = ""  # a .npy file's one array: bound to the model's only input


class TensorDataset:
    """Samples as arrays ``{input name: [N, ...]}`` with optional integer labels ``[N]`` (-1: none).

    >>> data = TensorDataset({"ids": np.arange(12).reshape(4, 3)})
    >>> len(data), data.gather([3, 0])["ids"].tolist()
    (4, [[9, 10, 11], [0, 1, 2]])
    """

    def __init__(self, inputs: Mapping[str, np.ndarray], labels=None, source: str = "arrays"):
        if not isinstance(inputs, Mapping) or not inputs:
            raise DataError(f"{source}: needs at least one input array (a dict of input name -> array)")
        arrays = {str(name): np.asarray(value) for name, value in inputs.items()}
        sizes = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
        n = next(iter(sizes.values()))
        for name, size in sizes.items():
            if size is None or size == 0:
                raise DataError(f"{source}: input {name or '(unnamed)'} must have a sample axis first, got shape "
                                f"{arrays[name].shape}")
            if size != n:
                raise DataError(f"{source}: inputs hold different numbers of samples: "
                                + ", ".join(f"{k or '(unnamed)'} {v}" for k, v in sizes.items()))
        labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{source}: labels must be {n} integers, got {labels.dtype} {labels.shape}")
        self.inputs, self.labels, self.root = arrays, labels.astype(np.int64), source
        self.files = [f"{Path(source).name}[{i}]" for i in range(n)]

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TensorDataset:
        """A ``.npz`` (arrays named by model input; ``labels`` optional) or ``.npy`` (one input) file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"array file {path} does not exist")
        try:
            if path.suffix.lower() == ".npy":
                return cls({_UNNAMED: np.load(path, allow_pickle=False)}, source=str(path))
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read array file {path}: {exc}") from exc
        labels = arrays.pop(LABELS_KEY, None)
        return cls(arrays, labels, str(path))

    @classmethod
    def from_dicts(cls, samples: Iterable[Mapping[str, np.ndarray]], labels=None,
                   source: str = "input dicts") -> TensorDataset:
        """One dict ``{input name: array without the sample axis}`` per sample, stacked."""
        rows = list(samples)
        if not rows:
            raise DataError(f"{source}: no samples")
        names = list(rows[0])
        for i, row in enumerate(rows):
            if list(row) != names:
                raise DataError(f"{source}: sample {i} has inputs {list(row)}, sample 0 has {names}")
            for name in names:
                if np.shape(row[name]) != np.shape(rows[0][name]):
                    raise DataError(f"{source}: input {name} of sample {i} has shape {np.shape(row[name])}, "
                                    f"sample 0's has {np.shape(rows[0][name])}; pad to one shape")
        return cls({name: np.stack([np.asarray(r[name]) for r in rows]) for name in names}, labels, source)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name or '(unnamed)'}: {a.dtype}{list(a.shape[1:])}" for name, a in self.inputs.items())
        return f"TensorDataset(source='{self.root}', n={len(self)}, inputs={{{shapes}}})"

    @property
    def labeled(self) -> bool:
        return bool(len(self) and (self.labels >= 0).all())

    def _take(self, indices) -> TensorDataset:
        indices = np.asarray(indices, np.int64)
        taken = TensorDataset(self.gather(indices), self.labels[indices], self.root)
        taken.files = [self.files[i] for i in indices]
        return taken

    def subset(self, n: int, offset: int = 0) -> TensorDataset:
        """The ``n`` samples starting at ``offset``."""
        n, offset = check_count("n", n), check_count("offset", offset, minimum=0)
        if offset + n > len(self):
            raise DataError(f"{n} samples at offset {offset} go past the {len(self)} samples in {self.root}")
        return self._take(np.arange(offset, offset + n))

    def spread(self, n: int) -> TensorDataset:
        """``n`` samples evenly spaced over the set (as :meth:`ImageDataset.spread`)."""
        n = check_count("n", n)
        if n > len(self):
            raise DataError(f"calibration count {n} is larger than the {len(self)} samples in {self.root}")
        return self._take((np.arange(n) * len(self)) // n)

    def gather(self, indices) -> dict[str, np.ndarray]:
        """The feed dict of the samples at ``indices``, in that order."""
        indices = np.asarray(indices, np.int64)
        return {name: a[indices] for name, a in self.inputs.items()}

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts in order, ``batch_size`` samples at a time."""
        batch_size = check_count("batch_size", batch_size)
        for start in range(0, len(self), batch_size):
            yield {name: a[start:start + batch_size] for name, a in self.inputs.items()}

    def iter_batches(self, pre=None, batch_size: int = 32, pixels: bool = False) -> Iterator[Batch]:
        """Batches as an :class:`ImageDataset` yields them, ``images`` being feed dicts (``pre`` unused)."""
        batch_size = check_count("batch_size", batch_size)
        for start, feed in zip(range(0, len(self), batch_size), self.batches(batch_size)):
            stop = start + batch_size
            yield Batch(feed, self.labels[start:stop], self.files[start:stop])

    def bind(self, model: onnx.ModelProto) -> TensorDataset:
        """This data checked against ``model``'s inputs (names, element types, fixed dims); a ``.npy``
        array takes the name of a single-input model's input. Errors name the file and the input."""
        inputs = _graph_inputs(model)
        arrays = dict(self.inputs)
        if list(arrays) == [_UNNAMED]:
            if len(inputs) != 1:
                raise DataError(f"{self.root} holds one unnamed array but the model has {len(inputs)} inputs "
                                f"({', '.join(i.name for i in inputs)}); save a .npz with one array per input name")
            arrays = {inputs[0].name: arrays[_UNNAMED]}
        wanted = {i.name for i in inputs}
        missing, extra = wanted - set(arrays), set(arrays) - wanted
        if missing or extra:
            raise DataError(f"{self.root} does not match the model's inputs: missing {sorted(missing) or 'none'}, "
                            f"not model inputs {sorted(extra) or 'none'} (model inputs: {', '.join(sorted(wanted))})")
        for info in inputs:
            _check_array(arrays[info.name], info, self.root)
        bound = TensorDataset({i.name: arrays[i.name] for i in inputs}, self.labels, self.root)
        bound.files = self.files
        return bound


def _graph_inputs(model: onnx.ModelProto) -> list:
    """The graph inputs a run must feed (initializers listed as inputs left out)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _check_array(array: np.ndarray, info, source: str) -> None:
    tensor = info.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    except KeyError:  # no element type declared
        dtype = None
    if dtype is not None and array.dtype != dtype:
        raise DataError(f"{source}: input {info.name} is {array.dtype}, the model wants {np.dtype(dtype).name}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if dims and (len(dims) != array.ndim or any(d is not None and d != s for d, s in zip(dims[1:], array.shape[1:]))):
        want = ["N"] + ["?" if d is None else d for d in dims[1:]]
        raise DataError(f"{source}: input {info.name} has shape {list(array.shape)}, the model wants {want}")


def save_arrays(path: str | os.PathLike, inputs: Mapping[str, np.ndarray], labels=None) -> Path:
    """Write ``inputs`` (one array per model input name) and ``labels`` as the ``.npz`` file
    :meth:`TensorDataset.from_file` reads, all or nothing."""
    buffer = io.BytesIO()
    np.savez(buffer, **inputs, **({} if labels is None else {LABELS_KEY: np.asarray(labels)}))
    return atomic_write_bytes(Path(path), buffer.getvalue())


def is_array_source(data) -> bool:
    """Whether ``data`` names or holds arrays (rather than an image folder)."""
    if isinstance(data, (TensorDataset, Mapping)):
        return True
    return isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in ARRAY_SUFFIXES


def open_data(data) -> ImageDataset | TensorDataset:
    """An ImageDataset or TensorDataset as given, a folder's images, an array file's samples, a dict of
    arrays, or an iterable of input dicts."""
    if isinstance(data, (ImageDataset, TensorDataset)):
        return data
    if isinstance(data, Mapping):
        return TensorDataset(data)
    if isinstance(data, (str, os.PathLike)):
        return TensorDataset.from_file(data) if is_array_source(data) else ImageDataset(data)
    if isinstance(data, Iterable):
        return TensorDataset.from_dicts(data)
    raise DataError(f"data must be an image folder, a .npz/.npy file, a dict of arrays or input dicts, got "
                    f"{type(data).__name__}")
