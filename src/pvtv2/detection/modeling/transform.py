"""The detectors' input/output transform: torchvision's ``GeneralizedRCNNTransform`` with the released test pipeline's
resize rounding and mmdet's mask pasting.

Normalisation (ImageNet mean/std = mmdet's ``img_norm_cfg`` / 255), the keep-ratio scale
``min(short / min(h, w), long / max(h, w))`` (``Resize(img_scale=(1333, 800), keep_ratio=True)``) and zero padding to
a multiple of 32 are torchvision's. Two things are not: the resized size is rounded to the nearest pixel as mmcv's
``rescale_size`` does (torchvision floors it: 451 x 300 becomes 1202 x 800, mmdet's 1203 x 800), and masks are pasted
with :func:`~pvtv2.detection.modeling.boxes.paste_masks`. The interpolation itself stays torchvision's bilinear resampling of
the float image; mmcv resizes the uint8 image with OpenCV, which differs by about one grey level.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes

from ...data.images import mmcv_resize
from .boxes import paste_masks


def rescale_size(h: int, w: int, short: int, long: int) -> tuple[int, int]:
    """mmcv's ``rescale_size``: the keep-ratio size ``(h', w')`` fitting ``short`` x ``long``, rounded."""
    scale = min(short / min(h, w), long / max(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def mmcv_normalize(pixels: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """mmdet's ``Normalize`` (mmcv's ``imnormalize``) on 8-bit ``(..., 3, H, W)`` images, bit for bit: float32
    ``(p - 255 mean) * (1 / (255 std))`` with mean and std in float32 (``img_norm_cfg``) and the reciprocal taken in
    float64 then rounded, as OpenCV's ``subtract`` / ``multiply`` do. ``mean``, ``std``: per channel, for [0, 1]
    images (torchvision's). torchvision's ``(p / 255 - mean) / std`` differs by up to 2.4e-7, which six Sparse
    R-CNN stages amplified to 0.03 px in the boxes."""
    mean255 = torch.tensor([m * 255 for m in mean], dtype=torch.float64).float()  # (3,) = 123.675, 116.28, 103.53
    std255 = torch.tensor([s * 255 for s in std], dtype=torch.float64).float()  # (3,) = 58.395, 57.12, 57.375
    stdinv = (1 / std255.double()).float()
    return (pixels.float() - mean255.to(pixels.device)[:, None, None]) * stdinv.to(pixels.device)[:, None, None]


class DetectionTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` with mmcv's resize rounding and mmdet's mask pasting (see the module doc).

    ``_skip_resize`` (torchvision's) leaves training images at their size (the data pipeline resized them);
    ``keep_size`` does the same at test time (images at scale 1, only normalised and padded: a batch of photos of
    different sizes as mmdet's test pipeline without its ``Resize``). ``resampling="opencv"`` resizes test images as
    mmcv does (the 8-bit image through OpenCV's bilinear ``cv2.resize``, rounded to 8 bits), which is what running a
    released mmdet checkpoint needs to give mmdet's numbers (normalised as mmcv does too, :func:`mmcv_normalize`:
    the input tensor is mmdet's bit for bit); ``"torchvision"`` (the default) resamples the float image."""

    keep_size: bool = False
    resampling: str = "torchvision"

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        as_mmcv = self.resampling == "opencv" and not self.training and target is None
        if self.training and self._skip_resize:
            return image, target
        if not self.training and self.keep_size:
            return (self._as_mmcv(image, None) if as_mmcv else image), target
        h, w = image.shape[-2:]
        short = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        new_h, new_w = self.fixed_size[::-1] if self.fixed_size else rescale_size(h, w, short, self.max_size)
        if as_mmcv:
            return self._as_mmcv(image, (new_h, new_w)), target
        image, target = _resize_image_and_masks(image, short, self.max_size, target, (new_w, new_h))
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], [h, w], [new_h, new_w])
        return image, target

    def normalize(self, image: Tensor) -> Tensor:
        """``(image - mean) / std`` on a [0, 1] image, in mmcv's arithmetic (:func:`mmcv_normalize` of ``image * 255``,
        which gives back an 8-bit photo's values exactly): the model input equals mmdet's ``Normalize`` output bit for
        bit, in training too (torchvision's order differs by up to 2.4e-7, which RetinaNet's L1 box loss amplified to
        1e-2 relative in some gradients over 20 training steps)."""
        if not image.is_floating_point():
            raise TypeError(f"images must be float tensors in [0, 1], got {image.dtype}")
        if all(m == 0 for m in self.image_mean) and all(s == 1 for s in self.image_std):
            return image  # the identity (inputs already normalised)
        return mmcv_normalize(image * 255, self.image_mean, self.image_std).to(image.dtype)

    def _as_mmcv(self, image: Tensor, size: tuple[int, int] | None) -> Tensor:
        """The normalised image as mmdet's test pipeline makes it: back to the 8-bit photo (torchvision normalised
        it first), resized to ``size`` by mmcv (None: kept), normalised by mmcv's arithmetic."""
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)[:, None, None]
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)[:, None, None]
        pixels = ((image * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)  # (3, H, W) the 8-bit photo
        if size is not None:
            pixels = mmcv_resize(pixels, size)
        return mmcv_normalize(pixels, self.image_mean, self.image_std).to(image.dtype)

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        if self.training:
            return result
        for pred, size, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], size, original)
            if "masks" in pred:
                pred["masks"] = paste_masks(pred["masks"], pred["boxes"], original)
        return result


def use_detection_transform(model: Any) -> Any:
    """Replace a torchvision detector's ``transform`` by a :class:`DetectionTransform` with the same settings."""
    t = model.transform
    model.transform = DetectionTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                         size_divisible=t.size_divisible, fixed_size=t.fixed_size,
                                         _skip_resize=t._skip_resize)
    return model


__all__ = ["DetectionTransform", "mmcv_normalize", "rescale_size", "use_detection_transform"]
