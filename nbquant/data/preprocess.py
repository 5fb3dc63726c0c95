"""Image preprocessing as an explicit, validated config: resize, center crop (or letterbox), normalize.

Matches torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` + ``ToTensor`` +
``Normalize(mean, std)`` on PIL images, so accuracy numbers agree with PyTorch references.
With ``letterbox`` the whole image is scaled to fit a box instead, aspect kept, and padded to a
multiple (:mod:`.letterbox`), for models whose input size is free (detectors, segmenters).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..options import check_int, check_number, check_positive
from .letterbox import canvas_size, format_size, letterbox_pixels, parse_size


class ChannelOrder(str, Enum):
    """Order of the colour channels the model expects."""

    RGB = "RGB"
    BGR = "BGR"


class Layout(str, Enum):
    """Axis order of the model input: channels first (NCHW) or last (NHWC)."""

    NCHW = "NCHW"
    NHWC = "NHWC"


class Interpolation(str, Enum):
    """PIL resampling filter used for the short-side resize."""

    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


class Rounding(str, Enum):
    """How the long side is rounded in the short-side resize.

    FLOOR is torchvision's ``int(long * resize / short)``; ROUND is round-half-up, which
    reproduces the shared EfficientNet-Lite0's documented top-1 (0.886, vs 0.882 with FLOOR).
    """

    FLOOR = "floor"
    ROUND = "round"


_PIL_FILTERS = {
    Interpolation.BILINEAR: Image.Resampling.BILINEAR,
    Interpolation.BICUBIC: Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class Preprocess:
    """How one image becomes one model input row; validated on creation.

    ``mean`` and ``std`` are listed in the output channel order (``channel_order``)
    and apply after multiplying pixels (0..255) by ``scale``. Defaults equal the "half" preset.
    ``letterbox`` (height, width; ``640`` or ``"640x480"``, width first, also do) replaces resize and crop:
    the image is scaled to fit that box, aspect kept, and padded with ``pad_value`` at the bottom and right
    to the box rounded up to ``pad_multiple``.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.498, 0.498, 0.498)
    std: tuple[float, float, float] = (0.502, 0.502, 0.502)
    scale: float = 1 / 255
    channel_order: ChannelOrder = ChannelOrder.RGB
    layout: Layout = Layout.NCHW
    interpolation: Interpolation = Interpolation.BILINEAR
    resize_rounding: Rounding = Rounding.ROUND
    letterbox: tuple[int, int] | None = None
    pad_multiple: int = 1
    pad_value: int = 0

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))
        if self.crop > self.resize:
            raise ConfigError(
                f"crop must be <= resize, got crop={self.crop} resize={self.resize}"
            )
        object.__setattr__(self, "mean", _to_triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _to_triple("std", self.std, positive=True))
        object.__setattr__(self, "scale", check_positive("scale", self.scale))
        for name, enum in (
            ("channel_order", ChannelOrder),
            ("layout", Layout),
            ("interpolation", Interpolation),
            ("resize_rounding", Rounding),
        ):
            object.__setattr__(self, name, _to_enum(name, getattr(self, name), enum))
        if self.letterbox is not None:
            object.__setattr__(self, "letterbox", parse_size(self.letterbox))
        object.__setattr__(self, "pad_multiple", check_int("pad_multiple", self.pad_multiple))
        if self.pad_multiple > 1 and self.letterbox is None:
            raise ConfigError(f"pad_multiple {self.pad_multiple} pads a letterbox; set letterbox too")
        value = check_int("pad_value", self.pad_value, minimum=0)
        if value > 255:
            raise ConfigError(f"pad_value must be a pixel value 0..255, got {self.pad_value!r}")
        object.__setattr__(self, "pad_value", value)

    def describe(self) -> str:
        """One line for logs and records.

        >>> Preprocess().describe()
        'resize 256 (round, bilinear), crop 224, RGB NCHW, (x * 0.00392 - 0.498) / 0.502'
        """
        mean = ",".join(f"{m:g}" for m in sorted(set(self.mean))) if len(set(self.mean)) == 1 else \
            ",".join(f"{m:g}" for m in self.mean)
        std = ",".join(f"{v:g}" for v in sorted(set(self.std))) if len(set(self.std)) == 1 else \
            ",".join(f"{v:g}" for v in self.std)
        if self.letterbox is not None:
            padded = f", padded to {self.width}x{self.height}" if self.image_size != self.letterbox else ""
            sizes = (f"letterbox {format_size(self.letterbox)} ({self.interpolation.value}, keep aspect{padded}, "
                     f"pad {self.pad_value})")
        else:
            sizes = f"resize {self.resize} ({self.resize_rounding.value}, {self.interpolation.value}), crop {self.crop}"
        return f"{sizes}, {self.channel_order.value} {self.layout.value}, (x * {self.scale:.3g} - {mean}) / {std}"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every preprocessed image: the crop, or the letterbox's canvas."""
        if self.letterbox is not None:
            return canvas_size(self.letterbox, self.pad_multiple)
        return (self.crop, self.crop)

    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    @property
    def image_bytes(self) -> int:
        """Bytes of one image's uint8 RGB pixels (what the pixel caches keep)."""
        return self.height * self.width * 3

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image: (C, H, W) for NCHW, (H, W, C) for NHWC."""
        if self.layout is Layout.NCHW:
            return (3, self.height, self.width)
        return (self.height, self.width, 3)


def _to_triple(name: str, value: object, positive: bool) -> tuple[float, float, float]:
    """Turn a sequence of three finite numbers into a float tuple, or raise ConfigError."""
    kind = "positive numbers" if positive else "finite numbers"
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, str) or len(value) != 3:
        raise ConfigError(f"{name} must be 3 {kind} (one per channel), got {value!r}")
    try:
        return tuple(check_positive(name, v) if positive else check_number(name, v, -math.inf)
                     for v in value)  # type: ignore[return-value]
    except ConfigError:
        raise ConfigError(f"{name} must be 3 {kind} (one per channel), got {value!r}") from None


def _to_enum(name: str, value: object, enum: type[Enum]) -> Enum:
    """Accept an enum member or its value (case-insensitive string) for CLI/notebook use."""
    if isinstance(value, enum):
        return value
    for member in enum:
        if isinstance(value, str) and value.lower() == member.value.lower():
            return member
    valid = ", ".join(m.value for m in enum)
    raise ConfigError(f"{name} must be one of {valid}, got {value!r}")


PRESETS: dict[str, Preprocess] = {
    # torchvision / timm conventions: long side truncated like torchvision's Resize
    "imagenet": Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                           resize_rounding=Rounding.FLOOR),
    # the shared EfficientNet-Lite0's scaling; ROUND reproduces its documented top-1 0.886
    "half": Preprocess(mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502),
                       resize_rounding=Rounding.ROUND),
    "inception": Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                            resize_rounding=Rounding.FLOOR),
}
DEFAULT_PRESET = "half"


def get_preset(name: str) -> Preprocess:
    """The named preprocessing preset; unknown names raise ConfigError listing the valid ones."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(PRESETS))
        message = f"unknown preprocessing preset {name!r}; valid presets: {valid}"
        raise ConfigError(message) from None


def resized_long_side(short: int, long: int, size: int, rounding: Rounding) -> int:
    """Long side once ``short`` becomes ``size``: 640x427 to 256 is 383 (FLOOR), 384 (ROUND)."""
    exact = long * size / short
    return int(exact) if rounding is Rounding.FLOOR else math.floor(exact + 0.5)


def resize_short_side(img: Image.Image, size: int, interpolation: Interpolation,
                      rounding: Rounding = Rounding.FLOOR) -> Image.Image:
    """Resize so the short side is ``size``, keeping the aspect ratio (long side per rounding)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = resized_long_side(short, long, size, rounding)
    new_size = (size, new_long) if w <= h else (new_long, size)
    return img.resize(new_size, _PIL_FILTERS[interpolation])


def center_crop(img: Image.Image, crop: int) -> Image.Image:
    """Central ``crop`` x ``crop`` square, offsets rounded like torchvision's CenterCrop."""
    w, h = img.size
    top = int(round((h - crop) / 2.0))
    left = int(round((w - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def preprocess_image(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """One PIL image to a float32 array shaped ``pre.output_shape``.

    Example: a 4x4 pure-red image with resize=crop=2, scale=1/255, mean 0.5, std 0.5
    gives channel R = (1 - 0.5) / 0.5 = 1.0 and channels G, B = (0 - 0.5) / 0.5 = -1.0.
    """
    return normalize(crop_pixels(img, pre), pre)


def crop_pixels(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """The resized, center-cropped (or letterboxed) RGB pixels as uint8 [height, width, 3]: 4x smaller to
    keep than the model input, which :func:`normalize` computes from them exactly."""
    if pre.letterbox is not None:
        return letterbox_pixels(img.convert("RGB"), pre.letterbox, pre.pad_multiple, pre.pad_value,
                                _PIL_FILTERS[pre.interpolation])
    img = resize_short_side(img.convert("RGB"), pre.resize, pre.interpolation, pre.resize_rounding)
    return np.asarray(center_crop(img, pre.crop), dtype=np.uint8)


def normalize(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 RGB pixels [..., H, W, 3] to the model input: channel order, scale, mean/std, layout.

    Through a table of the 256 values of each channel: the same float32 arithmetic as computing every
    pixel, in one pass instead of five.
    """
    pixels = np.asarray(pixels, dtype=np.uint8)
    table = _normalize_table(pre)
    nchw = pre.layout is Layout.NCHW
    shape = pixels.shape[:-3] + ((3,) + pixels.shape[-3:-1] if nchw else pixels.shape[-3:])
    out = np.empty(shape, np.float32)
    for c in range(3):
        source = 2 - c if pre.channel_order is ChannelOrder.BGR else c
        np.take(table[c], pixels[..., source], out=out[..., c, :, :] if nchw else out[..., c])
    return out


def _normalize_table(pre: Preprocess) -> np.ndarray:
    """[3, 256] float32: each output channel's value for each pixel value, as ``normalize`` defines it."""
    values = np.arange(256, dtype=np.float32)[None, :] * np.float32(pre.scale) \
        - np.asarray(pre.mean, dtype=np.float32)[:, None]
    values /= np.asarray(pre.std, dtype=np.float32)[:, None]
    return values


CROP_RATIO = 0.875  # the ImageNet convention: crop 224 of a short side resized to 256


def resize_for_crop(crop: int) -> int:
    """The short-side resize that goes with a center crop at the ImageNet ratio 0.875.

    >>> resize_for_crop(224), resize_for_crop(240), resize_for_crop(260)
    (256, 274, 297)
    """
    return int(round(crop / CROP_RATIO))


def with_sizes(pre: Preprocess, resize: int | None = None, crop: int | None = None,
               layout: str | Layout | None = None, letterbox=None, pad_multiple: int | None = None) -> Preprocess:
    """``pre`` with the sizes and layout given (None keeps ``pre``'s); a crop given without a resize
    brings the resize of :func:`resize_for_crop`; a crop or resize turns a letterbox off, a letterbox
    turns the crop off.

    >>> pre = with_sizes(Preprocess(), crop=200)
    >>> pre.crop, pre.resize, with_sizes(pre, resize=210).resize
    (200, 229, 210)
    >>> with_sizes(pre, letterbox="640x480", pad_multiple=32).output_shape
    (3, 480, 640)
    """
    if letterbox is not None and (crop is not None or resize is not None):
        raise ConfigError("crop/resize and letterbox exclude each other: a crop keeps a square of the image, a "
                          "letterbox all of it")
    changes = {k: v for k, v in (("resize", resize), ("crop", crop), ("layout", layout), ("letterbox", letterbox),
                                 ("pad_multiple", pad_multiple)) if v is not None}
    if crop is not None and resize is None:
        changes["resize"] = resize_for_crop(crop)
    if (crop is not None or resize is not None) and pre.letterbox is not None:
        changes.update(letterbox=None, pad_multiple=1)
    return replace(pre, **changes) if changes else pre


def _fixed_image_dims(input_shape: Sequence[object]) -> tuple[int | None, int | None, Layout] | None:
    """(height, width, layout) of an image input [N, 3, H, W] or [N, H, W, 3] (None where a dim is free);
    None when the input is not an image."""
    dims = list(input_shape)[1:]
    if len(dims) != 3:
        return None
    fixed = [int(d) if isinstance(d, (int, np.integer)) and d > 0 else None for d in dims]
    if fixed[0] == 3:
        return fixed[1], fixed[2], Layout.NCHW
    if fixed[2] == 3:
        return fixed[0], fixed[1], Layout.NHWC
    return None


def fit_to_input(pre: Preprocess, input_shape: Sequence[object]) -> tuple[Preprocess, str]:
    """``pre`` fitted to a static image input ([N, 3, H, W] or [N, H, W, 3]), and a sentence saying what
    changed ("" when nothing did): a square input sets crop, resize and layout; with a letterbox, an input
    whose height and width are both fixed sets the letterbox's box to them.

    >>> new, why = fit_to_input(Preprocess(), [None, 3, 240, 240])
    >>> new.crop, new.resize, new.layout.value
    (240, 274, 'NCHW')
    >>> fit_to_input(Preprocess(letterbox=320), [1, 3, 480, 640])[0].output_shape
    (3, 480, 640)
    """
    found = _fixed_image_dims(input_shape)
    if found is None:
        return pre, ""
    height, width, layout = found
    if pre.letterbox is not None:
        if height is None or width is None or ((height, width), layout) == (pre.image_size, pre.layout):
            return pre, ""
        new = replace(pre, letterbox=(height, width), layout=layout)
        return new, f"letterbox {format_size(new.letterbox)} and layout {layout.value} from the model's input " \
                    f"{_format_shape(list(input_shape))}"
    if height is None or height != width or (height, layout) == (pre.crop, pre.layout):
        return pre, ""
    new = replace(pre, crop=height, resize=resize_for_crop(height), layout=layout)
    return new, (f"crop {height}, resize {new.resize} (ratio {CROP_RATIO}) and layout {layout.value} from the "
                 f"model's input {_format_shape(list(input_shape))}")


def _format_shape(shape: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _dims_match(declared: Sequence[object], produced: Sequence[int]) -> bool:
    """True when every fixed (int) declared dim equals the produced one; str/None dims are free."""
    if len(declared) != len(produced):
        return False
    return all(not isinstance(d, (int, np.integer)) or d == p for d, p in zip(declared, produced))


def check_input_shape(pre: Preprocess, input_shape: Sequence[object],
                      model_path_or_name: str | os.PathLike) -> None:
    """Raise ConfigError when ``pre`` produces images the model's declared input cannot take.

    ``input_shape`` is the model's input shape, batch first; None or str dims are dynamic.
    """
    declared = list(input_shape)
    produced = pre.output_shape
    if _dims_match(declared[1:], produced):
        return
    other = Layout.NHWC if pre.layout is Layout.NCHW else Layout.NCHW
    swapped = replace(pre, layout=other).output_shape
    if _dims_match(declared[1:], swapped):
        hint = "--layout"
    elif pre.letterbox is not None:
        hint = "--letterbox/--pad-multiple"
    else:
        found = _fixed_image_dims(declared)
        square = found is None or found[0] is None or found[0] == found[1]
        hint = "--crop/--preset" if square else f"--letterbox {found[1]}x{found[0]}"
    sizes = (f"letterbox {format_size(pre.letterbox)}" + (f" padded to a multiple of {pre.pad_multiple}"
                                                         if pre.pad_multiple > 1 else "")
             if pre.letterbox is not None else f"crop={pre.crop}")
    raise ConfigError(
        f"model {model_path_or_name} expects input {_format_shape(declared)} but preprocessing "
        f"{sizes} layout={pre.layout.value} gives {_format_shape(produced)}; "
        f"pass a matching {hint}"
    )
