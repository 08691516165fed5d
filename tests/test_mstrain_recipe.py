"""The released "3x mstrain" recipe: its numbers and its transforms v2 pipeline (flip, multi-scale, random crop)."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from pvtv2.detection.data.augment import RandomSizeCrop
from pvtv2.detection.recipes import get_recipe, train_transforms

SIZES = set(range(480, 801, 32))


def _sample(h: int, w: int) -> tuple[tv_tensors.Image, dict]:
    image = tv_tensors.Image(torch.randint(0, 255, (3, h, w), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[10, 10, w - 10, h // 2], [w // 2, h // 2, w // 2 + 40, h // 2 + 40]],
                                     format="XYXY", canvas_size=(h, w))
    masks = tv_tensors.Mask(torch.zeros(2, h, w, dtype=torch.uint8))
    masks[0, 10:h // 2, 10:w - 10] = 1
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}


def test_recipe_numbers() -> None:
    r = get_recipe("3x_mstrain")
    assert (r.epochs, r.milestones, r.weight_decay, r.warmup_steps, r.max_size) == (36, (0.75, 33 / 36), 0.05, 500, 1333)
    assert set(r.train_sizes) == SIZES and r.crop_resize_sizes == (400, 500, 600) and r.crop_size == (384, 600)
    assert "norm" in r.no_decay_keys  # exactly these names go without decay (mmdet custom_keys)
    assert get_recipe("3x").train_sizes == tuple(range(640, 801))  # the paper's text, kept apart


def test_random_size_crop() -> None:
    """Sides drawn from [min(side, 384), min(side, 600)]: a 100 px side stays whole; boxes and masks follow."""
    torch.manual_seed(0)
    image, target = _sample(100, 700)
    out_image, out = RandomSizeCrop(384, 600)(image, target)
    h, w = out_image.shape[-2:]
    assert h == 100 and 384 <= w <= 600
    assert out["masks"].shape[-2:] == (h, w) and out["boxes"].canvas_size == (h, w)
    assert (out["boxes"][:, 0::2] <= w).all() and (out["boxes"][:, 0::2] >= 0).all()


def test_pipeline_sizes_and_both_policies() -> None:
    """Every output's shorter side is one of 480..800 step 32 (torchvision truncates where mmcv rounds: 1 px less
    at times; a square photo never hits the 1333 cap); the crop policy shows as non-square outputs of a square
    photo, the plain one as square outputs."""
    pipeline = train_transforms(get_recipe("3x_mstrain"))
    shapes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = _sample(640, 640)
        out_image, out = pipeline(image, target)
        h, w = out_image.shape[-2:]
        assert out_image.dtype == torch.float32 and {min(h, w), min(h, w) + 1} & SIZES
        assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"])
        shapes.add(h == w)
    assert shapes == {True, False}
