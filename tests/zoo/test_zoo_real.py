"""The EfficientNet-Lite builder against the shared model: same logits on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from nbquant.errors import ModelError
from nbquant.zoo import build_efficientnet_lite, find_weights

pytestmark = pytest.mark.real


def _run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def _preprocess(path: Path, resize: int = 256, crop: int = 224) -> np.ndarray:
    """Short side to ``resize`` (bilinear), center crop, scale to [0, 1], normalize, CHW."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    short = min(w, h)
    size = (resize, int(h * resize / short)) if w == short else (int(w * resize / short), resize)
    image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    top, left = int(round((h - crop) / 2)), int(round((w - crop) / 2))
    x = np.asarray(image.crop((left, top, left + crop, top + crop)), np.float32) / 255
    return ((x - 0.498) / 0.502).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def shared_batch(real_model_path, real_data):
    """16 real images spread over the sorted list and the shared lite0 model's logits on them."""
    files = real_data.files
    x = np.stack([_preprocess(f) for f in files[:: max(1, len(files) // 16)][:16]])
    session = ort.InferenceSession(str(real_model_path), providers=["CPUExecutionProvider"])
    return x, session.run(["logits"], {"input": x})[0]


@pytest.mark.parametrize("fold_bn", [False, True])
def test_lite0_matches_shared_model(shared_batch, fold_bn):
    try:
        find_weights("lite0")
    except ModelError as exc:
        pytest.skip(f"weights not installed ({exc})")
    x, reference = shared_batch
    logits = _run(build_efficientnet_lite("lite0", fold_bn=fold_bn), x)
    assert np.abs(logits - reference).max() <= 1e-3
    np.testing.assert_array_equal(logits.argmax(1), reference.argmax(1))
