"""Preprocessing: validation, presets, hand-checked numbers, model input shape checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nbquant.data.preprocess import (
    DEFAULT_PRESET,
    PRESETS,
    ChannelOrder,
    Interpolation,
    Layout,
    Preprocess,
    Rounding,
    center_crop,
    check_input_shape,
    get_preset,
    normalize,
    preprocess_image,
    resize_short_side,
    resized_long_side,
    with_sizes,
)
from nbquant.errors import ConfigError


def test_defaults_equal_the_default_preset():
    assert DEFAULT_PRESET == "half"
    assert Preprocess() == get_preset("half")
    assert set(PRESETS) == {"imagenet", "half", "inception"}


def test_presets_hold_their_documented_numbers():
    assert get_preset("imagenet").mean == (0.485, 0.456, 0.406)
    assert get_preset("imagenet").std == (0.229, 0.224, 0.225)
    assert get_preset("half").mean == (0.498,) * 3 and get_preset("half").std == (0.502,) * 3
    assert get_preset("inception").mean == (0.5,) * 3 and get_preset("inception").std == (0.5,) * 3


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match="preset 'vgg'; valid presets: half, imagenet, inception"):
        get_preset("vgg")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop": -3}, "crop must be an int >= 1, got -3"),
        ({"resize": 0}, "resize must be an int >= 1, got 0"),
        ({"crop": 2.5}, "crop must be an int >= 1, got 2.5"),
        ({"crop": True}, "crop must be an int >= 1, got True"),
        ({"crop": 300}, "crop must be <= resize, got crop=300 resize=256"),
        ({"mean": (0.5, 0.5)}, r"mean must be 3 finite numbers"),
        ({"std": (0.5, 0.0, 0.5)}, r"std must be 3 positive numbers"),
        ({"std": "abc"}, r"std must be 3 positive numbers"),
        ({"std": (0.5, float("inf"), 0.5)}, r"std must be 3 positive numbers"),
        ({"mean": (0.5, True, 0.5)}, r"mean must be 3 finite numbers"),
        ({"scale": -1.0}, "scale must be a number > 0, got -1.0"),
        ({"scale": 0}, "scale must be a number > 0, got 0"),
        ({"scale": float("nan")}, "scale must be a number > 0, got nan"),
        ({"layout": "CHW"}, "layout must be one of NCHW, NHWC, got 'CHW'"),
        ({"interpolation": "nearest"}, "interpolation must be one of bilinear, bicubic"),
        ({"channel_order": 3}, "channel_order must be one of RGB, BGR, got 3"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Preprocess(**kwargs)


def test_strings_become_enums_and_lists_become_tuples():
    pre = Preprocess(layout="nhwc", channel_order="bgr", interpolation="BICUBIC", mean=[0, 0, 0])
    assert pre.layout is Layout.NHWC and pre.channel_order is ChannelOrder.BGR
    assert pre.interpolation is Interpolation.BICUBIC
    assert pre.mean == (0.0, 0.0, 0.0)
    hash(pre)  # frozen and hashable
    sized = Preprocess(resize=np.int64(10), crop=np.int32(8), mean=np.array([1, 2, 3]), scale=np.float32(0.5))
    assert (type(sized.resize), type(sized.crop), type(sized.scale), sized.mean) == (int, int, float, (1.0, 2.0, 3.0))


def test_long_side_rounding():
    assert resized_long_side(427, 640, 256, Rounding.FLOOR) == 383  # 383.70 like torchvision
    assert resized_long_side(427, 640, 256, Rounding.ROUND) == 384
    assert resized_long_side(375, 500, 256, Rounding.ROUND) == 341  # 341.33


def test_resize_keeps_aspect_and_crop_is_centered():
    img = Image.new("RGB", (640, 427))
    resized = resize_short_side(img, 256, Interpolation.BILINEAR, Rounding.FLOOR)
    assert resized.size == (383, 256)
    portrait = Image.new("RGB", (427, 640))
    resized = resize_short_side(portrait, 256, Interpolation.BILINEAR, Rounding.ROUND)
    assert resized.size == (256, 384)
    # torchvision: left = int(round((383 - 224) / 2)) = int(round(79.5)) = 80 (banker's rounding)
    columns = (np.arange(383) % 256).astype(np.uint8)
    grad = Image.fromarray(np.tile(columns, (256, 1)))
    cropped = np.asarray(center_crop(grad, 224))
    assert cropped.shape == (224, 224) and cropped[0, 0] == 80


def test_constant_colour_image_hand_checked():
    img = Image.new("RGB", (6, 4), (255, 51, 0))
    pre = Preprocess(resize=2, crop=2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    out = preprocess_image(img, pre)
    assert out.dtype == np.float32 and out.shape == (3, 2, 2)
    # R: (255/255 - 0.5)/0.5 = 1;  G: (51/255 - 0.5)/0.25 = (0.2 - 0.5)/0.25 = -1.2;  B: -1
    np.testing.assert_allclose(out[:, 0, 0], [1.0, -1.2, -1.0], rtol=1e-6)
    assert np.all(out == out[:, :1, :1])


@pytest.mark.parametrize("order, layout", [("RGB", "NCHW"), ("BGR", "NCHW"), ("RGB", "NHWC"), ("BGR", "NHWC")])
def test_normalize_equals_per_pixel_float32_arithmetic(order, layout):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    pre = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order=order, layout=layout)
    arr = pixels.astype(np.float32)[..., ::-1] if order == "BGR" else pixels.astype(np.float32)
    expected = (arr * np.float32(pre.scale) - np.float32(pre.mean)) / np.float32(pre.std)
    expected = np.moveaxis(expected, -1, 1) if layout == "NCHW" else expected
    out = normalize(pixels, pre)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, expected)  # bit for bit: the table holds the same float32 results
    np.testing.assert_array_equal(normalize(pixels[0], pre), expected[0])


def test_layout_channel_order_and_scale():
    img = Image.new("RGB", (4, 4), (10, 20, 30))
    pre = Preprocess(resize=4, crop=4, mean=(0, 0, 0), std=(1, 1, 1), scale=1.0,
                     channel_order="BGR", layout="NHWC")
    out = preprocess_image(img, pre)
    assert out.shape == (4, 4, 3) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out[0, 0], [30, 20, 10])


def test_grayscale_and_rgba_are_converted_to_rgb():
    pre = Preprocess(resize=8, crop=8, mean=(0, 0, 0), std=(1, 1, 1), scale=1.0)
    grey = preprocess_image(Image.new("L", (8, 8), 100), pre)
    rgba = preprocess_image(Image.new("RGBA", (8, 8), (1, 2, 3, 4)), pre)
    assert grey.shape == rgba.shape == (3, 8, 8)
    np.testing.assert_array_equal(grey[:, 0, 0], [100, 100, 100])
    np.testing.assert_array_equal(rgba[:, 0, 0], [1, 2, 3])


@pytest.mark.parametrize(
    "shape", [["N", 3, 224, 224], [None, 3, 224, 224], [1, 3, 224, 224], ["N", 3, "H", "W"]]
)
def test_check_input_shape_accepts_matching_and_dynamic_dims(shape):
    check_input_shape(get_preset("half"), shape, "m.onnx")


def test_check_input_shape_names_model_shape_and_crop():
    pre = Preprocess(resize=256, crop=256)
    expected = (r"model m.onnx expects input \[N, 3, 224, 224\] but preprocessing crop=256 "
                r"layout=NCHW gives \[3, 256, 256\]; pass a matching --crop/--preset")
    with pytest.raises(ConfigError, match=expected):
        check_input_shape(pre, ["N", 3, 224, 224], "m.onnx")


def test_check_input_shape_suggests_layout_when_only_layout_differs():
    with pytest.raises(ConfigError, match=r"expects input \[\?, 224, 224, 3\].*--layout"):
        check_input_shape(get_preset("half"), [None, 224, 224, 3], "m.onnx")


def test_check_input_shape_rejects_wrong_rank():
    with pytest.raises(ConfigError, match=r"expects input \[N, 1000\]"):
        check_input_shape(get_preset("half"), ["N", 1000], "m.onnx")


def test_crop_resize_and_layout_follow_a_static_model_input():
    from nbquant.data.preprocess import fit_to_input
    pre = get_preset("half")
    nhwc, why = fit_to_input(pre, [1, 240, 240, 3])
    assert (nhwc.crop, nhwc.resize, nhwc.layout.value) == (240, 274, "NHWC") and "[1, 240, 240, 3]" in why
    assert fit_to_input(pre, ["N", 3, 224, 224]) == (pre, "")  # already matching
    assert fit_to_input(pre, ["N", 3, "H", "W"]) == (pre, "")  # dynamic: the preset stays
    assert fit_to_input(pre, ["N", 3, 224, 200]) == (pre, "")  # not square: the check will say so


def test_model_without_metadata_gets_its_input_size_and_given_sizes_still_win(caplog):
    import logging

    import onnx

    from nbquant.data.binding import resolve_preprocess
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 240, 240] x) => (float[N, 3, 240, 240] y) { y = Relu (x) }
    """)
    with caplog.at_level(logging.INFO, logger="nbquant"):
        pre = resolve_preprocess(model)
    assert (pre.crop, pre.resize) == (240, 274) and "crop 240, resize 274" in caplog.text
    assert resolve_preprocess(model, "imagenet").crop == 240  # a preset names the normalisation only
    assert with_sizes(pre) is pre
    assert (with_sizes(pre, crop=200).crop, with_sizes(pre, crop=200).resize) == (200, 229)  # ratio 0.875
    assert with_sizes(pre, crop=200, resize=210).resize == 210
    assert with_sizes(pre, layout="nhwc").layout is Layout.NHWC and with_sizes(pre, resize=300).crop == 240
