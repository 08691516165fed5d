"""RoI pooling over the FPN levels and the mask targets cropped the same way, as mmdet 2.x computes them.

- :class:`LevelRoIAlign`: mmdet's ``SingleRoIExtractor``: RoI -> level ``floor(log2(sqrt(area) / 56 + 1e-6))``
  (``finest_scale=56``) on the 4 FPN maps, ``RoIAlign(sampling_ratio=0, aligned=True)``. torchvision's
  ``MultiScaleRoIAlign`` always pools with ``aligned=False`` (half a pixel off) and infers the scales from sizes.
- :func:`mask_targets`, used by the Mask R-CNN and cascade heads: mask targets cropped with ``aligned=True`` and
  binarised at 0.5 (``BitmapMasks.crop_and_resize``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.boxes import box_area


class LevelRoIAlign(MultiScaleRoIAlign):
    """RoIAlign over FPN levels with mmdet's level rule and ``aligned=True`` (see the module doc).

    Args:
        featmap_names: the FPN maps RoIs are pooled from, finest first.
        output_size: pooled size (7 for boxes, 14 for masks).
        strides: stride of each of those maps (4, 8, 16, 32).
        sampling_ratio: bilinear samples per bin side (0: ``ceil(bin size)``, the released setting).
        finest_scale: RoIs smaller than ``2 * finest_scale`` (side ``sqrt(area)``) go to the finest map.
    """

    def __init__(self, featmap_names: list[str], output_size: int, strides: list[int], *, sampling_ratio: int = 0,
                 finest_scale: float = 56.0) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.strides = [int(s) for s in strides]
        self.finest_scale = finest_scale

    def levels(self, rois: Tensor) -> Tensor:
        """``(K, 5)`` RoIs -> level index ``(K,)`` of each."""
        scale = box_area(rois[:, 1:]).sqrt()
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.strides) - 1).long()

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """FPN maps + per-image boxes ``(k_i, 4)`` -> pooled features ``(sum k_i, C, S, S)``."""
        feats = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])  # (K, 5)
        level = self.levels(rois)
        out = feats[0].new_zeros(len(rois), feats[0].shape[1], *self.output_size)
        for i, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(level == i)[0]
            if len(idx):
                out[idx] = roi_align(feat, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio,
                                     aligned=True).to(out.dtype)
        return out


def mask_targets(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor, size: int | tuple[int, int],
                 pad_shape: Sequence[int]) -> Tensor:
    """Binary ``(P, S, S)`` targets of ``P`` positive RoIs: each one's ground-truth mask cropped to the RoI and
    resized by half-pixel-aligned RoIAlign, then thresholded at 0.5 (mmdet's ``mask_target``).

    Args:
        gt_masks: ``(G, H, W)`` masks of one image.
        boxes: ``(P, 4)`` positive RoIs, XYXY in the masks' pixels.
        gt_index: ``(P,)`` the ground truth of each RoI.
        size: the mask head's output side (28).
        pad_shape: ``(H', W')`` the masks are zero-padded to and the RoIs clipped to first: mmdet's pipeline pads
            masks with the image, to a multiple of 32, so RoIs at the border sample zeros, not the edge pixels.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if boxes.numel() == 0:
        return boxes.new_zeros(0, *size)
    h, w = gt_masks.shape[-2:]
    ph, pw = int(pad_shape[0]), int(pad_shape[1])
    masks = F.pad(gt_masks.to(boxes.dtype), (0, pw - w, 0, ph - h))[:, None]  # (G, 1, H', W')
    clipped = torch.stack([boxes[:, 0].clamp(0, pw), boxes[:, 1].clamp(0, ph), boxes[:, 2].clamp(0, pw),
                           boxes[:, 3].clamp(0, ph)], dim=1)
    rois = torch.cat([gt_index[:, None].to(boxes.dtype), clipped], dim=1)  # each RoI pooled from its own mask
    return (roi_align(masks, rois, size, 1.0, 0, aligned=True)[:, 0] >= 0.5).to(boxes.dtype)
