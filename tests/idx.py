"""Write small MNIST-format (IDX) files for tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array (N,28,28 images or N labels) in IDX format."""
    magic = IMAGE_MAGIC if array.ndim == 3 else LABEL_MAGIC
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class lights up its own horizontal band, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
    return images, labels


def write_idx_dataset(
    folder: Path, n_train: int = 480, n_test: int = 120, compress: bool = False
) -> Path:
    """Write the four IDX files into ``folder`` (``.gz`` if ``compress``)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": make_split(n_train, 1), "t10k": make_split(n_test, 2)}
    for prefix, (images, labels) in parts.items():
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder
