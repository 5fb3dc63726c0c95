"""Where nbquant finds the user's model and images: environment settings with defaults."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelError

DEFAULT_DATA = "data"
DEFAULT_MODEL = "model"


def data_dir() -> Path:
    """Image folder from ``NBQUANT_DATA`` (default ``data/``)."""
    return Path(os.environ.get("NBQUANT_DATA", DEFAULT_DATA))


def model_path() -> Path:
    """Model from ``NBQUANT_MODEL`` (default ``model/``); a folder means the one .onnx inside."""
    path = Path(os.environ.get("NBQUANT_MODEL", DEFAULT_MODEL))
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if len(found) != 1:
            raise ModelError(
                f"{path} holds {len(found)} .onnx files; set NBQUANT_MODEL to one model file"
            )
        return found[0]
    return path
