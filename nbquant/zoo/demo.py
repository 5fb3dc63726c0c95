"""What ``nbquant demo`` runs on, found or made on a fresh machine: a real model and real photos.

The model is ``$NBQUANT_MODEL``, the one in model/, or EfficientNet-Lite0 built from the zoo
weights; the photos are ``$NBQUANT_DATA``, data/images or data/, or scikit-image's sample
photos (unlabeled). The command line (``cli.cmd_demo``) runs the auto calibration on them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import settings
from ..data.images import IMAGE_EXTENSIONS, ImageDataset
from ..errors import DataError
from .efficientnet_lite import save_model

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path("model/efficientnet_lite0.onnx")


def demo_model() -> Path:
    """``$NBQUANT_MODEL`` or the one model in model/; else build EfficientNet-Lite0 there."""
    try:
        path = settings.model_path()
        if path.is_file():
            return path
    except Exception:  # a model/ folder without exactly one model: build ours beside them
        pass
    target = Path(os.environ.get("NBQUANT_MODEL", DEFAULT_MODEL))
    target = target / DEFAULT_MODEL.name if target.suffix != ".onnx" else target
    return save_model("lite0", target)


def _has_images(folder: Path) -> bool:
    """Whether ``folder`` holds at least one image file, at any depth."""
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*"))


def demo_data() -> tuple[ImageDataset, bool]:
    """(dataset, labeled): ``$NBQUANT_DATA``, else data/images or data/ when they hold images,
    else the sample photos that ship inside scikit-image (no labels: a fidelity demo)."""
    if "NBQUANT_DATA" in os.environ:
        data = ImageDataset(settings.data_dir())
        return data, data.labeled
    for folder in (Path("data/images"), Path("data")):
        if _has_images(folder):
            data = ImageDataset(folder)
            return data, data.labeled
    try:
        import skimage
    except ImportError:
        raise DataError("no images in data/images or data/, and scikit-image (whose sample photos the demo "
                        "falls back to) is not installed: put labeled images in data/images, or pip install "
                        "'nbquant[demo]'") from None
    return ImageDataset(Path(skimage.__file__).parent / "data", layout="unlabeled"), False
