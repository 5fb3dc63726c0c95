"""One cache entry on disk: header, payload, trailer; written atomically, every byte checked on read.

The header is magic, a length and JSON (format version, kind, key, encoding, creation time; for arrays dtype
and shape), padded to 64 bytes so an array payload can be memory-mapped aligned. The trailer is the payload
length, the sha256 of everything before it and an end magic: a truncated, corrupt, foreign or renamed file,
or one of another format version, raises :class:`BadEntry` instead of being read.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from io import BytesIO
from pathlib import Path
from zipfile import ZipFile

import numpy as np

from .keys import FORMAT_VERSION, CacheKey, plain_array, raw_bytes

ENCODINGS = ("npy", "npz", "json")  # an array, a dict of str to arrays, a JSON value

_MAGIC = b"NBQCACHE"
_END = b"NBQEND\x00\x00"
_TRAILER = struct.Struct("<Q32s8s")
_ALIGN = 64
_CHUNK = 1 << 22


class BadEntry(Exception):
    """An entry failed a check on read; the message says which ("is truncated", ...)."""


def _encode(value) -> tuple[dict, Iterable]:
    """(header fields, payload chunks) of a value; TypeError for what the cache cannot hold."""
    if isinstance(value, np.ndarray):
        array = plain_array(value)
        chunks = (raw_bytes(array)[start:start + _CHUNK] for start in range(0, array.nbytes, _CHUNK))
        return {"encoding": "npy", "dtype": array.dtype.str, "shape": list(array.shape)}, chunks
    if isinstance(value, Mapping) and value and all(isinstance(v, np.ndarray) for v in value.values()):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a dict of arrays in the cache needs str keys")
        buffer = BytesIO()
        with ZipFile(buffer, "w") as archive:  # what np.savez writes, without its reserved argument names
            for name, array in value.items():
                with archive.open(f"{name}.npy", "w") as member:
                    np.lib.format.write_array(member, plain_array(array), allow_pickle=False)
        return {"encoding": "npz"}, [buffer.getbuffer()]
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the cache holds arrays, dicts of arrays and JSON values, not this value: {exc}") from None
    return {"encoding": "json"}, [text.encode()]


def write_entry(path: Path, key: CacheKey, value) -> int:
    """Write ``value`` for ``key`` to ``path`` atomically (temp file beside it, fsync, rename); its size."""
    meta, chunks = _encode(value)
    header = json.dumps({"format": FORMAT_VERSION, "kind": key.kind, "key": key.digest, "created": time.time(),
                         **meta}).encode()
    head = _MAGIC + struct.pack("<I", len(header)) + header
    head += b"\0" * (-len(head) % _ALIGN)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            sha, length = hashlib.sha256(head), 0
            handle.write(head)
            for chunk in chunks:
                sha.update(chunk)
                length += handle.write(chunk)
            handle.write(_TRAILER.pack(length, sha.digest(), _END))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    touch(path)
    return len(head) + length + _TRAILER.size


def read_header(handle) -> tuple[dict, int]:
    """(header, payload offset) of an entry open for reading at its start."""
    start = handle.read(12)
    if len(start) < 12 or start[:8] != _MAGIC:
        raise BadEntry("is not an nbquant cache entry")
    (length,) = struct.unpack("<I", start[8:])
    try:
        header = json.loads(handle.read(length))
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise BadEntry("has an unreadable header")
    return header, 12 + length + (-(12 + length) % _ALIGN)


def read_entry(path: Path, key: CacheKey, mmap: bool = False):
    """The value stored at ``path`` for ``key``, checked whole; ``mmap`` maps an array read-only."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        header, offset = read_header(handle)
        if header.get("format") != FORMAT_VERSION:
            raise BadEntry(f"has format version {header.get('format')!r}, not {FORMAT_VERSION}")
        if (header.get("kind"), header.get("key")) != (key.kind, key.digest):
            raise BadEntry(f"holds {header.get('kind')}/{str(header.get('key'))[:16]}, not this key")
        if header.get("encoding") not in ENCODINGS:
            raise BadEntry(f"has an unknown encoding {header.get('encoding')!r}")
        if size < offset + _TRAILER.size:
            raise BadEntry("is truncated")
        handle.seek(size - _TRAILER.size)
        length, digest, end = _TRAILER.unpack(handle.read(_TRAILER.size))
        if end != _END or offset + length + _TRAILER.size != size:
            raise BadEntry("is truncated")
        handle.seek(0)
        sha = hashlib.sha256(handle.read(offset))
        if header["encoding"] != "npy":
            payload = handle.read(length)
            _check(sha, payload, digest)
            if header["encoding"] == "json":
                return json.loads(payload)
            with np.load(BytesIO(payload), allow_pickle=False) as arrays:
                return {name: arrays[name] for name in arrays.files}
        dtype, shape = np.dtype(header["dtype"]), tuple(header["shape"])
        if dtype.itemsize * int(np.prod(shape)) != length:
            raise BadEntry("has a payload that does not match its shape")
        if mmap and length:
            for start in range(0, length, _CHUNK):
                sha.update(handle.read(min(_CHUNK, length - start)))
            _check(sha, b"", digest)
            return np.memmap(handle, dtype, "r", offset, shape)
        array = np.empty(shape, dtype)
        handle.readinto(raw_bytes(array))
        _check(sha, raw_bytes(array), digest)
        return array


def _check(sha, rest, digest: bytes) -> None:
    sha.update(rest)
    if sha.digest() != digest:
        raise BadEntry("fails its checksum (corrupt)")


def touch(path: Path) -> None:
    """Mark an entry used now (its mtime orders eviction); explicit ns, as file times can be coarse."""
    now = time.time_ns()
    with suppress(OSError):
        os.utime(path, ns=(now, now))
