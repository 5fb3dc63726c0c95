"""ImageDataset: layouts, auto detection, subsets, streaming batches, bad-file handling."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nbquant.data.images import Batch, DatasetLayout, ImageDataset, load_class_names
from nbquant.data.preprocess import Preprocess
from nbquant.errors import DataError

PRE = Preprocess(resize=8, crop=8, mean=(0, 0, 0), std=(1, 1, 1), scale=1.0)


def write_image(path: Path, value: int = 0, size=(10, 12), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path, format=fmt)
    return path


@pytest.fixture
def imagenet_dir(tmp_path) -> Path:
    # labels: n01440764 = 0 (tench), n01443537 = 1 (goldfish), n15075141 = 999
    write_image(tmp_path / "n01443537_goldfish.JPEG", 10)
    write_image(tmp_path / "n01440764_tench.jpg", 20)
    write_image(tmp_path / "n15075141.png", 30)
    return tmp_path


def test_class_list_is_shipped():
    classes = load_class_names()
    assert len(classes) == 1000
    assert classes[0] == ("n01440764", "tench") and classes[999].wnid == "n15075141"


def test_imagenet_layout_is_detected_and_labelled(imagenet_dir):
    data = ImageDataset(imagenet_dir)
    assert data.layout is DatasetLayout.IMAGENET and data.labeled
    assert [f.name for f in data.files] == [
        "n01440764_tench.jpg", "n01443537_goldfish.JPEG", "n15075141.png"]
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 1, 999]
    assert len(data.class_names) == 1000 and data.class_names[1] == "goldfish"
    assert len(data) == 3 and "layout=imagenet" in repr(data)


def test_folder_layout_follows_imagefolder_convention(tmp_path):
    write_image(tmp_path / "dog" / "b.png")
    write_image(tmp_path / "dog" / "nested" / "c.bmp")
    write_image(tmp_path / "cat" / "a.JPG")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    write_image(tmp_path / ".ipynb_checkpoints" / "x.png")
    data = ImageDataset(tmp_path)
    assert data.layout is DatasetLayout.FOLDER
    assert data.class_names == ["cat", "dog"]
    assert [f.relative_to(tmp_path).as_posix() for f in data.files] == [
        "cat/a.JPG", "dog/b.png", "dog/nested/c.bmp"]
    assert data.labels.tolist() == [0, 1, 1]


def test_unlabeled_layout(tmp_path):
    write_image(tmp_path / "holiday.webp", fmt="WEBP")
    write_image(tmp_path / "n01440764_tench.jpg")  # one wnid name is not enough
    (tmp_path / "notes.txt").write_text("not an image")
    data = ImageDataset(tmp_path)
    assert data.layout is DatasetLayout.UNLABELED and not data.labeled
    assert data.labels.tolist() == [-1, -1] and data.class_names is None


def test_explicit_layout_overrides_detection(imagenet_dir):
    data = ImageDataset(imagenet_dir, layout="unlabeled")
    assert data.layout is DatasetLayout.UNLABELED and data.labels.tolist() == [-1, -1, -1]
    with pytest.raises(DataError, match="layout must be one of auto, imagenet, folder, unlabeled"):
        ImageDataset(imagenet_dir, layout="coco")


def test_explicit_imagenet_layout_rejects_foreign_names(tmp_path):
    write_image(tmp_path / "cat.jpg")
    with pytest.raises(DataError, match="cat.jpg does not start with an ImageNet WordNet id"):
        ImageDataset(tmp_path, layout="imagenet")


def test_limit_keeps_first_sorted_files(imagenet_dir):
    data = ImageDataset(imagenet_dir, limit=2)
    assert data.labels.tolist() == [0, 1]
    with pytest.raises(DataError, match="limit must be an int >= 1, got 0"):
        ImageDataset(imagenet_dir, limit=0)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=f"image folder {tmp_path / 'nope'} does not exist"):
        ImageDataset(tmp_path / "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=rf"no images \(.jpg .jpeg .png .bmp .webp\) in {tmp_path}"):
        ImageDataset(tmp_path)


def test_subset(imagenet_dir):
    data = ImageDataset(imagenet_dir)
    sub = data.subset(2, offset=1)
    assert sub.labels.tolist() == [1, 999] and sub.root == data.root
    assert sub.layout is data.layout and len(data) == 3
    message = f"calibration count 2000 is larger than the 3 images in {imagenet_dir}"
    with pytest.raises(DataError, match=message):
        data.subset(2000)
    with pytest.raises(DataError, match="calibration count 2 at offset 2 goes past the 3 images"):
        data.subset(2, offset=2)


def test_spread_covers_the_whole_sorted_list(imagenet_dir):
    data = ImageDataset(imagenet_dir)
    assert data.spread(2).labels.tolist() == [0, 1] and data.spread(3).labels.tolist() == data.labels.tolist()
    with pytest.raises(DataError, match="calibration count 4 is larger than the 3 images"):
        data.spread(4)


def test_iter_batches_streams_in_order(imagenet_dir):
    data = ImageDataset(imagenet_dir)
    batches = list(data.iter_batches(PRE, batch_size=2))
    assert [len(b.files) for b in batches] == [2, 1]
    first = batches[0]
    assert isinstance(first, Batch)
    assert first.images.shape == (2, 3, 8, 8) and first.images.dtype == np.float32
    assert first.labels.dtype == np.int64 and first.labels.tolist() == [0, 1]
    # tench was written with value 20, goldfish with 10 (JPEG may move values slightly)
    np.testing.assert_allclose(first.images[:, 0, 4, 4], [20, 10], atol=2)
    with pytest.raises(DataError, match="batch_size must be an int >= 1"):
        next(data.iter_batches(PRE, batch_size=0))


def test_corrupt_image_is_skipped_with_warning(imagenet_dir, caplog):
    bad = imagenet_dir / "n01484850_shark.jpg"
    bad.write_text("this is not a jpeg")
    truncated = imagenet_dir / "n01491361_tiger.jpg"
    truncated.write_bytes((imagenet_dir / "n01443537_goldfish.JPEG").read_bytes()[:200])
    data = ImageDataset(imagenet_dir)
    assert len(data) == 5
    with caplog.at_level(logging.WARNING, logger="nbquant.data.images"):
        batches = list(data.iter_batches(PRE, batch_size=4))
    assert [len(b.files) for b in batches] == [2, 1]
    assert batches[0].labels.tolist() == [0, 1]
    assert data.skipped == [bad, truncated]
    assert str(bad) in caplog.text and str(truncated) in caplog.text


def test_pixels_decoded_in_place_leave_corrupt_images_out(imagenet_dir, caplog):
    expected = np.concatenate([b.images for b in ImageDataset(imagenet_dir).iter_batches(PRE, 2, pixels=True)])
    (imagenet_dir / "n01484850_shark.jpg").write_text("this is not a jpeg")
    data = ImageDataset(imagenet_dir)
    with caplog.at_level(logging.WARNING, logger="nbquant.data.images"):
        pixels, kept = data.decode_pixels(PRE)
    assert kept.tolist() == [True, True, False, True] and data.skipped == [imagenet_dir / "n01484850_shark.jpg"]
    assert np.array_equal(pixels, expected) and "n01484850_shark.jpg" in caplog.text


def test_a_dataset_with_its_pixels_decodes_nothing_and_its_subsets_keep_them(imagenet_dir, monkeypatch):
    import nbquant.data.images as images

    data = ImageDataset(imagenet_dir)
    inputs = np.concatenate([b.images for b in data.iter_batches(PRE, 2)])
    pixels, _ = data.decode_pixels(PRE)
    monkeypatch.setattr(images, "_decode", lambda *a, **k: pytest.fail("decoded an image again"))
    ready = data.with_pixels(PRE, pixels)
    assert np.array_equal(np.concatenate([b.images for b in ready.iter_batches(PRE, 2)]), inputs)
    spread = ready.spread(2)
    assert [b.files for b in spread.iter_batches(PRE, 2)] == [spread.files]
    assert np.array_equal(next(spread.iter_batches(PRE, 2)).images, inputs[[0, 1]])
    assert np.array_equal(ready.subset(1, offset=2).decode_pixels(PRE)[0], pixels[2:])
    monkeypatch.undo()
    other = Preprocess(resize=6, crop=6, mean=(0, 0, 0), std=(1, 1, 1), scale=1.0)  # other pixels: decoded anew
    assert next(ready.iter_batches(other, 3)).images.shape == (3, 3, 6, 6)
    with pytest.raises(ValueError, match=r"3 images of \(8, 8\) need pixels \[3, 8, 8, 3\]"):
        data.with_pixels(PRE, pixels[:2])


def test_all_images_undecodable(tmp_path, caplog):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"garbage")
    data = ImageDataset(tmp_path)
    with (caplog.at_level(logging.WARNING, logger="nbquant.data.images"),
          pytest.raises(DataError, match=f"none of the 2 images in {tmp_path} could be decoded")):
            list(data.iter_batches(PRE))
    with pytest.raises(DataError, match="none of the 2 images"):
        data.decode_pixels(PRE)


def test_partial_wordnet_class_folders_warn_about_label_order(tmp_path, caplog):
    write_image(tmp_path / "n01443537" / "a.png")
    write_image(tmp_path / "n15075141" / "b.png")
    with caplog.at_level(logging.WARNING, logger="nbquant.data.images"):
        data = ImageDataset(tmp_path)
    assert data.labels.tolist() == [0, 1]
    assert "WordNet ids but only 2 of 1000" in caplog.text


def test_pixel_cache_gives_the_model_inputs_exactly_from_a_quarter_of_the_bytes(imagenet_dir, tmp_path):
    from dataclasses import replace

    from nbquant.data.pixel_cache import cache_images
    data = ImageDataset(imagenet_dir)
    for pre in (PRE, replace(PRE, layout="NHWC", channel_order="BGR")):
        expected = np.concatenate([b.images for b in data.iter_batches(pre, batch_size=2)])
        on_disk = cache_images(data, pre, tmp_path / "cache.u8", progress=False)
        in_memory = cache_images(data, pre, progress=False)
        assert (tmp_path / "cache.u8").stat().st_size == expected.size == 4 * expected.nbytes // 16
        for cached in (on_disk, in_memory):
            assert np.array_equal(np.concatenate(list(cached.batches(2))), expected)
            assert np.array_equal(cached.images, expected) and cached.labels.tolist() == [0, 1, 999]
        picked = on_disk.subset([2, 0])
        assert np.array_equal(picked.images, expected[[2, 0]]) and picked.files == [on_disk.files[2], on_disk.files[0]]
