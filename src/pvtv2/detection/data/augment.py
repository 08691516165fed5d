"""The released "3x mstrain" training augmentation (whai362/PVT ``detection/configs/{atss,gfl,cascade_mask_rcnn,
sparse_rcnn}_pvt_v2_b2*_3x_mstrain_fp16.py``, "augmentation strategy originates from DETR / Sparse RCNN") in
``torchvision.transforms.v2``, on images, boxes and masks together.

mmdet's pipeline: ``RandomFlip(0.5)``, then ``AutoAugment`` picking one of two policies with equal probability:
(1) ``Resize`` to a shorter side drawn from 480, 512, ..., 800 (longer <= 1333, keep ratio); (2) ``Resize`` to a
shorter side of 400, 500 or 600, ``RandomCrop(crop_type='absolute_range', crop_size=(384, 600),
allow_negative_crop=True)``, then the resize of (1) again. ``Pad(size_divisor=32)`` is the detector's transform.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

from ...data.transform import Transform
from ...errors import PVTError

if TYPE_CHECKING:
    from ..recipes import DetectionConfig


class KeepRatioResize(Transform):
    """mmdet's training ``Resize(img_scale=[(max_size, s) for s in sizes], multiscale_mode='value', keep_ratio=True)``:
    a shorter side drawn uniformly from ``sizes``, the longer side at most ``max_size``, the new size rounded as
    mmcv's ``rescale_size`` (torchvision's ``RandomShortestSize`` floors it: a 300 x 451 photo for 800 becomes
    800 x 1202 there, 800 x 1203 in mmdet), bilinear without antialiasing (OpenCV's ``cv2.resize``); boxes and masks
    follow (masks nearest).

    Args:
        sizes: the shorter sides to draw from.
        max_size: the longer side at most.
    """

    def __init__(self, sizes: list[int] | tuple[int, ...], max_size: int) -> None:
        super().__init__()
        self.sizes, self.max_size = list(sizes), max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        from ..modeling.transform import rescale_size

        h, w = query_size(flat_inputs)
        short = self.sizes[int(torch.randint(len(self.sizes), ()))]  # drawn as RandomShortestSize draws
        return {"size": list(rescale_size(h, w, short, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=False)


class RandomSizeCrop(Transform):
    """A crop whose height and width are each drawn uniformly from ``[min(side, low), min(side, high)]`` pixels, at a
    uniform position (mmdet's ``RandomCrop(crop_type='absolute_range', crop_size=(low, high))``). Boxes are shifted
    and clipped; a crop with no box left is kept (``allow_negative_crop=True``).

    Args:
        low, high: the range of each side.
    """

    def __init__(self, low: int, high: int) -> None:
        super().__init__()
        if not 0 < low <= high:
            raise PVTError(f"crop range must satisfy 0 < low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        ch = int(torch.randint(min(h, self.low), min(h, self.high) + 1, ()))
        cw = int(torch.randint(min(w, self.low), min(w, self.high) + 1, ()))
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def mstrain_crop_transforms(cfg: DetectionConfig) -> v2.Compose:
    """Flip, then half the time a multi-scale resize (``train_sizes``) and half the time a resize to
    ``crop_resize_sizes``, a :class:`RandomSizeCrop` of ``crop_size`` and the multi-scale resize; to float; boxes
    that degenerate (under 1 px a side) dropped with their labels and masks."""
    if len(cfg.crop_size) != 2 or not cfg.crop_resize_sizes:
        raise PVTError(f"a crop policy needs crop_size LOW,HIGH and crop_resize_sizes; got {cfg.crop_size} and "
                       f"{cfg.crop_resize_sizes}")

    def resize(sizes: tuple[int, ...]) -> KeepRatioResize:
        return KeepRatioResize(sizes, cfg.max_size)

    crop = v2.Compose([resize(cfg.crop_resize_sizes), RandomSizeCrop(*cfg.crop_size), resize(cfg.train_sizes)])
    return v2.Compose([
        v2.RandomHorizontalFlip(cfg.flip_prob),
        v2.RandomChoice([resize(cfg.train_sizes), crop]),
        v2.ToDtype(torch.float32, scale=True),
        v2.SanitizeBoundingBoxes(),
    ])
