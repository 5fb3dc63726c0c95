"""Preprocessed images kept on disk (a numpy memmap), so repeated evaluations skip JPEG decoding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .datasets import ImageDataset
from .preprocess import Preprocess


@dataclass
class CachedImages:
    """Decoded, preprocessed images [N, ...] (memory-mapped) with their labels and file names."""

    images: np.ndarray
    labels: np.ndarray
    files: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        """Contiguous batches of images, in order."""
        for start in range(0, len(self), batch_size):
            yield np.ascontiguousarray(self.images[start:start + batch_size])


def cache_images(dataset: ImageDataset, pre: Preprocess, path: Path | None = None, batch_size: int = 32,
                 progress: bool = True, desc: str = "decode images") -> CachedImages:
    """Decode ``dataset`` once into a float32 memmap at ``path`` (in memory when None).

    Undecodable files are skipped (``dataset.iter_batches`` warns about them).
    """
    shape = (len(dataset), *pre.output_shape)
    store = (np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
             if path is not None else np.empty(shape, np.float32))
    labels, files, filled = [], [], 0
    total = -(-len(dataset) // batch_size)
    for batch in tqdm(dataset.iter_batches(pre, batch_size), total=total, desc=desc, disable=not progress):
        store[filled:filled + len(batch.files)] = batch.images
        filled += len(batch.files)
        labels.append(batch.labels)
        files += [p.name for p in batch.files]
    return CachedImages(store[:filled], np.concatenate(labels), files)
