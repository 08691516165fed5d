"""Scenes: a held-out dense benchmark generated from real images (detection, instance and semantic segmentation).

Each scene is a crop of a photograph bundled with scikit-image with 1-8 Fashion-MNIST items pasted on it (10
classes, 12-192 px on a 256 px canvas, random colour and flip, partial occlusion with exact visible masks). Train
scenes use only Fashion-MNIST's 60k training images and one set of photographs, test scenes only its 10k test
images and other photographs: nothing of a test scene was seen in training.

A root is written in the layouts users have::

    ROOT/annotations/instances_{train,test}.json   COCO instances: RLE masks, visible-mask areas, tight boxes
    ROOT/{train,test}/00001.png ...                the images (a COCO root: pvtv2.detection.open_dataset(ROOT,
                                                   split="train"))
    ROOT/masks/{train,test}/00001.png ...          semantic label maps, 0 = background, 1..10 = the classes
                                                   (pvtv2.segmentation.folder(ROOT / "train", ROOT / "masks/train",
                                                   num_classes=11, class_names=...))
    ROOT/class_names.txt                           background, then the 10 Fashion-MNIST classes
    ROOT/manifest.json                             generator version, settings, counts, sources, file checksums

``scenes()`` generates a root once into the cache and reuses it afterwards; ``pvtv2 data scenes --out DIR``
writes one explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError
from .compose import Layout
from .generate import ScenesSpec
from .sources import PHOTOS, SPLITS
from .store import CLASS_NAMES, cache_dir, check, default_root, ensure, read_manifest

__all__ = [
    "CLASS_NAMES",
    "PHOTOS",
    "SPLITS",
    "Layout",
    "ScenesPaths",
    "ScenesSpec",
    "cache_dir",
    "check",
    "default_root",
    "read_manifest",
    "canvas_side",
    "default_split",
    "evaluation_data",
    "is_scenes_root",
    "resolve",
    "scenes",
    "scenes_paths",
]


@dataclass(frozen=True)
class ScenesPaths:
    """Where each part of a scenes root is, for the loaders."""

    root: Path
    class_names: tuple[str, ...]  # background first (semantic label i, COCO category id i)

    @property
    def num_classes(self) -> int:
        """Classes including the background (11)."""
        return len(self.class_names)

    def annotations(self, split: str) -> Path:
        """The COCO instances file of ``split``."""
        return self.root / "annotations" / f"instances_{_split(split)}.json"

    def images(self, split: str) -> Path:
        """The image folder of ``split``."""
        return self.root / _split(split)

    def masks(self, split: str) -> Path:
        """The semantic label folder of ``split``."""
        return self.root / "masks" / _split(split)


def _split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"scenes have the splits {', '.join(SPLITS)}, not {split!r}")
    return split


def scenes_paths(root: str | os.PathLike[str]) -> ScenesPaths:
    """The parts of an existing scenes root (files checked by size only; :func:`check` compares hashes too)."""
    root = Path(root)
    reason = check(root, hashes=False)
    if reason is not None:
        raise DataError(f"{root} is not a complete scenes set ({reason}); write one with 'pvtv2 data scenes --out "
                        f"{root}' or pvtv2.data.scenes.scenes({str(root)!r})")
    manifest = read_manifest(root)
    assert manifest is not None
    return ScenesPaths(root, tuple(manifest["class_names"]))


def scenes(
    root: str | os.PathLike[str] | None = None,
    *,
    train: int = 4000,
    test: int = 500,
    size: int = 256,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 8,
    item_sizes: tuple[int, int] | None = None,
    min_visible: float = 0.25,
    workers: int = 2,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """The root of a scenes set, generated on first use and reused afterwards (after checking its checksums).

    Args:
        root: where to keep it (default: ``<cache>/scenes/<settings>-<hash>``, see :func:`cache_dir`). An existing
            folder that holds anything but scenes is refused, never overwritten.
        train, test: scenes per split.
        size: canvas side in pixels.
        seed: random seed; the same settings and seed give the same bytes.
        min_objects, max_objects: items pasted per scene (before fully occluded ones are dropped).
        item_sizes: an item's longer side in pixels, (smallest, largest); default (12, 192) scaled to ``size / 256``.
        min_visible: items with less of their silhouette visible are dropped.
        workers: processes that generate scenes (the files do not depend on it).
        data_dir: Fashion-MNIST in torchvision's layout (default: the Debian package ``dataset-fashion-mnist``).
        progress: show a tqdm bar while generating.

    Raises:
        DataError: bad settings, a ``root`` holding other files, Fashion-MNIST or scikit-image missing.
    """
    if train < 1 or test < 1:
        raise DataError(f"scenes need at least one train and one test scene (got train={train}, test={test})")
    if size < 32:
        raise DataError(f"scene size {size} is too small; use at least 32 px")
    if not 1 <= min_objects <= max_objects:
        raise DataError(f"need 1 <= min_objects <= max_objects (got {min_objects}, {max_objects})")
    if item_sizes is None:
        item_sizes = (max(4, round(12 * size / 256)), round(192 * size / 256))
    if not 4 <= item_sizes[0] <= item_sizes[1] <= size:
        raise DataError(f"item sizes {item_sizes} must satisfy 4 <= smallest <= largest <= size ({size})")
    if not 0.0 < min_visible <= 1.0:
        raise DataError(f"min_visible must be in (0, 1], got {min_visible}")
    layout = Layout(size, min_objects, max_objects, (int(item_sizes[0]), int(item_sizes[1])), min_visible)
    spec = ScenesSpec(train, test, seed, layout)
    return ensure(Path(root) if root is not None else None, spec, workers=workers, data_dir=data_dir,
                  progress=progress)


def is_scenes_root(root: str | os.PathLike[str]) -> bool:
    """A generated scenes folder (``manifest.json`` beside ``masks/``)."""
    return (Path(root) / "manifest.json").is_file() and (Path(root) / "masks").is_dir()


def canvas_side(root: str | os.PathLike[str]) -> int | None:
    """The side of a scenes folder's square canvases (their natural test scale), or None for other data."""
    manifest = read_manifest(root) if is_scenes_root(root) else None
    return int(manifest["spec"]["layout"]["size"]) if manifest else None


def default_split(root: str | os.PathLike[str], split: str | None, *, held_out: bool) -> str | None:
    """The split to read: ``split`` if given; of a scenes folder its ``train`` split, or with ``held_out`` its
    ``test`` split (the only one ever scored); of any other data ``None`` (its own default). Every task and command
    decides the scenes' split here."""
    if split is not None or not is_scenes_root(root):
        return split
    return "test" if held_out else "train"


def evaluation_data(data: str | None, val_data: str | None) -> str | None:
    """A run's evaluation set: ``val_data``, else, when the run trains on ``"scenes"``, the scenes again (scored on
    their held-out test split, see :func:`default_split`)."""
    return val_data or ("scenes" if data == "scenes" else None)


def resolve(data: str | None, counts: tuple[int, int, int] = (4000, 500, 256), progress: bool = True) -> str | None:
    """``data`` as a path: the word ``"scenes"`` names the cached benchmark of ``counts`` = (train scenes, test
    scenes, canvas side), generated on first use; anything else is returned as it is."""
    if data != "scenes":
        return data
    train, test, size = counts
    return str(scenes(train=train, test=test, size=size, progress=progress))
