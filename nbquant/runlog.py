"""The run log: log/nbquant.log gets nbquant's messages for as long as a run lasts."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

LOG_FORMAT = "%(asctime)s - %(levelname)s - [nbquant]:%(message)s"


@contextmanager
def log_to_file(path: Path, level: int = logging.INFO):
    """Send the ``nbquant`` logger's records to ``path`` (appending) inside the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("nbquant")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    old_level = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
