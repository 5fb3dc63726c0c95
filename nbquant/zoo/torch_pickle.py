"""Read PyTorch ``.pth`` state dicts into numpy arrays without torch and without running code.

Both layouts ``torch.save`` has written are read: the zip archive (torch >= 1.6,
``<name>/data.pkl`` plus one ``<name>/data/<key>`` file per storage) and the legacy stream
(magic number, protocol and sys-info pickles, the state-dict pickle, the list of storage
keys, then each storage as an int64 element count and its raw bytes). The pickles go
through an unpickler that only knows the few globals a tensor state dict needs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StorageType:
    """Stands for a ``torch.<X>Storage`` class in a pickle: only its dtype matters here."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """One flat storage; ``data`` is filled once its bytes are read (legacy: after the pickle)."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel, self.data = key, dtype, numel, None


class _StorageSlice:
    """A storage seen from element ``start`` on (legacy files can pickle views of a storage)."""

    __slots__ = ("storage", "start")

    def __init__(self, storage: _Storage, start: int):
        self.storage, self.start = storage, start


class _TensorRef:
    """A tensor waiting for its storage bytes: built into an array once the whole file is read."""

    __slots__ = ("source", "offset", "size", "stride")

    def __init__(self, source: _StorageSlice, offset: int, size: tuple, stride: tuple):
        self.source, self.offset, self.size, self.stride = source, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_unused):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the tensor lives."""
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_unused):
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is just its tensor here."""
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that knows only state-dict globals and hands storages out as `_Storage` records."""

    def __init__(self, file, path: Path, storages: dict[str, _Storage]):
        super().__init__(file)
        self.path, self.storages = path, storages

    def find_class(self, module: str, name: str):
        """Return our stand-in for an allowed global; refuse everything else."""
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise ModelError(
                f"nbquant refuses global '{module}.{name}' in {self.path}: "
                "only tensor state dicts can be read"
            )
        return found

    def persistent_load(self, pid):
        """Map ``('storage', type, key, location, numel[, view])`` to a slice of a `_Storage`."""
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ModelError(f"{self.path}: unexpected persistent id {pid!r} in the pickle")
        _, storage_type, key, _location, numel = pid[:5]
        if not (isinstance(storage_type, _StorageType) and isinstance(key, str)
                and isinstance(numel, int) and numel >= 0):
            raise ModelError(f"{self.path}: malformed storage reference {pid!r}")
        storage = self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise ModelError(f"{self.path}: storage {key} is referenced with two types or sizes")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _StorageSlice(storage, 0)
        return self._view_slice(storage, view)

    def _view_slice(self, root: _Storage, view) -> _StorageSlice:
        """Legacy ``(view_key, offset, size)``: a window on the root storage."""
        if not (isinstance(view, tuple) and len(view) == 3
                and all(isinstance(v, int) for v in view[1:])):
            raise ModelError(f"{self.path}: malformed storage view {view!r}")
        if view[1] < 0 or view[2] < 0 or view[1] + view[2] > root.numel:
            raise ModelError(f"{self.path}: storage view {view!r} does not fit storage {root.key}")
        return _StorageSlice(root, view[1])


def _unpickle(file, path: Path, storages: dict[str, _Storage]):
    """Run the restricted unpickler once, turning any failure into a ModelError about ``path``."""
    try:
        return _StateDictUnpickler(file, path, storages).load()
    except ModelError:
        raise
    except Exception as exc:  # pickle raises many types on corrupt input
        raise ModelError(f"{path} is not a readable PyTorch state dict: {exc!r}") from exc


def _read_exact(f, nbytes: int, path: Path, what: str) -> bytes:
    """Read exactly ``nbytes`` or raise: a short read means a truncated file."""
    remaining = os.fstat(f.fileno()).st_size - f.tell()
    if nbytes > remaining:
        raise ModelError(f"{path} is truncated: {what} needs {nbytes} bytes, {remaining} left")
    return f.read(nbytes)


def _load_legacy(f, path: Path):
    """Read the legacy (pre-zip) stream: headers, the state-dict pickle, then storage bytes."""
    storages: dict[str, _Storage] = {}
    if _unpickle(f, path, storages) != LEGACY_MAGIC:
        raise ModelError(f"{path} is not a PyTorch file (wrong magic number)")
    protocol = _unpickle(f, path, storages)
    if protocol != LEGACY_PROTOCOL:
        raise ModelError(f"{path} uses torch legacy protocol {protocol!r}; only 1001 is known")
    sys_info = _unpickle(f, path, storages)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
        raise ModelError(f"{path} was saved on a big-endian machine; only little endian is read")
    result = _unpickle(f, path, storages)
    keys = _unpickle(f, path, storages)
    if not (isinstance(keys, list) and set(keys) == set(storages)):
        raise ModelError(f"{path}: the storage key list does not match the storages in the pickle")
    for key in keys:
        _read_legacy_storage(f, path, storages[key])
    return result, storages


def _read_legacy_storage(f, path: Path, storage: _Storage) -> None:
    """Read one storage: little-endian int64 element count, then the raw elements."""
    (numel,) = struct.unpack("<q", _read_exact(f, 8, path, f"storage {storage.key} size"))
    if numel != storage.numel:
        raise ModelError(
            f"{path}: storage {storage.key} holds {numel} elements, the pickle says {storage.numel}"
        )
    raw = _read_exact(f, numel * storage.dtype.itemsize, path, f"storage {storage.key}")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _load_zip(path: Path):
    """Read the zip layout: ``<name>/data.pkl`` and one ``<name>/data/<key>`` per storage."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        pickles = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
        if len(pickles) != 1:
            raise ModelError(f"{path} is a zip but not a PyTorch archive (no single */data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        order = b"little"
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").strip()
        if order != b"little":
            raise ModelError(f"{path} stores big-endian tensors; only little endian is read")
        storages: dict[str, _Storage] = {}
        result = _unpickle(io.BytesIO(archive.read(pickles[0])), path, storages)
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise ModelError(f"{path} has no entry {member} for storage {key}")
            _fill_zip_storage(archive.read(member), path, storage)
    return result, storages


def _fill_zip_storage(raw: bytes, path: Path, storage: _Storage) -> None:
    """Wrap one zip storage entry as a flat array of its declared dtype and length."""
    nbytes = storage.numel * storage.dtype.itemsize
    if len(raw) < nbytes:
        raise ModelError(f"{path}: storage {storage.key} has {len(raw)} bytes, needs {nbytes}")
    storage.data = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)


def _materialize(ref: _TensorRef, path: Path, key: str) -> np.ndarray:
    """Build the tensor as a native-endian array from its storage, checking it stays in bounds."""
    if not isinstance(ref.source, _StorageSlice):
        raise ModelError(f"{path}: tensor {key!r} is not backed by a storage")
    flat = ref.source.storage.data
    ints = (ref.offset, *ref.size, *ref.stride)
    if not all(isinstance(v, int) and v >= 0 for v in ints) or len(ref.size) != len(ref.stride):
        raise ModelError(f"{path}: tensor {key!r} has a bad offset/size/stride {ints}")
    start = ref.source.start + ref.offset
    last = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if 0 not in ref.size and last >= flat.size:
        raise ModelError(f"{path}: tensor {key!r} reaches past the end of its storage")
    base = flat[min(start, flat.size):]
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base, shape=ref.size, strides=[s * item for s in ref.stride], writeable=False
    )
    return view.astype(flat.dtype.newbyteorder("="), order="C", copy=True)


def _to_arrays(result, storages: dict[str, _Storage], path: Path) -> dict[str, np.ndarray]:
    """Turn the unpickled mapping of tensor references into ``{name: array}``."""
    if not isinstance(result, dict):
        raise ModelError(f"{path} holds a {type(result).__name__}, not a state dict")
    arrays = {}
    for key, value in result.items():
        if not (isinstance(key, str) and isinstance(value, _TensorRef)):
            raise ModelError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                "only flat tensor state dicts can be read"
            )
        arrays[key] = _materialize(value, path, key)
    return arrays


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save``d state dict (zip or legacy layout) as numpy arrays, without torch."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file")
    if zipfile.is_zipfile(path):
        result, storages = _load_zip(path)
    else:
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":
                raise ModelError(f"{path} is neither a zip nor a pickle-based PyTorch file")
            f.seek(0)
            result, storages = _load_legacy(f, path)
    return _to_arrays(result, storages, path)
