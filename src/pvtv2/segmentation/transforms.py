"""Training transforms of the released Semantic FPN recipe, on torchvision transforms v2 (image + Mask).

mmseg's pipeline: Resize (2048x512, ratio 0.5-2.0, keep ratio) -> RandomCrop 512 (cat_max_ratio 0.75) ->
RandomFlip 0.5 -> PhotoMetricDistortion -> Normalize -> Pad to 512 (image 0, mask 255). The photometric step
here is torchvision's ``RandomPhotometricDistort`` (the same SSD-style brightness/contrast/saturation/hue draws,
each with probability 0.5; brightness is multiplicative here, additive +-32 in mmseg).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..data.transform import Transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for kind in (tv_tensors.Image, tv_tensors.Mask):
        for x in flat_inputs:
            if isinstance(x, kind):
                return int(x.shape[-2]), int(x.shape[-1])
    raise TypeError("these transforms need a tv_tensors.Image or Mask in their input")


def _mask(flat_inputs: list[Any]) -> torch.Tensor | None:
    return next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= max(scale) and short side <= min(scale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


class RandomRescale(Transform):
    """Keep-ratio resize into ``scale * r`` with ``r ~ U(ratio_range)`` (bilinear images, nearest masks).

    Args:
        scale: (long, short) bound before the ratio, (2048, 512) for ADE20K.
        ratio_range: range of the random ratio.
    """

    def __init__(self, scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0)) -> None:
        super().__init__()
        self.scale, self.ratio_range = scale, ratio_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.ratio_range
        r = lo + float(torch.rand(())) * (hi - lo)
        h, w = _image_size(flat_inputs)
        return {"size": list(rescale_size(h, w, (int(self.scale[0] * r), int(self.scale[1] * r))))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.resize(inpt, params["size"], antialias=True)


class RandomCropCatMax(Transform):
    """Random crop of at most ``size``; re-drawn up to 10 times while one category covers more than
    ``cat_max_ratio`` of the crop's labelled pixels (mmseg's ``RandomCrop(cat_max_ratio=0.75)``).

    Args:
        size: (height, width) of the crop (an image smaller than that keeps its full extent along that side).
        cat_max_ratio: largest share one class may take (1.0 disables the check).
        ignore_index: label excluded from the shares.
    """

    def __init__(self, size: int | tuple[int, int], cat_max_ratio: float = 0.75, ignore_index: int = 255) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.cat_max_ratio, self.ignore_index = cat_max_ratio, ignore_index

    def _draw(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return top, left, ch, cw

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _image_size(flat_inputs)
        box = self._draw(h, w)
        mask = _mask(flat_inputs)
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(10):
                top, left, ch, cw = box
                labels = mask[..., top : top + ch, left : left + cw]
                _, counts = torch.unique(labels[labels != self.ignore_index], return_counts=True)
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                box = self._draw(h, w)
        return dict(zip(("top", "left", "height", "width"), box))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, **params)


class PadTo(Transform):
    """Pad bottom/right up to ``size`` (images with 0 after normalisation = the mean colour, masks with ignore)."""

    def __init__(self, size: int | tuple[int, int], ignore_index: int = 255) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _image_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size[1] - w), max(0, self.size[0] - h)]}  # left, top, right, bottom

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
        return F.pad(inpt, params["padding"], fill=fill)


def train_transforms(
    crop_size: int | tuple[int, int] = 512,
    scale: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> v2.Compose:
    """The released ADE20K training pipeline; ``(image uint8, mask) -> (normalised float image, int64 mask)``.

    Args:
        crop_size: training crop (512); smaller here for quick runs.
        scale: keep-ratio resize bound (long, short) before the random ratio (2048, 512).
        ratio_range: random resize ratio range (0.5, 2.0).
        cat_max_ratio: crop re-draw threshold on the largest class share (0.75).
        ignore_index: mask value that is ignored (and used for padding).
        mean, std: image normalisation (ImageNet).
    """
    return v2.Compose(
        [
            RandomRescale(scale, ratio_range),
            RandomCropCatMax(crop_size, cat_max_ratio, ignore_index),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomPhotometricDistort(p=0.5),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(mean, std),
            PadTo(crop_size, ignore_index),
        ]
    )


def normalize_image(image: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """``(..., 3, H, W)`` uint8 -> normalised float32 (the test-time preprocessing)."""
    return F.normalize(F.to_dtype(image.as_subclass(torch.Tensor), torch.float32, scale=True), list(mean), list(std))


def scale_for_ratio(scale: tuple[int, int], ratio: float) -> tuple[int, int]:
    """``scale`` multiplied by ``ratio`` (for quick runs at a fraction of 2048x512)."""
    return int(math.floor(scale[0] * ratio)), int(math.floor(scale[1] * ratio))
