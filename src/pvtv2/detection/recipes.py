"""The named detection recipes (SPEC section 4, the released mmdet configs) and their transforms v2 pipelines.

Training images are resized by the data pipeline (``torchvision.transforms.v2``: boxes and masks follow), so the
detector's own transform only normalises them (``_skip_resize``); at evaluation the detector resizes to
``test_size`` / ``max_size`` itself and maps its boxes back to the original image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torchvision.transforms import v2

from ..errors import PVTError
from .augment import mstrain_crop_transforms


@dataclass(frozen=True)
class DetectionRecipe:
    """One training schedule. Learning rates are for the released total batch (8 GPUs x 2 images)."""

    name: str
    train_sizes: tuple[int, ...]  # shorter side, drawn uniformly per image
    max_size: int  # longer side at most
    test_size: int  # shorter side at evaluation
    epochs: int
    milestones: tuple[int, ...]  # epochs after which the lr is multiplied by 0.1
    weight_decay: float
    batch_size: int = 16  # total images per step the learning rates belong to
    warmup_iters: int = 500  # mmdet's linear warm-up ...
    warmup_ratio: float = 0.001  # ... from lr * warmup_ratio
    flip_prob: float = 0.5
    clip_grad: float | None = None
    # With both set, half the images are resized to a shorter side from crop_resize_sizes, cropped to sides drawn
    # from crop_size = (low, high) and resized as the others (:func:`.augment.mstrain_crop_transforms`).
    crop_resize_sizes: tuple[int, ...] = ()
    crop_size: tuple[int, int] | None = None
    no_decay_keys: tuple[str, ...] = ()  # parameter-name substrings without weight decay (mmdet's custom_keys)

    def replace(self, **changes: Any) -> DetectionRecipe:
        """A copy with some fields changed (e.g. small sizes for a CPU run)."""
        return replace(self, **changes)


RECIPES: dict[str, DetectionRecipe] = {
    # 1x: 12 epochs, steps after 8 and 11, shorter side 800 / longer <= 1333, flip, AdamW wd 1e-4.
    "1x": DetectionRecipe("1x", (800,), 1333, 800, 12, (8, 11), 1e-4),
    # 3x as the paper's text describes it: 36 epochs, steps after 27 and 33, multi-scale shorter side 640-800
    # (mmdet's "range" mode), AdamW wd 0.05.
    "3x": DetectionRecipe("3x", tuple(range(640, 801)), 1333, 800, 36, (27, 33), 0.05),
    # 3x_mstrain as released (whai362/PVT *_3x_mstrain_fp16.py: ATSS, GFL, Cascade Mask R-CNN, Sparse R-CNN): the 3x
    # schedule with DETR's augmentation (shorter side 480-800 step 32; half the time resize to 400/500/600, random
    # crop 384-600, then that resize) and no weight decay on norms (paramwise_cfg custom_keys).
    "3x_mstrain": DetectionRecipe("3x_mstrain", tuple(range(480, 801, 32)), 1333, 800, 36, (27, 33), 0.05,
                                  crop_resize_sizes=(400, 500, 600), crop_size=(384, 600),
                                  no_decay_keys=("absolute_pos_embed", "relative_position_bias_table", "norm")),
}


def get_recipe(name: str, **changes: Any) -> DetectionRecipe:
    """A named recipe (``"1x"``, ``"3x"`` or ``"3x_mstrain"``), optionally with fields changed."""
    if name not in RECIPES:
        raise PVTError(f"unknown detection recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name].replace(**changes) if changes else RECIPES[name]


def train_transforms(recipe: DetectionRecipe) -> v2.Compose:
    """Resize (random shorter side from ``train_sizes``, longer <= ``max_size``), flip, to float, drop degenerate
    boxes: the recipe's training augmentation on images, boxes and masks together (with a crop policy:
    :func:`.augment.mstrain_crop_transforms`)."""
    if recipe.crop_size is not None:
        return mstrain_crop_transforms(recipe)
    return v2.Compose(
        [
            v2.RandomShortestSize(min_size=list(recipe.train_sizes), max_size=recipe.max_size),
            v2.RandomHorizontalFlip(recipe.flip_prob),
            v2.ToDtype(torch.float32, scale=True),
            v2.SanitizeBoundingBoxes(),
        ]
    )


def eval_transforms() -> v2.Compose:
    """To float only: the detector resizes to the recipe's test size and returns boxes in original pixels."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])
