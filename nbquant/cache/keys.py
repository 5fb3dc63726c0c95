"""Cache keys: a sha256 of everything that determines a value, fed in a canonical, unambiguous form."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import stat
from collections.abc import Mapping
from enum import Enum
from pathlib import Path, PurePath

import numpy as np

from ..errors import ConfigError

FORMAT_VERSION = 1  # in every key, every header and the folder name: a new layout never reads an old one
CONTENT_HASH_MAX = 64 * 1024  # files up to this size key on their bytes, larger ones on size and mtime

_KIND = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """One entry's identity: the kind of value and the sha256 of everything that determines it."""

    kind: str
    digest: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.digest[:16]}"


def check_kind(kind: object) -> str:
    """``kind`` when it can name a cache folder, else ConfigError."""
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ConfigError(f"cache kind must be 1-64 lower-case letters, digits, '_', '-' or '.', got {kind!r}")
    return kind


def make_key(kind: str, *parts) -> CacheKey:
    """The key of a value of ``kind`` computed from ``parts``: bytes, str, numbers (an int and the equal float
    differ), None, enums, numpy arrays (dtype, shape and bytes), dicts (any order), lists and tuples (alike),
    sets, dataclasses (their compared fields), ONNX models (serialized bytes) and paths. A path keys on its
    resolved name and, for files up to ``CONTENT_HASH_MAX`` bytes, their content (cheap, and immune to coarse or
    reset mtimes), for larger ones on size and ``mtime_ns`` (thousands of images stay one ``stat`` each); pass
    the bytes to key a large file on its content.

    >>> make_key("metric", [1, 2], {"a": 1, "b": 0.5}) == make_key("metric", (1, 2), {"b": 0.5, "a": 1})
    True
    >>> make_key("metric", 1) == make_key("metric", 1.0)
    False
    """
    sha = hashlib.sha256()
    feed(sha, ("nbquant-cache", FORMAT_VERSION, check_kind(kind), parts))
    return CacheKey(kind, sha.hexdigest())


def _put(sha, tag: bytes, data=b"") -> None:
    sha.update(tag + memoryview(data).nbytes.to_bytes(8, "little"))
    sha.update(data)


def _digest(value) -> bytes:
    sha = hashlib.sha256()
    feed(sha, value)
    return sha.digest()


def feed(sha, value) -> None:
    """Add ``value`` to the hash ``sha`` unambiguously: a type tag, a length, a canonical form."""
    if value is None:
        _put(sha, b"N")
    elif isinstance(value, Enum):
        _put(sha, b"E", type(value).__qualname__.encode())
        feed(sha, value.value)
    elif isinstance(value, (bool, np.bool_)):
        _put(sha, b"B", b"1" if value else b"0")
    elif isinstance(value, (int, np.integer)):
        _put(sha, b"I", str(int(value)).encode())
    elif isinstance(value, (float, np.floating)):
        _put(sha, b"F", float(value).hex().encode())
    elif isinstance(value, str):
        _put(sha, b"S", value.encode())
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _put(sha, b"Y", value)
    elif isinstance(value, np.ndarray):
        array = plain_array(value)
        _put(sha, b"A", f"{array.dtype.str}{array.shape}".encode())
        _put(sha, b"a", raw_bytes(array))
    elif isinstance(value, PurePath):
        _feed_path(sha, Path(value))
    elif isinstance(value, Mapping):
        _put(sha, b"D", str(len(value)).encode())
        for key_digest, item in sorted(((_digest(k), v) for k, v in value.items()), key=lambda pair: pair[0]):
            sha.update(key_digest)
            feed(sha, item)
    elif isinstance(value, (set, frozenset)):
        _put(sha, b"T", b"".join(sorted(_digest(v) for v in value)))
    elif isinstance(value, (list, tuple)):
        _put(sha, b"L", str(len(value)).encode())
        for item in value:
            feed(sha, item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _put(sha, b"C", type(value).__qualname__.encode())
        feed(sha, {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.compare})
    elif hasattr(value, "SerializeToString"):  # onnx.ModelProto and other protobuf messages
        _put(sha, b"P", type(value).__name__.encode())
        _put(sha, b"p", value.SerializeToString())
    else:
        raise TypeError(f"a cache key cannot hold a {type(value).__name__}: use bytes, str, numbers, arrays, "
                        "dicts, lists, dataclasses, paths or ONNX models")


def _feed_path(sha, path: Path) -> None:
    resolved = path.resolve()
    _put(sha, b"R", str(resolved).encode())
    try:
        info = resolved.stat()
    except FileNotFoundError:
        _put(sha, b"M")
        return
    if stat.S_ISDIR(info.st_mode):
        raise TypeError(f"a cache key cannot hold the folder {path}: pass its files (e.g. sorted(folder.rglob('*')))")
    if info.st_size <= CONTENT_HASH_MAX:
        _put(sha, b"c", resolved.read_bytes())
    else:
        _put(sha, b"s", f"{info.st_size}:{info.st_mtime_ns}".encode())


def plain_array(value: np.ndarray) -> np.ndarray:
    """``value`` C-contiguous; TypeError for object, structured and sub-array dtypes the cache does not hold."""
    if value.dtype.hasobject or value.dtype.fields or value.dtype.subdtype:
        raise TypeError(f"the cache holds arrays of plain dtypes, not {value.dtype}")
    return value if value.flags.c_contiguous else np.array(value, order="C")  # ascontiguousarray makes 0-d 1-d


def raw_bytes(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8))
