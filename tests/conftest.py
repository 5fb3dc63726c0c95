"""Shared fixtures: the real model and images named by NBQUANT_MODEL / NBQUANT_DATA.

Tests that use them live in ``*_real.py`` files marked ``real``; unit tests, on synthetic graphs only,
live in the other files, so ``-m "not real"`` and ``*_real.py`` name the same tests (checked at collection).
"""

from __future__ import annotations

import os

import pytest

from nbquant import settings
from nbquant.data.images import ImageDataset

REAL_FIXTURES = frozenset({"real_data", "real_model_path", "real_calibration"})


def real_layout_errors(items) -> list[str]:
    """What breaks the layout: a real fixture or marker outside a ``*_real.py`` file, or such a file
    without ``pytestmark = pytest.mark.real``. Browser tests (tests/browser) are real by nature."""
    errors = []
    for item in items:
        if item.get_closest_marker("browser"):
            continue
        in_real_file = item.path.name.endswith("_real.py")
        marked = item.get_closest_marker("real") is not None
        used = sorted(REAL_FIXTURES & set(getattr(item, "fixturenames", ())))
        if used and not in_real_file:
            errors.append(f"{item.nodeid} uses {', '.join(used)}: move it to a *_real.py file")
        elif marked and not in_real_file:
            errors.append(f"{item.nodeid} is marked real: move it to a *_real.py file")
        elif in_real_file and not marked:
            errors.append(f"{item.nodeid} is in a *_real.py file: add pytestmark = pytest.mark.real")
    return errors


def pytest_collection_modifyitems(config, items):
    errors = real_layout_errors(items)
    if errors:
        raise pytest.UsageError("real-data tests must live in *_real.py files marked real:\n  "
                                + "\n  ".join(errors))


def _missing(reason: str):
    """Skip a real-data test, or fail it where CI demands the real data (NBQUANT_REQUIRE_REAL=1)."""
    if os.environ.get("NBQUANT_REQUIRE_REAL") == "1":
        pytest.fail(f"NBQUANT_REQUIRE_REAL=1 but {reason}")
    pytest.skip(reason)


def need_text_packages() -> None:
    """Skip (fail where CI demands the real data) unless the MiniLM weights package and the readers
    its builder needs (the text extra) are installed."""
    for module in ("all_minilm_l6_v2", "tokenizers", "safetensors"):
        try:
            __import__(module)
        except ImportError:
            _missing(f"{module} is not installed; scripts/setup.sh dev,text")


def need_ocr_package() -> None:
    """Skip (fail where CI demands the real data) unless rapidocr-onnxruntime, whose text detector the zoo
    reads (the ocr extra), is installed."""
    from nbquant.errors import ModelError
    from nbquant.zoo import find_text_detector
    try:
        find_text_detector()
    except ModelError as exc:
        _missing(f"{exc}; scripts/setup.sh dev,ocr")


@pytest.fixture(scope="session")
def real_data() -> ImageDataset:
    """The real image folder as an ImageDataset; skips when NBQUANT_DATA does not point at one."""
    path = settings.data_dir()
    if not path.is_dir():
        _missing(f"real images not found at {path}; set NBQUANT_DATA to the image folder")
    return ImageDataset(path)


@pytest.fixture(scope="session")
def real_model_path():
    """Path of the real ONNX model; skips when NBQUANT_MODEL does not point at one."""
    try:
        path = settings.model_path()
    except Exception as exc:  # a folder without exactly one .onnx file
        _missing(f"real model unusable: {exc}")
    if not path.is_file():
        _missing(f"real model not found at {path}; set NBQUANT_MODEL to the .onnx file")
    return path


@pytest.fixture(scope="session")
def real_calibration(real_model_path, real_data, tmp_path_factory):
    """One default calibration run of the real model on its first 100 images, written to disk."""
    from nbquant.calibration.run import calibrate
    save_dir = tmp_path_factory.mktemp("real_run")
    return calibrate(real_model_path, real_data, save_dir=save_dir, progress=False)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Nothing a test runs reads or fills the user's cache (see nbquant.cache): session fixtures get one
    of their own."""
    before = os.environ.get("NBQUANT_CACHE_DIR")
    os.environ["NBQUANT_CACHE_DIR"] = str(tmp_path_factory.mktemp("session_cache"))
    yield
    if before is None:
        os.environ.pop("NBQUANT_CACHE_DIR", None)
    else:
        os.environ["NBQUANT_CACHE_DIR"] = before


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory, monkeypatch):
    """Each test starts with an empty cache, so it sees the cold path unless it warms a cache itself."""
    monkeypatch.setenv("NBQUANT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
