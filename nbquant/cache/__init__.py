"""A cache across runs: decoded pixels, float model outputs, calibration statistics, rankings and metrics kept
on disk and keyed by their content (model bytes, image list, the settings that change them), so a second
``auto-calibrate`` with another ``--max-drop``, a restarted kernel or a new widget target computes only what
is new. Shared by every stage; it imports only ``errors`` and ``options``.

``<root>/v<FORMAT_VERSION>/<kind>/<sha256>.entry``: ``keys`` makes the sha256, ``entries`` writes and checks
one file (atomic, checksummed; a bad one is removed with a warning and is a miss), ``locks`` serializes work
across processes, ``store`` is the :class:`Cache` (least recently used eviction past ``max_bytes``), ``report``
is what ``nbquant cache`` prints.
"""

from .keys import CONTENT_HASH_MAX, FORMAT_VERSION, CacheKey, make_key
from .report import clear_cache, describe_cache, format_bytes
from .store import DEFAULT_MAX_BYTES, Cache, cache_dir, open_cache

__all__ = ["CONTENT_HASH_MAX", "DEFAULT_MAX_BYTES", "FORMAT_VERSION", "Cache", "CacheKey", "cache_dir",
           "clear_cache", "describe_cache", "format_bytes", "make_key", "open_cache"]
