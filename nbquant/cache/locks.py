"""Advisory file locks (``flock``) that serialize cache work across processes; none where ``fcntl`` is missing."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: entries stay whole (atomic renames), only work may be done twice
    fcntl = None

log = logging.getLogger(__name__)


def _acquire(path: Path) -> int:
    """An fd holding ``flock`` on ``path``. Holders may remove the lock file before releasing it, so a waiter
    that got the lock of a removed file tries again on the new one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextmanager
def locked(path: Path, remove: bool = False):
    """Hold an exclusive lock on ``path`` in the block (other processes and threads wait); ``remove`` deletes
    the lock file at the end, for per-key locks that would otherwise pile up. Without ``fcntl`` or a writable
    folder nothing is locked."""
    fd = None
    if fcntl is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _acquire(path)
        except OSError as exc:
            log.debug("cache: cannot lock %s (%s); going on without the lock", path, exc)
    try:
        yield
    finally:
        if fd is not None:
            if remove:
                path.unlink(missing_ok=True)
            os.close(fd)
