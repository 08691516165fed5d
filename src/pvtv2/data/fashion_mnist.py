"""Fashion-MNIST from its IDX files: the Debian package by default, or a torchvision-style folder.

Sources, in order: ``data_dir`` if given (``<dir>/FashionMNIST/raw/``, ``<dir>/raw/`` or ``<dir>/`` holding the
four IDX files, gzipped or not: torchvision's layout), else ``/usr/share/datasets/fashion-mnist`` (the Debian
package ``dataset-fashion-mnist``). :func:`download_fashion_mnist` fetches it with torchvision (needs internet).
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Per-pixel mean and std of the 60k training images (values in [0, 1]).
MEAN, STD = 0.2860, 0.3530
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class TensorDataset:
    """A whole split in memory: ``images`` uint8 ``(N, H, W)`` (or ``(N, C, H, W)``), ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> TensorDataset:
        """The first ``n`` samples (all when ``n`` is None or larger than the split)."""
        if n is None or n >= len(self):
            return self
        return TensorDataset(self.images[:n], self.labels[:n], self.classes, self.source)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not): the magic number gives the dtype and rank, then big-endian sizes."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path} cannot be read ({e}); reinstall the data (apt-get install --reinstall "
                        "dataset-fashion-mnist) or pass another --data-dir") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path} is truncated: {len(data) - offset} bytes of data for a {dims} array")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for sub in ("FashionMNIST/raw", "raw", "."):
        for name in (stem, stem + ".gz"):
            p = directory / sub / name
            if p.is_file():
                return p
    return None


def find_source(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding the IDX files, or one line saying how to get them."""
    candidates = [Path(data_dir)] if data_dir else [DEBIAN_DIR]
    for d in candidates:
        if all(_find(d, stem) for pair in _FILES.values() for stem in pair):
            return d
    if data_dir:
        raise DataError(
            f"no Fashion-MNIST IDX files under {data_dir} (looked in FashionMNIST/raw/, raw/ and the folder itself "
            f"for {', '.join(_FILES['train'] + _FILES['test'])}[.gz]); omit --data-dir to use the Debian package"
        )
    raise DataError(
        f"Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' (files in {DEBIAN_DIR}), "
        "or pass --data-dir DIR with torchvision's layout (DIR/FashionMNIST/raw/*-ubyte[.gz])"
    )


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike[str] | None = None) -> TensorDataset:
    """One split of Fashion-MNIST as uint8 tensors.

    Args:
        split: ``"train"`` (60k) or ``"test"`` (10k).
        data_dir: a folder in torchvision's layout; default: the Debian package's files.

    Raises:
        DataError: files missing (naming ``apt-get install dataset-fashion-mnist``), unreadable or inconsistent.
    """
    if split not in _FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    root = find_source(data_dir)
    img_path, lbl_path = (_find(root, stem) for stem in _FILES[split])
    assert img_path is not None and lbl_path is not None
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{img_path} and {lbl_path} do not match: images {images.shape}, labels {labels.shape}")
    if labels.max(initial=0) >= len(CLASSES):
        raise DataError(f"{lbl_path} holds label {labels.max()}, but Fashion-MNIST has {len(CLASSES)} classes")
    log.debug("Fashion-MNIST %s: %d images from %s", split, len(labels), root)
    return TensorDataset(
        torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), CLASSES, str(root)
    )


def download_fashion_mnist(root: str | os.PathLike[str]) -> Path:
    """Download Fashion-MNIST into ``root`` with torchvision (``root/FashionMNIST/raw``) and return ``root``."""
    from torchvision.datasets import FashionMNIST

    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except (OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not download Fashion-MNIST into {root} ({first}); offline, install the Debian "
                        "package instead: sudo apt-get install dataset-fashion-mnist") from None
    return Path(root)
