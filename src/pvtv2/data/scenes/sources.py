"""What scenes are made of: Fashion-MNIST items (with their silhouettes) and photographs bundled with scikit-image.

The two splits share no source at all: train scenes paste items of the 60k Fashion-MNIST training images on crops
of :data:`TRAIN_PHOTOS`, test scenes paste items of the 10k test images on crops of :data:`TEST_PHOTOS`. Both photo
sets hold colour photographs, a texture, scientific images and greyscale photographs, so the test backgrounds are
new images of the same kinds. Every photo is in the scikit-image wheel (``skimage.data``; no download).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from ...errors import DataError
from ..fashion_mnist import CLASSES, load_fashion_mnist

SPLITS = ("train", "test")
# skimage.data loaders, by kind. `cat` is `chelsea` again, `motorcycle_right` is another view of the motorcycle:
# neither is used, so no scene shares a photograph with the other split.
TRAIN_PHOTOS = (
    "astronaut", "chelsea", "coffee",  # colour photographs
    "hubble_deep_field", "immunohistochemistry",  # scientific colour images
    "brick", "grass",  # textures
    "camera", "moon", "coins", "cell", "page",  # greyscale photographs
)
TEST_PHOTOS = (
    "rocket", "stereo_motorcycle",  # colour photographs
    "retina",  # scientific colour image
    "gravel",  # texture
    "clock", "text",  # greyscale photographs
)
PHOTOS = {"train": TRAIN_PHOTOS, "test": TEST_PHOTOS}
THRESHOLD = 10  # a Fashion-MNIST pixel above this (of 255) belongs to the item
MAX_HOLE = 8  # enclosed background regions up to this many pixels (of 28x28) are filled: dark patterns on the
# garment; larger ones stay background (a bag's handle, gaps between a sandal's straps)


def load_photo(name: str) -> Image.Image:
    """One bundled scikit-image photograph as an RGB image (greyscale ones repeated on the three channels)."""
    try:
        import skimage.data
    except ImportError:
        raise DataError("the scenes' backgrounds are scikit-image's bundled photos: pip install scikit-image") from None
    try:
        pixels = getattr(skimage.data, name)()
    except (AttributeError, ModuleNotFoundError, OSError, ValueError) as e:
        raise DataError(f"scikit-image photo {name!r} cannot be loaded ({e}); reinstall scikit-image") from None
    if isinstance(pixels, tuple):  # stereo_motorcycle: (left, right, disparity)
        pixels = pixels[0]
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
    return Image.fromarray(np.ascontiguousarray(pixels[:, :, :3]), "RGB")


def silhouette(item: np.ndarray) -> np.ndarray:
    """The instance mask of a Fashion-MNIST item: pixels above :data:`THRESHOLD`, small enclosed holes filled."""
    mask = item > THRESHOLD
    holes, n = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if n:
        sizes = np.bincount(holes.ravel())  # sizes[0] counts everything outside the holes
        mask |= (sizes <= MAX_HOLE)[holes] & (holes > 0)
    return mask


@dataclass(frozen=True)
class Sources:
    """The inputs of one split: Fashion-MNIST items with labels 0..9, and the background photographs."""

    split: str
    items: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64, index into CLASSES
    photos: tuple[Image.Image, ...]
    photo_names: tuple[str, ...]


def load_sources(split: str, data_dir: str | os.PathLike[str] | None = None) -> Sources:
    """Fashion-MNIST ``train`` (60k) or ``test`` (10k) and that split's photographs."""
    if split not in SPLITS:
        raise DataError(f"unknown scenes split {split!r}; use one of {', '.join(SPLITS)}")
    fm = load_fashion_mnist(split, data_dir)
    if fm.classes != CLASSES:
        raise DataError(f"{fm.source} has classes {fm.classes}, not Fashion-MNIST's")
    photos = tuple(load_photo(name) for name in PHOTOS[split])
    return Sources(split, fm.images.numpy(), fm.labels.numpy(), photos, PHOTOS[split])
