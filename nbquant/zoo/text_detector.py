"""PP-OCRv4's text detector (DBNet-style) as nbquant takes it: the ONNX file that the PyPI package
``rapidocr-onnxruntime`` (Apache-2.0) ships, with its preprocessing and map threshold recorded.

Input ``x`` [N, 3, H, W] with H and W free (multiples of 32), BGR, ``(x / 255 - 0.5) / 0.5``; output
[N, 1, H, W], the text probability after a sigmoid, which the package binarizes at 0.3 before finding
boxes. RapidOCR resizes each photo to multiples of 32 (stretching it a little); nbquant letterboxes
instead (whole photo, aspect kept, padded to a multiple of 32), so photos of any shape share one batch.
The file is read out of the installed package without importing it: the package imports OpenCV,
which nbquant does not need.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import onnx

from ..data.letterbox import format_size, parse_size
from ..errors import ModelError
from ..files import save_model as save_onnx

PACKAGE = "rapidocr-onnxruntime"
MODEL_FILE = "ch_PP-OCRv4_det_infer.onnx"
VARIANT = "pp-ocrv4-det"
LETTERBOX = 640  # the box each photo is scaled to fit (RapidOCR's default scales the short side to 736)
PAD_MULTIPLE = 32  # the network downsamples 5 times
MAP_THRESHOLD = 0.3  # RapidOCR's det thresh: the probability map is binarized here
INSTALL_HINT = f"pip install 'nbquant[ocr]' (or pip install {PACKAGE})"


def find_text_detector() -> Path:
    """Path of the PP-OCRv4 detector ONNX file that the ``rapidocr-onnxruntime`` package installed."""
    try:
        files = importlib.metadata.distribution(PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the PP-OCRv4 text detector comes from the package {PACKAGE!r}, which is not installed: "
                         f"{INSTALL_HINT}") from None
    paths = [Path(f.locate()) for f in files if f.name == MODEL_FILE]
    if len(paths) != 1 or not paths[0].is_file():
        raise ModelError(f"package {PACKAGE!r} should hold one {MODEL_FILE}, found {[str(p) for p in paths]}: "
                         f"reinstall it with pip install --force-reinstall {PACKAGE}")
    return paths[0]


def preprocess_metadata(letterbox=LETTERBOX) -> dict[str, str]:
    """The detector's preprocessing as nbquant reads it from ``metadata_props`` (see
    :func:`nbquant.data.binding.resolve_preprocess`), and its map threshold."""
    return {
        "nbquant.preprocess.letterbox": format_size(parse_size(letterbox)),
        "nbquant.preprocess.pad_multiple": str(PAD_MULTIPLE),
        "nbquant.preprocess.mean": "0.5,0.5,0.5",
        "nbquant.preprocess.std": "0.5,0.5,0.5",
        "nbquant.preprocess.channel_order": "BGR",
        "nbquant.preprocess.layout": "NCHW",
        "nbquant.preprocess.interpolation": "bilinear",
        "nbquant.map_threshold": str(MAP_THRESHOLD),
    }


def build_text_detector(letterbox=LETTERBOX) -> onnx.ModelProto:
    """The installed PP-OCRv4 detector with its preprocessing (letterbox ``letterbox``: 640, or "640x480"
    width x height) and map threshold in its metadata."""
    path = find_text_detector()
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise ModelError(f"{path} is not a readable ONNX model ({exc}): reinstall {PACKAGE}") from None
    meta = {"nbquant.zoo.variant": VARIANT,
            "nbquant.zoo.source": f"{PACKAGE} {importlib.metadata.version(PACKAGE)} {MODEL_FILE}",
            **preprocess_metadata(letterbox)}
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.graph.name = "pp_ocrv4_det"  # the export says "Model from PaddlePaddle."
    return model


def save_text_detector(path: str | os.PathLike, letterbox=LETTERBOX) -> Path:
    """Write the detector (see :func:`build_text_detector`) to ``path`` atomically."""
    return save_onnx(build_text_detector(letterbox), Path(path))
