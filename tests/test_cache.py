"""The cache across runs: a hit returns what was stored, keys follow content, a bad entry is caught, warned
about once and recomputed, processes share the cache safely, eviction is least recently used."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from onnx import parser

from nbquant.cache import Cache, CacheKey, cache_dir, clear_cache, describe_cache, make_key
from nbquant.calibration.config import ActMethod
from nbquant.errors import ConfigError


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")


def counted(value):
    """A compute function returning ``value`` and the list its calls append to."""
    calls = []

    def compute():
        calls.append(1)
        return value
    return compute, calls


def assert_same(got, want):
    """Bit-identical arrays (dtype, shape, bytes), equal dicts of them, equal JSON values."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert (got.dtype, got.shape) == (want.dtype, want.shape)
        assert got.tobytes() == want.tobytes()
    elif isinstance(want, dict) and want and all(isinstance(v, np.ndarray) for v in want.values()):
        assert sorted(got) == sorted(want)
        for name in want:
            assert_same(got[name], want[name])
    else:
        assert got == want


rng = np.random.default_rng(0)
VALUES = {
    "pixels": rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8),
    "outputs": np.array([[0.5, -0.0, np.nan, np.inf], [1e-30, -1.0, 3.25, 7.0]], np.float32),
    "fortran": np.asfortranarray(rng.standard_normal((4, 5))),
    "strided": np.arange(40, dtype=np.int64)[::3],
    "big-endian": np.arange(6, dtype=">i4").reshape(2, 3),
    "scalar": np.array(2.5),
    "empty": np.empty((0, 7), np.int16),
    "flags": np.array([True, False, True]),
    "statistics": {"conv1.min": np.float32([-1.5, 0.0]), "conv1.hist": np.arange(2048, dtype=np.int64)},
    "ranking": {"layers": [["conv1", 0.012], ["conv2", 0.5]], "metric": 0.875, "float": None, "n": 3},
    "metric": 0.1 + 0.2,
}


@pytest.mark.parametrize("name", VALUES)
def test_a_hit_returns_what_was_stored(cache, name):
    key = cache.key("test", name)
    compute, calls = counted(VALUES[name])
    assert_same(cache.get_or_compute(key, compute), VALUES[name])
    again = Cache(cache.root)  # another run: nothing in memory
    assert_same(again.get_or_compute(key, compute), VALUES[name])
    assert_same(again.get(key), VALUES[name])
    assert len(calls) == 1


def test_large_arrays_are_memory_mapped_read_only(cache):
    pixels = VALUES["pixels"]
    key = cache.key("pixels", "images")
    mapped = cache.get_or_compute(key, lambda: pixels, mmap=True)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert_same(np.asarray(mapped), pixels)
    assert isinstance(cache.get(key, mmap=True), np.memmap)


def test_a_miss_returns_the_default_and_json_tuples_come_back_as_lists(cache):
    key = cache.key("test", "tuple")
    assert cache.get(key) is None and cache.get(key, "none") == "none"
    cache.put(key, {"pair": (1, 2)})
    assert cache.get(key) == {"pair": [1, 2]}


def tiny_model(weight: float):
    return parser.parse_model(f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 2] x) => (float[1, 2] y) {{
            w = Constant <value = float[1, 2] {{{weight}, 2.0}}> ()
            y = Mul(x, w)
        }}""")


@dataclass
class Settings:
    max_drop: float = 0.01
    method: ActMethod = ActMethod.MSE
    progress: bool = field(default=True, compare=False)  # does not change results: not in the key


def test_keys_follow_content(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"a" * 10)
    b.write_bytes(b"b" * 10)
    key = make_key("outputs", tiny_model(1.0), [a, b], Settings())
    assert key == make_key("outputs", tiny_model(1.0), [a, b], Settings(progress=False))
    assert key == make_key("outputs", tiny_model(1.0), (a, b), Settings(method=ActMethod.parse("ifmr")))
    assert isinstance(key, CacheKey) and str(key).startswith("outputs/")
    different = [
        make_key("outputs", tiny_model(1.5), [a, b], Settings()),  # model bytes
        make_key("outputs", tiny_model(1.0), [b, a], Settings()),  # image list order
        make_key("outputs", tiny_model(1.0), [a], Settings()),
        make_key("outputs", tiny_model(1.0), [a, b], Settings(max_drop=0.02)),  # a setting
        make_key("outputs", tiny_model(1.0), [a, b], Settings(method=ActMethod.MINMAX)),
        make_key("metric", tiny_model(1.0), [a, b], Settings()),  # the kind
    ]
    assert len({key, *different}) == 1 + len(different)
    a.write_bytes(b"c" * 10)  # same size, new content: a small file keys on its bytes
    assert make_key("outputs", tiny_model(1.0), [a, b], Settings()) != key


def test_key_parts_are_canonical():
    assert make_key("k", {"a": 1, "b": [1, 2]}) == make_key("k", {"b": (1, 2), "a": 1})
    assert make_key("k", frozenset({"conv1", "conv2"})) == make_key("k", {"conv2", "conv1"})
    assert make_key("k", np.int64(3), np.float32(0.5)) == make_key("k", 3, 0.5)
    assert make_key("k", 1) != make_key("k", 1.0) != make_key("k", "1") != make_key("k", True)
    assert make_key("k", "ab", "c") != make_key("k", "a", "bc")
    assert make_key("k", np.zeros(4, np.float32)) != make_key("k", np.zeros(4, np.int32))
    assert make_key("k", np.zeros((2, 2))) != make_key("k", np.zeros(4))
    transposed = np.arange(6).reshape(2, 3).T
    assert make_key("k", transposed) == make_key("k", transposed.copy(order="C"))
    assert make_key("k", np.array(2.5)) != make_key("k", np.array([2.5]))


def test_a_large_file_keys_on_size_and_mtime(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(bytes(100_000))
    key = make_key("k", model)
    os.utime(model, ns=(1, 1))
    assert make_key("k", model) != key
    assert make_key("k", tmp_path / "missing.onnx") != make_key("k", tmp_path / "other.onnx")


def test_keys_reject_what_they_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="cannot hold a object"):
        make_key("k", object())
    with pytest.raises(TypeError, match="folder"):
        make_key("k", tmp_path)
    with pytest.raises(ConfigError, match="cache kind must be"):
        make_key("Bad Kind", 1)


def test_values_the_cache_cannot_hold_raise(cache):
    with pytest.raises(TypeError, match="plain dtypes"):
        cache.put(cache.key("k", 1), np.array([object()]))
    with pytest.raises(TypeError, match="JSON values"):
        cache.put(cache.key("k", 2), {1, 2})


def spoil(cache: Cache, key: CacheKey, how: str) -> str:
    """Damage the entry of ``key`` in one way; returns the reason the warning should give."""
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
        return "is truncated"
    if how == "flipped":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(data)
        return "fails its checksum"
    if how == "renamed":
        other = cache.key("test", "another key")
        cache.put(other, np.zeros(10))
        os.replace(cache.path(other), path)
        return "not this key"
    if how == "foreign":
        path.write_bytes(b"some other program's file")
        return "is not an nbquant cache entry"
    assert how == "old format"
    path.write_bytes(bytes(data).replace(b'"format": 1', b'"format": 0'))
    return "format version 0, not 1"


@pytest.mark.parametrize("how", ["truncated", "flipped", "renamed", "foreign", "old format"])
def test_a_bad_entry_is_warned_about_once_removed_and_recomputed(cache, caplog, how):
    value = np.arange(5000, dtype=np.float32)
    key = cache.key("test", "value")
    cache.put(key, value)
    reason = spoil(cache, key, how)
    compute, calls = counted(value)
    with caplog.at_level(logging.WARNING, logger="nbquant.cache"):
        assert_same(cache.get_or_compute(key, compute), value)
        assert_same(cache.get_or_compute(key, compute), value)
    assert len(calls) == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert cache.path(key).name in warnings[0] and reason in warnings[0]


def compute_in_process(root, counter, name, barrier):
    """One of several processes computing ``name`` at once: records its call, checks what it gets."""
    cache = Cache(root)

    def compute():
        with open(counter, "a") as handle:
            handle.write(f"{name}\n")
        time.sleep(0.3)  # long enough for the others to arrive and wait
        return np.full(100_000, ord(name), np.uint8)
    barrier.wait()
    value = cache.get_or_compute(cache.key("test", name), compute)
    if value.shape != (100_000,) or not (value == ord(name)).all():
        raise SystemExit(1)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_processes_compute_each_key_once(tmp_path):
    context = multiprocessing.get_context("fork")
    names = ["a", "b"] * 3
    barrier = context.Barrier(len(names))
    counter = tmp_path / "calls.txt"
    workers = [context.Process(target=compute_in_process, args=(tmp_path / "cache", counter, name, barrier))
               for name in names]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0] * len(names)
    assert sorted(counter.read_text().split()) == ["a", "b"]
    cache = Cache(tmp_path / "cache")
    assert sorted(cache.entries()["kind"]) == ["test", "test"]
    assert not list(cache.directory.rglob("*.lock")) and not list(cache.directory.rglob("*.part"))


def test_concurrent_writers_and_readers_leave_a_readable_cache(cache, caplog):
    shared, value = cache.key("test", "shared"), np.arange(50_000, dtype=np.int32)
    own = [cache.key("test", f"own {i}") for i in range(3)]
    barrier, seen = threading.Barrier(len(own) + 1), []

    def write(key):
        barrier.wait()
        for _ in range(15):
            cache.put(shared, value)
            cache.put(key, value + 1)

    def read():
        barrier.wait()
        for _ in range(60):
            got = cache.get(shared)
            seen.append(got is None or got.tobytes() == value.tobytes())

    threads = [threading.Thread(target=write, args=(key,)) for key in own] + [threading.Thread(target=read)]
    with caplog.at_level(logging.WARNING, logger="nbquant.cache"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(seen) and not caplog.records
    assert_same(cache.get(shared), value)
    for key in own:
        assert_same(cache.get(key), value + 1)
    assert not list(cache.directory.rglob("*.part"))


def test_threads_compute_a_key_once(cache):
    compute, calls = counted(np.ones(3))
    barrier = threading.Barrier(4)

    def slow():
        time.sleep(0.2)
        return compute()

    def run():
        barrier.wait()
        assert_same(cache.get_or_compute(cache.key("test", "slow"), slow), np.ones(3))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


def test_a_failed_computation_stores_nothing_and_releases_the_key(cache):
    key = cache.key("test", "fails")

    def fail():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        cache.get_or_compute(key, fail)
    assert cache.get(key) is None and cache.get_or_compute(key, lambda: 7) == 7


def test_over_the_size_limit_the_least_recently_used_go(tmp_path):
    block = np.zeros(10_000, np.uint8)
    probe = Cache(tmp_path / "probe")
    probe.put(probe.key("block", "probe"), block)
    entry_bytes = probe.size_bytes()  # header, payload and trailer
    cache = Cache(tmp_path / "cache", max_bytes=int(2.5 * entry_bytes))
    a, b, c = (cache.key("block", name) for name in "abc")
    cache.put(a, block)
    cache.put(b, block)
    assert cache.get(a) is not None  # a is now used more recently than b
    cache.put(c, block)
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None
    assert cache.size_bytes() <= cache.max_bytes
    assert not cache.put(cache.key("block", "huge"), np.zeros(3 * entry_bytes, np.uint8))  # larger than the cache
    assert cache.prune(0) == 2 and cache.size_bytes() == 0


def test_a_disabled_cache_never_writes(tmp_path):
    cache = Cache(tmp_path / "cache", enabled=False)
    key = cache.key("test", 1)
    compute, calls = counted([1, 2])
    assert cache.get_or_compute(key, compute) == [1, 2] and cache.get_or_compute(key, compute) == [1, 2]
    assert len(calls) == 2
    assert cache.put(key, [1]) is False and cache.get(key) is None
    assert cache.clear() == 0 and cache.prune(0) == 0 and cache.entries().empty
    assert not (tmp_path / "cache").exists()


def test_the_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("NBQUANT_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert Cache().root == tmp_path / "home" / ".cache" / "nbquant"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "nbquant"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Cache().root == tmp_path / "xdg" / "nbquant"
    monkeypatch.setenv("NBQUANT_CACHE_DIR", str(tmp_path / "mine"))
    assert Cache().root == tmp_path / "mine"
    assert Cache(tmp_path / "given").root == tmp_path / "given"


def test_entries_clear_and_what_the_command_prints(cache):
    cache.put(cache.key("pixels", "a"), VALUES["pixels"])
    cache.put(cache.key("metric", "a"), 0.5)
    cache.put(cache.key("metric", "b"), 0.25)
    unrelated = cache.directory / "metric" / "notes.txt"
    unrelated.write_text("not ours")
    stale, fresh = cache.directory / "metric" / ".abc.x.part", cache.directory / "metric" / ".def.y.part"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200,) * 2)

    frame = cache.entries()
    assert list(frame.columns) == ["kind", "key", "bytes", "last_used", "created", "path"]
    assert sorted(frame["kind"]) == ["metric", "metric", "pixels"]
    assert frame["bytes"].sum() == cache.size_bytes() and frame["created"].notna().all()
    text = describe_cache(cache)
    assert str(cache.root) in text and "pixels" in text and "metric" in text

    assert cache.prune() == 0 and not stale.exists() and fresh.exists()
    assert clear_cache(cache, "metric").startswith("removed 2 metric entries")
    assert list(cache.entries()["kind"]) == ["pixels"]
    assert cache.clear() == 1 and cache.size_bytes() == 0 and not fresh.exists()
    assert unrelated.read_text() == "not ours"
    assert describe_cache(cache).endswith("no entries")
    with pytest.raises(ConfigError, match="cache kind"):
        cache.clear("../x")


def test_a_cache_says_what_it_is(tmp_path):
    assert repr(Cache(tmp_path, max_bytes=10)) == f"Cache(root={str(tmp_path)!r}, max_bytes=10, enabled=True)"
    with pytest.raises(ConfigError, match="max_bytes must be an int >= 0"):
        Cache(tmp_path, max_bytes=-1)
    assert isinstance(Cache(tmp_path).path(make_key("k", 1)), Path)
