"""Letterboxing: any photo, aspect kept, into one padded canvas; the model's fixed sizes honoured or refused
in one line; the command line's --letterbox / --pad-multiple."""

import numpy as np
import pytest
from PIL import Image
from structures import probability_map

from nbquant.cli import main
from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.data.letterbox import parse_size, placement, unletterbox
from nbquant.data.pixel_cache import cache_images
from nbquant.data.preprocess import Preprocess, check_input_shape, crop_pixels, fit_to_input, normalize, with_sizes
from nbquant.errors import ConfigError
from nbquant.files import save_model


def known_image(width: int = 120, height: int = 60) -> Image.Image:
    """Smooth and known: red rises left to right, green top to bottom, blue constant."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 77)], axis=-1).round().astype(np.uint8))


def test_a_known_image_makes_the_round_trip():
    image = known_image()  # 120 x 60
    pre = Preprocess(letterbox=100, pad_multiple=32, pad_value=114)
    pixels = crop_pixels(image, pre)
    assert pixels.shape == (128, 128, 3) and pre.image_size == (128, 128)
    assert placement(image.size, pre.letterbox) == (100 / 120, 100, 50)
    assert (pixels[50:] == 114).all() and (pixels[:, 100:] == 114).all()  # padding bottom and right, exactly
    assert (pixels[:50, :100, 2] == 77).all()  # the constant channel stays constant: nothing of the padding bled in
    back = unletterbox(pixels, image.size, pre.letterbox, pre.pad_multiple)
    assert back.shape == (60, 120, 3) and back.dtype == np.uint8
    error = np.abs(back.astype(int) - np.asarray(image, int))
    assert error[2:-2, 2:-2].max() <= 3 and error.mean() < 1.0  # a smooth image survives the down and up scaling
    same = known_image(96, 48)  # already the box's size: no resampling, so the round trip is exact
    exact = crop_pixels(same, Preprocess(letterbox="96x48", pad_multiple=32))
    assert exact.shape == (64, 96, 3) and (exact[:48] == np.asarray(same)).all() and (exact[48:] == 0).all()
    assert (unletterbox(exact, same.size, (48, 96), 32) == np.asarray(same)).all()


def test_maps_at_a_fraction_of_the_canvas_come_back_on_the_photo():
    size, box = (120, 60), (64, 64)  # the photo lands as 64 x 32 on a 64 x 64 canvas
    stride4 = np.zeros((16, 16), np.float32)
    stride4[:8, :8] = 1.0  # the photo's left half, in a map at a quarter of the canvas
    back = unletterbox(stride4, size, box)
    assert back.shape == (60, 120) and back.dtype == np.float32
    assert back[:, :50].min() > 0.99 and back[:, 70:].max() < 0.01


def test_photos_of_any_shape_share_one_batch(tmp_path):
    for i, size in enumerate(((40, 30), (30, 40), (64, 16), (7, 9))):
        known_image(*size).save(tmp_path / f"p{i}.png")
    pre = Preprocess(letterbox="48x24", pad_multiple=16, layout="NHWC")
    batch = next(ImageDataset(tmp_path).iter_batches(pre, batch_size=4))
    assert batch.images.shape == (4, 32, 48, 3) == (4, *pre.output_shape)
    cached = cache_images(ImageDataset(tmp_path), pre, tmp_path / "pixels.u8", progress=False)
    assert cached.read(0, 4).shape == (4, 32, 48, 3) and cached.image_bytes == 32 * 48 * 3
    assert np.array_equal(cached.gather([2, 0]), normalize(cached.pixels_at([2, 0]), pre))
    assert np.array_equal(cached.images, batch.images)


def test_settings_are_checked():
    assert parse_size("640x480") == (480, 640) and Preprocess(letterbox=(480, 640)).output_shape == (3, 480, 640)
    assert Preprocess(letterbox=600, pad_multiple=32).image_size == (608, 608)
    for kwargs, message in (({"pad_multiple": 32}, "pads a letterbox; set letterbox too"),
                            ({"letterbox": "640x"}, "letterbox must be a size like 640 or 640x480"),
                            ({"letterbox": (0, 3)}, "letterbox height must be an int >= 1"),
                            ({"letterbox": 64, "pad_value": 256}, "pad_value must be a pixel value 0..255"),
                            ({"letterbox": 64, "pad_multiple": 0}, "pad_multiple must be an int >= 1")):
        with pytest.raises(ConfigError, match=message):
            Preprocess(**kwargs)
    text = Preprocess(letterbox=600, pad_multiple=32, channel_order="BGR").describe()
    assert text.startswith("letterbox 600 (bilinear, keep aspect, padded to 608x608, pad 0), BGR NCHW")
    with pytest.raises(ConfigError, match="crop/resize and letterbox exclude each other"):
        with_sizes(Preprocess(), crop=200, letterbox=320)
    boxed = with_sizes(Preprocess(), letterbox=320, pad_multiple=32)
    assert boxed.letterbox == (320, 320) and with_sizes(boxed, crop=200).letterbox is None


def test_the_model_s_fixed_sizes_are_honoured_or_refused_in_one_line():
    pre = Preprocess(letterbox=320, pad_multiple=32)
    fitted, why = fit_to_input(pre, ["N", 3, 480, 640])
    assert fitted.output_shape == (3, 480, 640) and "letterbox 640x480" in why
    assert fit_to_input(pre, ["N", 3, "H", "W"]) == (pre, "")
    check_input_shape(pre, ["N", 3, "H", "W"], "free.onnx")  # free sizes take any canvas
    with pytest.raises(ConfigError) as error:
        check_input_shape(Preprocess(letterbox=500, pad_multiple=32), ["N", 3, 500, 500], "fixed.onnx")
    message = str(error.value)
    assert "\n" not in message and message == (
        "model fixed.onnx expects input [N, 3, 500, 500] but preprocessing letterbox 500 padded to a multiple of 32 "
        "layout=NCHW gives [3, 512, 512]; pass a matching --letterbox/--pad-multiple")
    with pytest.raises(ConfigError, match=r"pass a matching --letterbox 640x480$"):
        check_input_shape(Preprocess(), ["N", 3, 480, 640], "wide.onnx")  # a square crop cannot fill it
    recorded = probability_map(size=(64, 96))
    for key, value in (("letterbox", "48"), ("pad_multiple", "16"), ("channel_order", "BGR")):
        recorded.metadata_props.add(key=f"nbquant.preprocess.{key}", value=value)
    from_metadata = resolve_preprocess(recorded)
    assert from_metadata.output_shape == (3, 64, 96) and from_metadata.channel_order.value == "BGR"


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate(((50, 30), (30, 50), (40, 40), (64, 20), (20, 64), (33, 47))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_the_command_line_letterboxes_and_reports_dense_fidelity(photos, tmp_path, capsys):
    model = save_model(probability_map(threshold="0.5"), tmp_path / "map.onnx")
    code = main(["calibrate", str(model), "--data", str(photos), "--letterbox", "48x32", "--pad-multiple", "16",
                 "--calib-num", "4", "--eval-num", "6", "--save-dir", str(tmp_path / "run"), "--no-cache"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "auto-calibrate's default metric here: iou@0.5" in out
    for label in ("fake-quant", "deploy"):
        line = next(row for row in out.splitlines() if row.startswith(f"mean cosine similarity to float, {label}:"))
        assert "(6 images); mean sqnr" in line and "mean iou" in line and "lowest iou: p" in line
    fixed = save_model(probability_map(size=(32, 32)), tmp_path / "fixed.onnx")
    code = main(["calibrate", str(fixed), "--data", str(photos), "--letterbox", "48", "--calib-num", "2",
                 "--save-dir", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "expects input [N, 3, 32, 32]" in err and "--letterbox" in err
    code = main(["calibrate", str(model), "--data", str(photos), "--letterbox", "48", "--crop", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "crop/resize and letterbox exclude each other" in err and err.count("\n") == 1
