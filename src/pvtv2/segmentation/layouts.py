"""The on-disk layouts: the scenes benchmark, ADE20K, Pascal VOC (and labelme's VOC export), plain image/mask
folders (no model code)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.scenes import default_split, is_scenes_root
from ..errors import DataError
from .classes import ADE20K_CLASSES, VOC_CLASSES
from .datasets import DatasetMeta, OnError, SegmentationDataset, plain_name, read_class_names

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".png", ".npy", ".bmp", ".tif", ".tiff")


def _files(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` with one of ``exts`` (also ``name.ext.gz``)."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist")
    out = {}
    for p in sorted(folder.iterdir()):
        plain = plain_name(p)
        suffix = os.path.splitext(plain)[1].lower()
        if p.is_file() and suffix in exts:
            out[os.path.splitext(plain)[0]] = p
    return out


def pair_folders(
    images: str | os.PathLike[str], masks: str | os.PathLike[str], *, ids: Sequence[str] | None = None, strict: bool = False
) -> list[tuple[Path, Path]]:
    """Match images and masks by file stem. Unmatched files are logged and left out (``strict``: DataError)."""
    imgs, msks = _files(Path(images), IMAGE_EXTS), _files(Path(masks), MASK_EXTS)
    wanted = list(ids) if ids is not None else sorted(imgs)
    no_mask = [s for s in wanted if s in imgs and s not in msks]
    no_image = [s for s in (ids if ids is not None else msks) if s not in imgs]
    for what, stems in (("images without a mask", no_mask), ("masks/ids without an image", no_image)):
        if stems:
            msg = f"{len(stems)} {what} in {images} / {masks} (e.g. {stems[:3]})"
            if strict:
                raise DataError(msg + "; add the missing files or pass --on-error skip")
            log.warning("%s; left out", msg)
    pairs = [(imgs[s], msks[s]) for s in wanted if s in imgs and s in msks]
    if not pairs:
        raise DataError(f"no image/mask pairs with matching names in {images} and {masks}")
    return pairs


def ade20k(
    root: str | os.PathLike[str], split: str = "training", *, transforms: Callable[..., Any] | None = None,
    on_error: OnError = "skip",
) -> SegmentationDataset:
    """ADE20K SceneParsing (``ADEChallengeData2016``): ``images/{split}/*.jpg`` + ``annotations/{split}/*.png``,
    150 classes, label 0 ignored (reduce_zero_label). ``split`` is ``training`` or ``validation``."""
    root = Path(root)
    pairs = pair_folders(root / "images" / split, root / "annotations" / split, strict=on_error == "raise")
    meta = DatasetMeta(150, ADE20K_CLASSES, 255, reduce_zero_label=True)
    return SegmentationDataset(pairs, meta, transforms=transforms, on_error=on_error, name=f"ADE20K {split}")


def voc(
    root: str | os.PathLike[str], split: str | None = None, *, transforms: Callable[..., Any] | None = None,
    on_error: OnError = "skip",
) -> SegmentationDataset:
    """Pascal VOC layout: ``JPEGImages/`` + ``SegmentationClass/`` label PNGs (255 ignored).

    ``split`` reads ids from ``ImageSets/Segmentation/{split}.txt``; None takes every mask. labelme's export
    (``SegmentationClassPNG/`` + ``class_names.txt``) is read the same way.
    """
    root = Path(root)
    masks = root / "SegmentationClass"
    if not masks.is_dir() or not _files(masks, (".png",)):
        masks = root / "SegmentationClassPNG" if (root / "SegmentationClassPNG").is_dir() else masks
    ids = None
    if split is not None:
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"VOC split file {listing} does not exist; pass a split that has one, or none")
        ids = read_class_names(listing)  # one id per line
    names_file = root / "class_names.txt"
    names = read_class_names(names_file) if names_file.exists() or Path(f"{names_file}.gz").exists() else VOC_CLASSES
    pairs = pair_folders(root / "JPEGImages", masks, ids=ids, strict=on_error == "raise")
    meta = DatasetMeta(len(names), tuple(names), 255)
    return SegmentationDataset(pairs, meta, transforms=transforms, on_error=on_error, name=f"VOC {root.name}")


def folder(
    images: str | os.PathLike[str], masks: str | os.PathLike[str], *, num_classes: int,
    class_names: Sequence[str] | None = None, ignore_index: int = 255, reduce_zero_label: bool = False,
    transforms: Callable[..., Any] | None = None, on_error: OnError = "skip",
) -> SegmentationDataset:
    """Plain folders of images and label masks matched by file stem."""
    names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names given for {num_classes} classes")
    pairs = pair_folders(images, masks, strict=on_error == "raise")
    meta = DatasetMeta(num_classes, names, ignore_index, reduce_zero_label)
    return SegmentationDataset(pairs, meta, transforms=transforms, on_error=on_error, name=f"folder {images}")


def scenes(
    root: str | os.PathLike[str], split: str = "train", *, transforms: Callable[..., Any] | None = None,
    on_error: OnError = "skip",
) -> SegmentationDataset:
    """The scenes benchmark (:mod:`pvtv2.data.scenes`): ``{split}/*.png`` + ``masks/{split}/*.png``, 0 = background,
    1..10 the Fashion-MNIST classes. ``split`` is ``train`` or ``test``."""
    from ..data.scenes import scenes_paths

    paths = scenes_paths(root)
    pairs = pair_folders(paths.images(split), paths.masks(split), strict=on_error == "raise")
    meta = DatasetMeta(paths.num_classes, paths.class_names, 255)
    return SegmentationDataset(pairs, meta, transforms=transforms, on_error=on_error, name=f"scenes {split}")


def build_dataset(
    root: str | os.PathLike[str], *, layout: str = "auto", split: str | None = None, masks: str | None = None,
    num_classes: int | None = None, class_names: Sequence[str] | None = None, reduce_zero_label: bool = False,
    transforms: Callable[..., Any] | None = None, on_error: OnError = "skip",
) -> SegmentationDataset:
    """Open ``root`` in one of the layouts ``ade20k``, ``voc`` or ``folder`` (``auto``: guessed from its folders).

    Args:
        root: the dataset root (``folder``: the image folder).
        layout: ``auto``, ``ade20k``, ``voc`` or ``folder``.
        split: ADE20K ``training``/``validation`` (default training), VOC ``ImageSets`` split (default: all).
        masks: the mask folder of the ``folder`` layout.
        num_classes, class_names, reduce_zero_label: the classes of the ``folder`` layout.
        transforms: joint image/mask transforms.
        on_error: ``skip`` or ``raise`` for bad samples.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    if layout == "auto":
        if is_scenes_root(root):
            layout = "scenes"
        elif (root / "images").is_dir() and (root / "annotations").is_dir():
            layout = "ade20k"
        elif (root / "JPEGImages").is_dir():
            layout = "voc"
        elif masks is not None:
            layout = "folder"
        else:
            raise DataError(
                f"cannot tell the layout of {root}: expected images/ + annotations/ (ADE20K), JPEGImages/ + "
                "SegmentationClass/ (VOC), or an image folder with --masks DIR"
            )
    if layout == "scenes":
        return scenes(root, default_split(root, split, held_out=False), transforms=transforms, on_error=on_error)
    if layout == "ade20k":
        return ade20k(root, split or "training", transforms=transforms, on_error=on_error)
    if layout == "voc":
        return voc(root, split, transforms=transforms, on_error=on_error)
    if layout == "folder":
        if masks is None or num_classes is None:
            raise DataError("the folder layout needs a mask folder (--masks) and --num-classes")
        return folder(root, masks, num_classes=num_classes, class_names=class_names,
                      reduce_zero_label=reduce_zero_label, transforms=transforms, on_error=on_error)
    raise DataError(f"unknown dataset layout {layout!r}; choose auto, scenes, ade20k, voc or folder")


def evaluation_split(root: str | os.PathLike[str], split: str | None) -> str | None:
    """``split``, or the held-out split of a scenes or ADE20K root when none is given (never score on the training
    images)."""
    if is_scenes_root(root):
        return default_split(root, split, held_out=True)
    if split is None and (Path(root) / "annotations" / "validation").is_dir():
        return "validation"
    return split
