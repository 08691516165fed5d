"""ImageFolder datasets (``root/<class>/<image>``, ImageNet's layout) that survive bad files.

Class folders are found and indexed as torchvision does (sorted names); empty class folders keep their index (so
labels still match a model trained on the full class list) and are reported. Each sample is decoded by
:func:`~pvtv2.data.images.load_image`; a file that cannot be decoded is either skipped and counted
(``on_bad="skip"``, the default: the loader's collate function drops it) or fails the run with its name.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data import default_collate

from ..errors import DataError
from ..data.images import BadImage, load_image

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ImageFolder(Dataset):
    """Images in ``root/<class>/...`` with labels by sorted class-folder name.

    Args:
        root: the split folder (e.g. ``imagenet/val``).
        transform: applied to the decoded RGB PIL image.
        on_bad: ``"skip"`` (return ``None``; :func:`collate_skip_bad` drops and counts it) or ``"error"``.
        classes: a fixed class list to index by (e.g. the training run's); folders not in it are an error.

    Raises:
        DataError: the folder is missing, has no class folders, or holds no image at all.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], Any] | None = None,
        on_bad: str = "skip",
        classes: Sequence[str] | None = None,
    ) -> None:
        from torchvision.datasets.folder import make_dataset

        self.root = Path(root)
        if on_bad not in ("skip", "error"):
            raise ValueError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist; expected {self.root}/<class>/<image files>")
        found = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not found:
            raise DataError(
                f"{self.root} has no class folders; expected the ImageNet layout {self.root}/<class>/<image>"
            )
        if classes is not None:
            unknown = [c for c in found if c not in set(classes)]
            if unknown:
                raise DataError(f"{self.root} has class folders the model does not know: {', '.join(unknown[:5])}"
                                f"{' ...' if len(unknown) > 5 else ''} (the model's classes: {len(classes)})")
            self.classes = list(classes)
        else:
            self.classes = found
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        present = {c: i for c, i in self.class_to_idx.items() if c in found}
        self.samples: list[tuple[str, int]] = make_dataset(
            str(self.root), present, extensions=IMG_EXTENSIONS, allow_empty=True
        )
        if not self.samples:
            raise DataError(f"no image files ({', '.join(IMG_EXTENSIONS)}) under {self.root}/<class>/")
        counts = Counter(t for _, t in self.samples)
        self.empty_classes = [c for c in found if counts[self.class_to_idx[c]] == 0]
        if self.empty_classes:
            shown = ", ".join(self.empty_classes[:10]) + (" ..." if len(self.empty_classes) > 10 else "")
            log.warning("%s: %d empty class folder(s) (kept in the class list, no samples): %s",
                        self.root, len(self.empty_classes), shown)
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.on_bad = on_bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        try:
            img = load_image(path)
        except BadImage:
            if self.on_bad == "error":
                raise
            return None
        return (self.transform(img) if self.transform is not None else img), target


def collate_skip_bad(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``default_collate`` of the good samples, and how many were dropped (``None`` = unreadable image)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(good)
    return images, targets, skipped
