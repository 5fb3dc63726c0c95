"""Decoded images kept on disk as uint8 pixels, so repeated evaluations skip JPEG decoding while
memory stays flat in the number of images.

A cache holds each image's resized, center-cropped (or letterboxed) RGB pixels (height x width x 3
bytes: 150 KB at 224, a quarter of the float32 model input); batches are read from the file with positioned reads
(no memory map, whose pages would stay resident) and normalized on the fly, exactly as
``preprocess_image`` does. The cache keeps its file open, so it stays readable after its folder
is removed (the space is freed when the cache is). Without a path the pixels stay in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .images import ImageDataset
from .preprocess import Preprocess, normalize


@dataclass
class CachedImages:
    """Decoded images with their labels and files (relative to the folder); ``batches`` yields model
    inputs."""

    pre: Preprocess
    labels: np.ndarray
    files: list[str]
    path: Path | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)  # in memory when there is no path

    def __post_init__(self):
        self._file = open(self.path, "rb") if self.path is not None else None  # noqa: SIM115 (kept open: see the module)

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_bytes(self) -> int:
        return self.pre.image_bytes

    def read(self, start: int, stop: int) -> np.ndarray:
        """uint8 pixels [stop - start, H, W, 3] of images start..stop-1."""
        stop = min(stop, len(self))
        shape = (stop - start, *self.pre.image_size, 3)
        if self._file is None:
            return self.pixels[start:stop]
        data = os.pread(self._file.fileno(), int(np.prod(shape)), start * self.image_bytes)
        return np.frombuffer(data, np.uint8).reshape(shape)

    def pixels_at(self, indices) -> np.ndarray:
        """uint8 pixels [len(indices), H, W, 3] of the images at ``indices``, in that order."""
        if not len(indices):
            return np.empty((0, *self.pre.image_size, 3), np.uint8)
        if self._file is None:
            return self.pixels[np.asarray(indices, np.intp)]
        return np.stack([self.read(int(i), int(i) + 1)[0] for i in indices])

    def gather(self, indices) -> np.ndarray:
        """Model inputs of the images at ``indices``, in that order."""
        return normalize(self.pixels_at(indices), self.pre)

    def batches(self, batch_size: int):
        """Model inputs in order, ``batch_size`` images at a time."""
        for start in range(0, len(self), batch_size):
            yield normalize(self.read(start, start + batch_size), self.pre)

    @property
    def images(self) -> np.ndarray:
        """Every model input at once (float32, 4x the cache's size in memory; prefer ``batches``)."""
        return normalize(self.read(0, len(self)), self.pre)

    def subset(self, indices) -> CachedImages:
        """The images at ``indices`` (in that order), in memory."""
        indices = np.asarray(indices, dtype=np.int64)
        return CachedImages(self.pre, self.labels[indices], [self.files[i] for i in indices],
                            pixels=self.pixels_at(indices))


def pixels_of(images: CachedImages, root: Path, dataset: ImageDataset) -> np.ndarray | None:
    """uint8 pixels of ``dataset``'s files, in its order, from ``images`` (decoded from the folder ``root``):
    None unless it holds every one of them."""
    where = {name: i for i, name in enumerate(images.files)}
    rows = []
    for path in dataset.files:
        try:
            rows.append(where[Path(path).relative_to(root).as_posix()])
        except (KeyError, ValueError):  # not decoded there, or outside the folder
            return None
    return images.pixels_at(rows)


def cache_images(dataset: ImageDataset, pre: Preprocess, path: Path | None = None, batch_size: int = 32,
                 progress: bool = True, desc: str = "decode images") -> CachedImages:
    """Decode ``dataset`` once into uint8 pixels: into the file ``path`` (streamed, so memory does
    not grow with the images) or in memory when None. Undecodable files are skipped, with a warning."""
    if path is None:
        pixels, kept = dataset.decode_pixels(pre, progress, desc)
        files = [p.relative_to(dataset.root).as_posix() for p, ok in zip(dataset.files, kept) if ok]
        return CachedImages(pre, dataset.labels[kept], files, pixels=pixels)
    labels, files = [], []
    total = -(-len(dataset) // batch_size)
    batches = tqdm(dataset.iter_batches(pre, batch_size, pixels=True), total=total, desc=desc, disable=not progress)
    with open(path, "wb") as handle:
        for batch in batches:
            handle.write(np.ascontiguousarray(batch.images, np.uint8).tobytes())
            labels.append(batch.labels)
            files += [p.relative_to(dataset.root).as_posix() for p in batch.files]
    return CachedImages(pre, np.concatenate(labels) if labels else np.empty(0, np.int64), files, Path(path))
