"""Instance masks of the R-CNN mask heads as mmdet 2.x makes them: training targets and pasting into the image.

- :func:`mask_targets`: each positive RoI's ground-truth mask cropped and resized to the head's grid by
  half-pixel-aligned RoIAlign, then binarised at 0.5 (mmdet's ``BitmapMasks.crop_and_resize``). The masks are
  padded to the image's multiple of 32 first, as mmdet's pipeline pads them, so RoIs at the image border sample
  the same zeros.
- :func:`paste_masks`: the ``(h, w)`` probabilities of each detection resampled into its box in the full image
  with ``grid_sample`` (mmdet's ``_do_paste_mask``, from detectron2), each within its box +-1 pixel as mmdet does
  on CPU. torchvision's ``paste_masks_in_image`` pads and resizes instead, which moves mask borders by a pixel.
- :class:`PastingTransform`: torchvision's ``GeneralizedRCNNTransform`` whose ``postprocess`` pastes that way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import roi_align


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, gt_index: torch.Tensor, size: int,
                 pad_shape: tuple[int, int]) -> torch.Tensor:
    """Binary ``(P, size, size)`` targets of ``P`` positive boxes.

    Args:
        gt_masks: ``(G, H, W)`` uint8/bool masks of one image (H, W: the image without padding).
        boxes: ``(P, 4)`` positive RoIs, XYXY in the same pixels.
        gt_index: ``(P,)`` the ground truth of each RoI.
        size: the mask head's output side (28).
        pad_shape: the image padded to a multiple of 32, ``(H', W')``.
    """
    if boxes.numel() == 0:
        return boxes.new_zeros(0, size, size)
    h, w = gt_masks.shape[-2:]
    masks = F.pad(gt_masks.to(boxes.dtype), (0, pad_shape[1] - w, 0, pad_shape[0] - h))[:, None]  # (G, 1, H', W')
    clipped = torch.stack([boxes[:, 0].clamp(0, pad_shape[1]), boxes[:, 1].clamp(0, pad_shape[0]),
                           boxes[:, 2].clamp(0, pad_shape[1]), boxes[:, 3].clamp(0, pad_shape[0])], dim=1)
    rois = torch.cat([gt_index[:, None].to(boxes.dtype), clipped], dim=1)  # pool each RoI from its own mask
    return (roi_align(masks, rois, (size, size), 1.0, 0, aligned=True)[:, 0] >= 0.5).to(boxes.dtype)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """``(N, 1, h, w)`` probabilities in their boxes -> ``(N, 1, H, W)`` probabilities in the image.

    Args:
        masks: per detection, its mask on the box (sigmoid already applied).
        boxes: ``(N, 4)`` XYXY boxes in the pixels of ``image_size``.
        image_size: ``(H, W)``.
    """
    img_h, img_w = int(image_size[0]), int(image_size[1])
    out = masks.new_zeros(masks.size(0), 1, img_h, img_w)
    for i in range(masks.size(0)):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        left, top = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        right, bottom = min(math.ceil(x1) + 1, img_w), min(math.ceil(y1) + 1, img_h)
        if right <= left or bottom <= top:
            continue
        box = boxes[i : i + 1].float()
        ys = torch.arange(top, bottom, device=masks.device, dtype=torch.float32) + 0.5
        xs = torch.arange(left, right, device=masks.device, dtype=torch.float32) + 0.5
        ys = (ys - box[:, 1]) / (box[:, 3] - box[:, 1]) * 2 - 1  # pixel centres in the box's [-1, 1]
        xs = (xs - box[:, 0]) / (box[:, 2] - box[:, 0]) * 2 - 1
        ys, xs = torch.nan_to_num(ys, posinf=0.0, neginf=0.0), torch.nan_to_num(xs, posinf=0.0, neginf=0.0)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]  # (1, h', w', 2) as (x, y)
        out[i, :, top:bottom, left:right] = F.grid_sample(masks[i : i + 1].float(), grid, align_corners=False)[0]
    return out


class PastingTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, resize, pad to 32) whose ``postprocess`` maps boxes back to
    the original image as torchvision does and pastes ``(N, 1, h, w)`` mask probabilities with
    :func:`paste_masks`."""

    def postprocess(self, result: list[dict[str, torch.Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        if self.training:
            return result
        for pred, size, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], size, original)
            if "masks" in pred:
                pred["masks"] = paste_masks(pred["masks"], pred["boxes"], original)
        return result
