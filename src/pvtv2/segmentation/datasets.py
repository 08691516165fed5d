"""Semantic-segmentation samples: reading, validating and batching image/mask pairs (no model code here).

The folder layouts (ADE20K, VOC, plain folders) are in :mod:`.layouts`.

Every dataset yields ``{"image": tv_tensors.Image (3, H, W) uint8, "mask": tv_tensors.Mask (H, W) int64,
"path": str}`` before transforms. Mask values are class indices ``0..num_classes-1`` or ``ignore_index``; ADE20K's
label 0 ("other") becomes ``ignore_index`` and the rest shift down by one (``reduce_zero_label``).

Bad samples (a mask whose size differs from its image, label values outside the class range, unreadable files)
raise :class:`~pvtv2.errors.DataError` with ``on_error="raise"``; with ``on_error="skip"`` (default) the sample is
logged, counted and dropped (``__getitem__`` returns ``None`` and :func:`collate_segmentation` counts it).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors

from ..data.images import read_image
from ..errors import DataError

log = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]
Sample = dict[str, Any]


@dataclass(frozen=True)
class DatasetMeta:
    """What a model trained on the dataset needs to know (stored in segmentation checkpoints)."""

    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = 255
    reduce_zero_label: bool = False  # label 0 means "ignore" and labels 1..K become 0..K-1 (ADE20K)


# --- reading files (Debian gzips some files under /usr/share/doc: read `x.png.gz` as `x.png`) --------------------
def plain_name(path: Path) -> str:
    """The file name without a Debian ``.gz`` suffix."""
    return path.name[:-3] if path.name.endswith(".gz") else path.name


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def read_mask(path: str | os.PathLike[str]) -> torch.Tensor:
    """A label map (palette/grey PNG, 16-bit PNG or ``.npy``, optionally gzipped) as a ``(H, W)`` int64 tensor."""
    path = Path(path)
    try:
        data = _read_bytes(path)
        if plain_name(path).endswith(".npy"):
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            with Image.open(io.BytesIO(data)) as im:
                if im.mode in ("RGB", "RGBA"):
                    raise DataError(
                        f"mask {path} is a colour ({im.mode}) image; masks must hold class indices "
                        "(palette 'P', grey 'L' or 16-bit 'I;16' PNG)"
                    )
                arr = np.array(im)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, EOFError, ValueError) as e:
        raise DataError(f"cannot read mask {path}: {e.__class__.__name__}: {e}; replace or remove the file") from None
    if arr.ndim != 2:
        raise DataError(f"mask {path} has shape {arr.shape}; expected one label per pixel (H, W)")
    return torch.from_numpy(arr.astype(np.int64))


def read_class_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """One class name per line (spaces inside names are kept, e.g. ``potted plant``); ``.gz`` is read too."""
    path = Path(path)
    if not path.is_file() and Path(f"{path}.gz").is_file():
        path = Path(f"{path}.gz")
    lines = _read_bytes(path).decode("utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


# --- the dataset --------------------------------------------------------------------------------------------------
class SegmentationDataset(torch.utils.data.Dataset):
    """Image/mask pairs with a class list, validated as they are read.

    Args:
        pairs: ``(image path, mask path)`` tuples.
        meta: number of classes, names, ignore value, whether label 0 is "ignore".
        transforms: a joint callable ``(image, mask) -> (image, mask)`` (torchvision transforms v2), or None.
        on_error: ``"skip"`` (log, count, return None) or ``"raise"`` (DataError) for a bad sample.
        name: shown in messages.

    Training wraps it in :class:`~pvtv2.engine.sampling.SeededDataset`, which seeds the transforms per sample.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        meta: DatasetMeta,
        *,
        transforms: Callable[..., Any] | None = None,
        on_error: OnError = "skip",
        name: str = "dataset",
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if not pairs:
            raise DataError(f"{name}: no image/mask pairs found")
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.meta = meta
        self.transforms = transforms
        self.on_error = on_error
        self.name = name
        self.skipped: dict[str, str] = {}  # path -> reason, in this process

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Sample:
        """The raw, validated sample ``index`` (no transforms); raises DataError if it is bad."""
        img_path, mask_path = self.pairs[index]
        image = read_image(img_path)
        mask = read_mask(mask_path)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {img_path.name} is "
                f"{image.shape[2]}x{image.shape[1]}; masks must match their image pixel for pixel"
            )
        mask = self._map_labels(mask, mask_path)
        return {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask), "path": str(img_path)}

    def _map_labels(self, mask: torch.Tensor, path: Path) -> torch.Tensor:
        ignore, k = self.meta.ignore_index, self.meta.num_classes
        if self.meta.reduce_zero_label:
            mask = torch.where((mask == 0) | (mask == ignore), ignore, mask - 1)
        bad = (mask != ignore) & ((mask < 0) | (mask >= k))
        if bad.any():
            values = torch.unique(mask[bad])[:8].tolist()
            shift = " after reduce_zero_label" if self.meta.reduce_zero_label else ""
            raise DataError(
                f"mask {path} holds label values {values}{shift} outside 0..{k - 1} (ignore value {ignore}); "
                "check the number of classes, or whether this is a colour mask rather than a label map"
            )
        return mask

    def __getitem__(self, index: int) -> Sample | None:
        try:
            sample = self.load(index)
        except DataError as e:
            if self.on_error == "raise":
                raise
            path = str(self.pairs[index][0])
            if path not in self.skipped:
                log.warning("skipping a bad sample: %s", e)
            self.skipped[path] = str(e)
            return None
        if self.transforms is not None:
            sample["image"], sample["mask"] = self.transforms(sample["image"], sample["mask"])
        return sample

    def check(self) -> dict[str, str]:
        """Read and validate every sample; returns ``{image path: reason}`` of the bad ones (never raises)."""
        bad = {}
        for i in range(len(self)):
            try:
                self.load(i)
            except DataError as e:
                bad[str(self.pairs[i][0])] = str(e)
        return bad


class ResampleOnError(torch.utils.data.Dataset):
    """Training view of a skip-mode dataset: a bad sample is replaced by the next good one (so batches keep their
    size); the replaced paths travel with the sample as ``"skipped"``.

    Args:
        dataset: a :class:`SegmentationDataset` with ``on_error="skip"``.
    """

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Sample:
        skipped = []
        for k in range(len(self.dataset)):
            j = (i + k) % len(self.dataset)
            sample = self.dataset[j]
            if sample is not None:
                sample["skipped"] = skipped
                return sample
            skipped.append(str(self.dataset.pairs[j][0]))
        raise DataError(f"{self.dataset.name}: every one of its {len(self.dataset)} samples is bad (see the warnings)")


def collate_segmentation(batch: list[Sample | None]) -> dict[str, Any]:
    """Stack samples into ``{"image": (B, 3, H, W), "mask": (B, H, W), "path": [...], "skipped": n,
    "skipped_paths": [...]}``.

    Dropped (``None``) samples and those replaced by :class:`ResampleOnError` are counted in ``skipped``;
    samples of different sizes are returned as lists.
    """
    kept = [s for s in batch if s is not None]
    replaced = [p for s in kept for p in s.get("skipped", ())]
    out: dict[str, Any] = {
        "path": [s["path"] for s in kept],
        "skipped": len(batch) - len(kept) + len(replaced),
        "skipped_paths": replaced,
    }
    for key in ("image", "mask"):
        items = [s[key].as_subclass(torch.Tensor) for s in kept]
        same = len({tuple(t.shape) for t in items}) == 1
        out[key] = torch.stack(items) if items and same else items
    return out


def next_batch(batches: Any) -> dict[str, Any]:
    """``next(batches)`` for a DataLoader iterator, turning a DataError raised in a worker process (which the
    DataLoader re-raises with the worker's whole traceback as its message) back into its one-line message."""
    try:
        return next(batches)
    except DataError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        if len(lines) > 1 and "DataLoader worker" in lines[0]:
            raise DataError(lines[-1].split("DataError: ", 1)[-1]) from None
        raise
