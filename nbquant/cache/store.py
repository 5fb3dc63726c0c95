"""The cache: entries found by key, least recently used ones evicted past a size limit, safe to share
between processes (atomic entries, a lock per key while computing, a lock around eviction)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..options import check_int
from .entries import BadEntry, read_entry, read_header, touch, write_entry
from .keys import FORMAT_VERSION, CacheKey, check_kind, make_key
from .locks import locked

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 * 1024**3
LOW_WATER = 0.9  # eviction shrinks the cache to this fraction of max_bytes, so it does not run on every put
STALE_PART_SECONDS = 3600  # temp files older than this are leftovers of a killed writer
SUFFIX = ".entry"
COLUMNS = ["kind", "key", "bytes", "last_used", "created", "path"]

_MISSING = object()


def cache_dir() -> Path:
    """The cache root: ``$NBQUANT_CACHE_DIR``, else ``$XDG_CACHE_HOME/nbquant``, else ``~/.cache/nbquant``."""
    if os.environ.get("NBQUANT_CACHE_DIR"):
        return Path(os.environ["NBQUANT_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "nbquant"  # XDG: relative is invalid


class Cache:
    """Values kept on disk across runs and processes, found by :meth:`key`. ``enabled=False`` (``--no-cache``)
    makes every lookup a miss and never writes or removes anything.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> cache = Cache(folder.name)
    >>> cache.get_or_compute(cache.key("metric", b"model bytes", {"max_drop": 0.01}), lambda: 0.875)
    0.875
    >>> cache.get(cache.key("metric", b"model bytes", {"max_drop": 0.01}))
    0.875
    >>> folder.cleanup()
    """

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 enabled: bool = True):
        self.root = Path(root).expanduser() if root is not None else cache_dir()
        self.max_bytes = check_int("max_bytes", max_bytes, minimum=0)
        self.enabled = bool(enabled)
        self._known_bytes: int | None = None  # size at the last scan plus what this object wrote since

    def __repr__(self) -> str:
        return f"Cache(root={str(self.root)!r}, max_bytes={self.max_bytes}, enabled={self.enabled})"

    key = staticmethod(make_key)

    @property
    def directory(self) -> Path:
        """The folder of this format version's entries and locks."""
        return self.root / f"v{FORMAT_VERSION}"

    def path(self, key: CacheKey) -> Path:
        return self.directory / key.kind / f"{key.digest}{SUFFIX}"

    def get(self, key: CacheKey, default=None, *, mmap: bool = False):
        """The value stored for ``key``, else ``default``. ``mmap=True`` maps an array read-only instead of
        reading it (large pixel caches). A bad entry is removed with a warning and is a miss."""
        if not self.enabled:
            return default
        path = self.path(key)
        try:
            value = read_entry(path, key, mmap)
        except FileNotFoundError:
            return default
        except (BadEntry, OSError, ValueError, KeyError, TypeError) as exc:
            reason = str(exc) if isinstance(exc, BadEntry) else f"is unreadable ({type(exc).__name__}: {exc})"
            log.warning("cache entry %s %s; removed, it will be recomputed", path, reason)
            with suppress(OSError):
                path.unlink(missing_ok=True)
            return default
        touch(path)
        return value

    def put(self, key: CacheKey, value) -> bool:
        """Store ``value`` (an array, a dict of str to arrays, or a JSON value: tuples come back as lists) for
        ``key``; False when disabled, too large or the disk refused (a warning: the cache never fails a run)."""
        if not self.enabled:
            return False
        path = self.path(key)
        try:
            size = write_entry(path, key, value)
        except OSError as exc:
            log.warning("cache: could not store %s in %s: %s", key, self.directory, exc)
            return False
        if size > self.max_bytes:
            log.info("cache: %s (%d bytes) is larger than the cache's %d bytes; not kept", key, size, self.max_bytes)
            path.unlink(missing_ok=True)
            return False
        self._known_bytes = self.size_bytes() if self._known_bytes is None else self._known_bytes + size
        if self._known_bytes > self.max_bytes:
            self.prune(int(self.max_bytes * LOW_WATER))
        return True

    def get_or_compute(self, key: CacheKey, fn: Callable[[], object], *, mmap: bool = False):
        """The value for ``key``, computing ``fn()`` and storing it on a miss. Holds the key's lock while
        computing, so concurrent runs compute it once: the others wait, then read the stored result."""
        found = self.get(key, _MISSING, mmap=mmap)
        if found is not _MISSING or not self.enabled:
            return fn() if found is _MISSING else found
        with locked(self.directory / "locks" / f"{key.kind}-{key.digest}.lock", remove=True):
            found = self.get(key, _MISSING, mmap=mmap)
            if found is not _MISSING:
                return found
            value = fn()
            stored = self.put(key, value)
        return self.get(key, value, mmap=True) if mmap and stored else value

    def _scan(self, kind: str | None = None) -> list[tuple[Path, os.stat_result]]:
        """(path, stat) of every entry file, of one kind or all."""
        found = []
        for path in self.directory.glob(f"{'*' if kind is None else check_kind(kind)}/*{SUFFIX}"):
            with suppress(FileNotFoundError):
                found.append((path, path.stat()))
        return found

    def entries(self) -> pd.DataFrame:
        """One row per entry, most recently used first: kind, key (sha256), bytes, last_used and created (local
        time), path."""
        import pandas as pd  # on use: the command line starts fast

        rows = []
        for path, info in self._scan():
            created = None
            with suppress(OSError, BadEntry), open(path, "rb") as handle:
                created = read_header(handle)[0].get("created")
            rows.append((path.parent.name, path.stem, info.st_size, datetime.fromtimestamp(info.st_mtime_ns / 1e9),
                         datetime.fromtimestamp(created) if isinstance(created, (int, float)) else None, path))
        frame = pd.DataFrame(rows, columns=COLUMNS)
        frame["last_used"] = pd.to_datetime(frame["last_used"])
        frame["created"] = pd.to_datetime(frame["created"])
        return frame.sort_values("last_used", ascending=False, ignore_index=True)

    def size_bytes(self) -> int:
        """Bytes held by entries (lock and temp files aside)."""
        return sum(info.st_size for _, info in self._scan())

    def prune(self, max_bytes: int | None = None) -> int:
        """Remove least recently used entries until at most ``max_bytes`` (default: the cache's limit) remain,
        and temp files of writers killed an hour ago; returns how many entries went."""
        limit = self.max_bytes if max_bytes is None else check_int("max_bytes", max_bytes, minimum=0)
        if not self.enabled:
            return 0
        with locked(self.directory / "evict.lock"):
            found = sorted(self._scan(), key=lambda e: (e[1].st_mtime_ns, e[0].name))  # least recently used first
            total, removed = sum(info.st_size for _, info in found), 0
            for path, info in found:
                if total <= limit:
                    break
                path.unlink(missing_ok=True)
                total, removed = total - info.st_size, removed + 1
            self._remove_parts(time.time() - STALE_PART_SECONDS)
            self._known_bytes = total
        return removed

    def clear(self, kind: str | None = None) -> int:
        """Remove every entry, or those of one kind; returns how many went. Files nbquant did not write stay."""
        if not self.enabled:
            return 0
        with locked(self.directory / "evict.lock"):
            found = self._scan(kind)
            for path, _ in found:
                path.unlink(missing_ok=True)
            self._remove_parts(time.time() - (STALE_PART_SECONDS if kind else 0))
            self._known_bytes = None
        return len(found)

    def _remove_parts(self, older_than: float) -> None:
        """Temp files last written before ``older_than``: leftovers of killed writers."""
        for part in self.directory.glob("*/.*.part"):
            with suppress(OSError):
                if part.stat().st_mtime < older_than:
                    part.unlink()


def open_cache(cache=True) -> Cache:
    """The cache a run uses: True for the user's cache folder (:func:`cache_dir`), a folder, a :class:`Cache`,
    or False / None for none (``--no-cache``: nothing read or written)."""
    if isinstance(cache, Cache):
        return cache
    if cache is None or cache is False:
        return Cache(enabled=False)
    if cache is True:
        return Cache()
    if isinstance(cache, (str, os.PathLike)):
        return Cache(cache)
    raise ConfigError(f"cache must be True, False, a folder or a nbquant.cache.Cache, got {cache!r}")
