"""What ``nbquant cache`` prints: the cache's place, size and kinds of entries; and clearing it."""

from __future__ import annotations

from .store import Cache


def format_bytes(count: int) -> str:
    """A size for people.

    >>> format_bytes(1536), format_bytes(3 * 1024**3)
    ('1.5 KiB', '3.0 GiB')
    """
    if count < 1024:
        return f"{count} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            break
    return f"{count:.1f} {unit}"


def describe_cache(cache: Cache) -> str:
    """``nbquant cache``: where the cache is, its size and limit, and one line per kind of entry."""
    frame = cache.entries()
    state = "" if cache.enabled else " (disabled)"
    head = f"cache {cache.root}{state}: {format_bytes(int(frame['bytes'].sum()))} of {format_bytes(cache.max_bytes)}"
    if frame.empty:
        return f"{head}, no entries"
    table = frame.groupby("kind").agg(entries=("key", "size"), bytes=("bytes", "sum"), last=("last_used", "max"))
    table = table.sort_values("last", ascending=False)
    table["size"] = table.pop("bytes").map(format_bytes)
    table["last used"] = table.pop("last").dt.strftime("%Y-%m-%d %H:%M")
    return f"{head}\n{table.to_string()}"


def clear_cache(cache: Cache, kind: str | None = None) -> str:
    """``nbquant cache clear [kind]``: remove the entries (all, or of one kind) and say what went."""
    before = cache.size_bytes()
    removed = cache.clear(kind)
    what = f"{kind} entries" if kind else "entries"
    return f"removed {removed} {what} ({format_bytes(before - cache.size_bytes())}) from {cache.root}"
