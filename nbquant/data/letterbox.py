"""Keep-aspect resizing with padding ("letterbox"): any photo into one fixed canvas, so models whose input
size is free (detectors, segmenters) see whole images, undistorted, in batches of one shape.

The image is scaled to fit a box (height, width) and placed at the top-left corner of a canvas the box's
size rounded up to a multiple (e.g. 32 for a network that downsamples 5 times); the rest is padding.
Top-left placement keeps coordinates simple: a point of the model's map at (x, y) is the photo's
(x / scale, y / scale). :func:`unletterbox` maps a map or the pixels back onto the photo.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..options import check_int


class Placement(NamedTuple):
    """Where a photo lands on the canvas: its scale and its size there (width, height) from the top-left."""

    scale: float
    width: int
    height: int


def parse_size(value) -> tuple[int, int]:
    """(height, width) of a box written ``"W"`` (square), ``"WxH"`` (like image sizes: width first), an int,
    or a (height, width) pair.

    >>> parse_size("640"), parse_size("640x480"), parse_size(320), parse_size((480, 640))
    ((640, 640), (480, 640), (320, 320), (480, 640))
    """
    if isinstance(value, str):
        parts = value.lower().split("x")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2):
            raise ConfigError(f"letterbox must be a size like 640 or 640x480 (width x height), got {value!r}")
        value = numbers[0] if len(numbers) == 1 else (numbers[1], numbers[0])
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"letterbox must be a size like 640 or 640x480 (width x height), got {value!r}")
    return check_int("letterbox height", value[0]), check_int("letterbox width", value[1])


def format_size(box: tuple[int, int]) -> str:
    """``"W"`` for a square box, else ``"WxH"`` (what :func:`parse_size` reads)."""
    height, width = box
    return str(width) if height == width else f"{width}x{height}"


def round_up(size: int, multiple: int) -> int:
    """``size`` rounded up to a multiple of ``multiple``: 600 to 32 is 608."""
    return -(-size // multiple) * multiple


def canvas_size(box: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(height, width) of the canvas: the box rounded up to ``multiple``."""
    return round_up(box[0], multiple), round_up(box[1], multiple)


def placement(size: tuple[int, int], box: tuple[int, int]) -> Placement:
    """Where a photo of ``size`` (width, height, as PIL gives it) lands in ``box`` (height, width): scaled to
    fit, aspect kept, each side at least one pixel.

    >>> placement((1000, 500), (320, 320))
    Placement(scale=0.32, width=320, height=160)
    """
    width, height = size
    scale = min(box[0] / height, box[1] / width)
    return Placement(scale, max(1, min(box[1], math.floor(width * scale + 0.5))),
                     max(1, min(box[0], math.floor(height * scale + 0.5))))


def letterbox_pixels(img: Image.Image, box: tuple[int, int], multiple: int = 1, pad_value: int = 0,
                     resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    """``img`` (RGB) scaled to fit ``box`` (height, width), on a canvas the box rounded up to ``multiple``,
    padded with ``pad_value``: uint8 [height, width, 3]."""
    place = placement(img.size, box)
    if (place.width, place.height) != img.size:
        img = img.resize((place.width, place.height), resample)
    canvas = np.full(canvas_size(box, multiple) + (3,), pad_value, np.uint8)
    canvas[:place.height, :place.width] = np.asarray(img, np.uint8)
    return canvas


def unletterbox(array: np.ndarray, size: tuple[int, int], box: tuple[int, int], multiple: int = 1,
                resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    """The part of a canvas-sized ``array`` ([H, W] map or [H, W, C] pixels; or a map at a fraction of the
    canvas, e.g. a stride-4 output) that covers the photo, resized back to the photo's ``size`` (width,
    height). Float maps come back as float32, pixels as uint8."""
    array = np.asarray(array)
    place = placement(size, box)
    fraction = array.shape[0] / canvas_size(box, multiple)[0]
    rows, cols = max(1, round(place.height * fraction)), max(1, round(place.width * fraction))
    region = array[:rows, :cols]
    if region.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(region)).resize(size, resample))
    channels = region[..., None] if region.ndim == 2 else region
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c], np.float32)).resize(size, resample))
              for c in range(channels.shape[-1])]
    out = np.stack(planes, axis=-1)
    return out[..., 0] if region.ndim == 2 else out
