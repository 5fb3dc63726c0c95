"""Labelled image folders streamed in preprocessed batches, for calibration and evaluation.

Three layouts: IMAGENET (flat files named ``<wnid>_*.JPEG``), FOLDER (torchvision
ImageFolder: one sub-folder per class) and UNLABELED (flat files, label -1).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError
from ..options import check_count
from ..threads import usable_cpus
from .preprocess import Preprocess, crop_pixels, normalize, preprocess_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DatasetLayout(str, Enum):
    """How labels are read from the folder."""

    IMAGENET = "imagenet"
    FOLDER = "folder"
    UNLABELED = "unlabeled"


class ImageNetClass(NamedTuple):
    """One line of the shipped ImageNet-1k class list."""

    wnid: str
    name: str


class Batch(NamedTuple):
    """One decoded batch: images [B, ...] float32 (or uint8 pixels [B, H, W, 3]), labels [B] int64,
    source files."""

    images: np.ndarray
    labels: np.ndarray
    files: list[Path]


@functools.lru_cache(maxsize=1)
def load_class_names() -> tuple[ImageNetClass, ...]:
    """The 1000 ImageNet classes (wnid, name) in label-index order, from the package data."""
    path = resources.files("nbquant").joinpath("resources/imagenet_classes.txt")
    text = path.read_text(encoding="utf-8")
    rows = (line.split(maxsplit=1) for line in text.splitlines() if line.strip())
    return tuple(ImageNetClass(wnid, name) for wnid, name in rows)


@functools.lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {c.wnid: i for i, c in enumerate(load_class_names())}


def _is_image(path: Path) -> bool:
    hidden = path.name.startswith(".")
    return not hidden and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _list_images(folder: Path, recursive: bool = False) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths if _is_image(p))


def _class_folders(root: Path) -> list[Path]:
    """Sorted non-hidden sub-folders of ``root`` that hold at least one image (at any depth)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [d for d in subdirs if any(_is_image(p) for p in d.rglob("*"))]


def _wnid_of(name: str) -> str | None:
    """The known wnid a file name starts with (followed by ``_`` or ``.``), else None."""
    for sep in ("_", "."):
        head = name.split(sep, 1)[0]
        if head != name and head in _wnid_index():
            return head
    return None


def _detect_layout(root: Path) -> DatasetLayout:
    if _class_folders(root):
        return DatasetLayout.FOLDER
    files = _list_images(root)
    if files and all(_wnid_of(f.name) for f in files):
        return DatasetLayout.IMAGENET
    return DatasetLayout.UNLABELED


def _scan_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """ImageFolder convention: label = index of the class folder in sorted order."""
    classes = _class_folders(root)
    if not classes:
        raise DataError(f"layout 'folder' needs class sub-folders holding images in {root}")
    known = [d.name for d in classes if d.name in _wnid_index()]
    if known and len(known) == len(classes) and len(classes) != len(_wnid_index()):
        logger.warning(
            "class folders in %s are WordNet ids but only %d of %d; labels follow the sorted "
            "folder order (ImageFolder), not the ImageNet-1k index",
            root, len(classes), len(_wnid_index()),
        )
    if _list_images(root):
        logger.warning("ignoring image files directly in %s (layout 'folder')", root)
    files, labels = [], []
    for label, folder in enumerate(classes):
        found = _list_images(folder, recursive=True)
        files += found
        labels += [label] * len(found)
    return files, labels, [d.name for d in classes]


def _scan_imagenet(root: Path) -> tuple[list[Path], list[int], list[str]]:
    files = _list_images(root)
    labels = []
    for f in files:
        wnid = _wnid_of(f.name)
        if wnid is None:
            raise DataError(f"{f} does not start with an ImageNet WordNet id (layout 'imagenet')")
        labels.append(_wnid_index()[wnid])
    return files, labels, [c.name for c in load_class_names()]


def _decode(path: Path, pre: Preprocess, pixels: bool = False) -> np.ndarray | None:
    """Preprocessed image (uint8 cropped pixels when ``pixels``), or None (with a warning naming the
    file) when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return crop_pixels(img, pre) if pixels else preprocess_image(img, pre)
    except _DECODE_ERRORS as exc:
        logger.warning("skipping %s: cannot decode image (%s)", path, exc)
        return None


def _decode_threads() -> int:
    return max(1, min(4, usable_cpus()))


class ImageDataset:
    """Sorted image files of one folder with their labels, decoded lazily batch by batch.

    ``layout="auto"`` picks FOLDER when ``root`` has class sub-folders holding images,
    IMAGENET when every file name starts with a known wnid, else UNLABELED.
    ``limit`` keeps only the first ``limit`` files (sorted order). ``skipped`` lists the
    files found undecodable so far by ``iter_batches``.
    """

    def __init__(self, root: str | os.PathLike, layout: str | DatasetLayout = "auto",
                 limit: int | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a folder")
        layout = self._resolve_layout(root, layout)
        if layout is DatasetLayout.FOLDER:
            files, labels, class_names = _scan_folder(root)
        elif layout is DatasetLayout.IMAGENET:
            files, labels, class_names = _scan_imagenet(root)
        else:
            files, labels, class_names = _list_images(root), [], None
        if not files:
            raise DataError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) in {root}")
        if labels == []:
            labels = [-1] * len(files)
        if limit is not None:
            limit = check_count("limit", limit)
            files, labels = files[:limit], labels[:limit]
        self._set(root, layout, files, np.asarray(labels, dtype=np.int64), class_names)

    @classmethod
    def _from_parts(cls, root: Path, layout: DatasetLayout, files: list[Path], labels: np.ndarray,
                    class_names: list[str] | None,
                    decoded: tuple[Preprocess, np.ndarray] | None = None) -> ImageDataset:
        """A dataset of files already listed (a subset, a shard), without scanning a folder."""
        dataset = cls.__new__(cls)
        dataset._set(root, layout, files, labels, class_names)
        dataset._decoded = decoded
        return dataset

    def _set(self, root, layout, files, labels, class_names) -> None:
        """Every attribute, in one place for :meth:`__init__` and :meth:`_from_parts`."""
        self.root: Path = root
        self.layout: DatasetLayout = layout
        self.files: list[Path] = files
        self.labels: np.ndarray = labels
        self.class_names: list[str] | None = class_names
        self.skipped: list[Path] = []
        self._decoded: tuple[Preprocess, np.ndarray] | None = None  # (preprocessing, uint8 pixels of every file)

    @staticmethod
    def _resolve_layout(root: Path, layout: str | DatasetLayout) -> DatasetLayout:
        if isinstance(layout, str) and layout.lower() == "auto":
            return _detect_layout(root)
        try:
            return DatasetLayout(layout.lower() if isinstance(layout, str) else layout)
        except ValueError:
            valid = ", ".join(["auto"] + [m.value for m in DatasetLayout])
            raise DataError(f"layout must be one of {valid}, got {layout!r}") from None

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        classes = len(self.class_names) if self.class_names is not None else None
        return (f"ImageDataset(root='{self.root}', layout={self.layout.value}, "
                f"n={len(self)}, classes={classes})")

    @property
    def labeled(self) -> bool:
        """True when labels come from file or folder names (not UNLABELED)."""
        return self.layout is not DatasetLayout.UNLABELED

    def subset(self, n: int, offset: int = 0) -> ImageDataset:
        """The ``n`` files starting at ``offset`` (sorted order), e.g. a calibration split."""
        n, offset = check_count("n", n), check_count("offset", offset, minimum=0)
        if n > len(self):
            raise DataError(f"calibration count {n} is larger than the {len(self)} images "
                            f"in {self.root}")
        if offset + n > len(self):
            raise DataError(f"calibration count {n} at offset {offset} goes past the "
                            f"{len(self)} images in {self.root}")
        end = offset + n
        return self._from_parts(self.root, self.layout, self.files[offset:end], self.labels[offset:end].copy(),
                                self.class_names, self._decoded_rows(slice(offset, end)))

    @classmethod
    def from_files(cls, files) -> ImageDataset:
        """The given image files, unlabeled, in the given order (e.g. one worker's shard)."""
        files = [Path(f) for f in files]
        if not files:
            raise DataError("from_files needs at least one image file")
        return cls._from_parts(files[0].parent, DatasetLayout.UNLABELED, files, np.full(len(files), -1, np.int64),
                               None)

    def spread(self, n: int) -> ImageDataset:
        """``n`` files evenly spaced over the sorted list, e.g. a calibration set that covers every
        class of a folder sorted by class (the first n files would cover only the first classes).

        Sorted names 0..9, n = 4: files 0, 2, 5, 7.
        """
        n = check_count("n", n)
        if n > len(self):
            raise DataError(f"calibration count {n} is larger than the {len(self)} images in {self.root}")
        picks = (np.arange(n) * len(self)) // n
        return self._from_parts(self.root, self.layout, [self.files[i] for i in picks], self.labels[picks].copy(),
                                self.class_names, self._decoded_rows(picks))

    def with_pixels(self, pre: Preprocess, pixels: np.ndarray) -> ImageDataset:
        """This dataset with its files' pixels decoded already (uint8 [n, H, W, 3] for ``pre``, e.g. taken from
        the evaluation images): batches for ``pre``, and its subsets' and spreads', then decode nothing."""
        if len(pixels) != len(self) or pixels.shape[1:] != (*pre.image_size, 3):
            raise ValueError(f"{len(self)} images of {pre.image_size} need pixels [{len(self)}, "
                             f"{pre.image_size[0]}, {pre.image_size[1]}, 3], got {list(pixels.shape)}")
        return self._from_parts(self.root, self.layout, self.files, self.labels, self.class_names, (pre, pixels))

    def _decoded_rows(self, rows) -> tuple[Preprocess, np.ndarray] | None:
        return None if self._decoded is None else (self._decoded[0], self._decoded[1][rows])

    def _pixels_for(self, pre: Preprocess) -> np.ndarray | None:
        return self._decoded[1] if self._decoded is not None and self._decoded[0] == pre else None

    def iter_batches(self, pre: Preprocess, batch_size: int = 32, pixels: bool = False) -> Iterator[Batch]:
        """Yield preprocessed batches in file order; the next batch decodes while one is used.

        ``pixels``: uint8 cropped pixels [B, H, W, 3] instead of model inputs (see
        ``preprocess.normalize``). Undecodable files are left out (warning logged, path added to
        ``skipped``).
        """
        batch_size = check_count("batch_size", batch_size)
        ready = self._pixels_for(pre)
        if ready is not None:
            for start in range(0, len(self), batch_size):
                stop = start + batch_size
                yield Batch(ready[start:stop] if pixels else normalize(ready[start:stop], pre),
                            self.labels[start:stop], self.files[start:stop])
            return
        starts = range(0, len(self), batch_size)
        decoded = 0
        with ThreadPoolExecutor(_decode_threads(), thread_name_prefix="nbquant-decode") as pool:
            pending = self._submit(pool, pre, 0, batch_size, pixels)
            for start in starts:
                arrays = [f.result() for f in pending]
                pending = self._submit(pool, pre, start + batch_size, batch_size, pixels)
                batch = self._make_batch(start, arrays)
                if batch is not None:
                    decoded += len(batch.files)
                    yield batch
        if decoded == 0:
            raise DataError(f"none of the {len(self)} images in {self.root} could be decoded")

    def decode_pixels(self, pre: Preprocess, progress: bool = False,
                      desc: str = "decode images") -> tuple[np.ndarray, np.ndarray]:
        """(uint8 pixels [n, H, W, 3] of the files that decode, in file order; which files those are, a mask).
        The others are left out (warning logged, path added to ``skipped``). Each decoding thread writes its
        images in place: no batch is stacked and no batches are joined (the main thread's share of
        decoding Lite0's 1000 images was 0.5 s)."""
        ready = self._pixels_for(pre)
        if ready is not None:
            return ready, np.ones(len(self), bool)
        out = np.empty((len(self), *pre.image_size, 3), np.uint8)

        def decode_into(i: int) -> bool:
            array = _decode(self.files[i], pre, pixels=True)
            if array is not None:
                out[i] = array
            return array is not None

        with ThreadPoolExecutor(_decode_threads(), thread_name_prefix="nbquant-decode") as pool:
            kept = np.fromiter(tqdm(pool.map(decode_into, range(len(self))), total=len(self), desc=desc,
                                    unit="image", disable=not progress), bool, len(self))
        self.skipped += [path for path, ok in zip(self.files, kept) if not ok and path not in self.skipped]
        if not kept.any():
            raise DataError(f"none of the {len(self)} images in {self.root} could be decoded")
        return (out if kept.all() else out[kept]), kept

    def _submit(self, pool: ThreadPoolExecutor, pre: Preprocess, start: int, size: int, pixels: bool) -> list:
        return [pool.submit(_decode, path, pre, pixels) for path in self.files[start:start + size]]

    def _make_batch(self, start: int, arrays: list[np.ndarray | None]) -> Batch | None:
        """Stack the decoded arrays of the batch at ``start``; record the failed ones."""
        keep = [i for i, a in enumerate(arrays) if a is not None]
        for i, a in enumerate(arrays):
            path = self.files[start + i]
            if a is None and path not in self.skipped:
                self.skipped.append(path)
        if not keep:
            return None
        images = np.stack([arrays[i] for i in keep])
        labels = self.labels[[start + i for i in keep]]
        return Batch(images, labels, [self.files[start + i] for i in keep])
