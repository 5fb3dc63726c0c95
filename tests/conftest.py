"""Shared fixtures: the real model and images named by NBQUANT_MODEL / NBQUANT_DATA."""

from __future__ import annotations

import pytest

from nbquant import settings
from nbquant.datasets import ImageDataset


@pytest.fixture(scope="session")
def real_data() -> ImageDataset:
    """The real image folder as an ImageDataset; skips when NBQUANT_DATA does not point at one."""
    path = settings.data_dir()
    if not path.is_dir():
        pytest.skip(f"real images not found at {path}; set NBQUANT_DATA to the image folder")
    return ImageDataset(path)


@pytest.fixture(scope="session")
def real_model_path():
    """Path of the real ONNX model; skips when NBQUANT_MODEL does not point at one."""
    try:
        path = settings.model_path()
    except Exception as exc:  # a folder without exactly one .onnx file
        pytest.skip(f"real model unusable: {exc}")
    if not path.is_file():
        pytest.skip(f"real model not found at {path}; set NBQUANT_MODEL to the .onnx file")
    return path
