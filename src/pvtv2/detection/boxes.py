"""Box decoding and mask pasting as mmdet 2.x does them (``DeltaXYWHBBoxCoder``, ``FCNMaskHead.get_seg_masks``).

torchvision's :class:`~torchvision.models.detection._utils.BoxCoder` clamps the log-scale deltas from above only and
its ``paste_masks_in_image`` resizes each mask to the integer box and pastes it with one pixel of padding; the
released detectors clamp both ways and sample each mask over the image with ``grid_sample``. Both differences show in
the final boxes and masks, so the detectors here use the two functions below.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder


class DeltaXYWHCoder(BoxCoder):
    """torchvision's coder (``weights`` = 1 / mmdet's ``target_stds``; means 0 in every released config) with mmdet's
    decoding: ``dw``, ``dh`` clamped to ``[-log(1000/16), log(1000/16)]`` (``wh_ratio_clip=16/1000``)."""

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """``(N, 4k)`` deltas on ``(N, 4)`` reference boxes -> ``(N, 4k)`` boxes XYXY (not clipped)."""
        boxes = boxes.to(rel_codes.dtype)
        wx, wy, ww, wh = self.weights
        px, py = (boxes[:, 0:1] + boxes[:, 2:3]) * 0.5, (boxes[:, 1:2] + boxes[:, 3:4]) * 0.5  # (N, 1)
        pw, ph = boxes[:, 2:3] - boxes[:, 0:1], boxes[:, 3:4] - boxes[:, 1:2]
        clip = self.bbox_xform_clip
        dx, dy = rel_codes[:, 0::4] / wx, rel_codes[:, 1::4] / wy  # (N, k)
        dw = (rel_codes[:, 2::4] / ww).clamp(-clip, clip)
        dh = (rel_codes[:, 3::4] / wh).clamp(-clip, clip)
        gw, gh = pw * dw.exp(), ph * dh.exp()
        gx, gy = px + pw * dx, py + ph * dy
        out = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=2)  # (N, k, 4)
        return out.flatten(1)


def delta_coder(stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> DeltaXYWHCoder:
    """The coder of mmdet's ``DeltaXYWHBBoxCoder(target_means=0, target_stds=stds)``."""
    return DeltaXYWHCoder(tuple(1.0 / s for s in stds), bbox_xform_clip=abs(math.log(16 / 1000)))


def paste_masks(masks: Tensor, boxes: Tensor, size: tuple[int, int], chunk: int = 16) -> Tensor:
    """Per-box mask probabilities ``(N, 1, M, M)`` sampled over the image: ``(N, 1, H, W)``. Pixel centres are mapped
    into their box and the mask is read there bilinearly with zeros outside (mmdet's ``_do_paste_mask``); a pixel is
    in the instance when its value is >= 0.5 (``mask_thr_binary``)."""
    h, w = size
    out = masks.new_zeros(len(masks), 1, h, w)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=masks.device, dtype=torch.float32) + 0.5
    for start in range(0, len(masks), chunk):
        b = boxes[start : start + chunk].float()
        x0, y0, x1, y1 = b.split(1, dim=1)  # (n, 1) each
        gx = (xs[None] - x0) / (x1 - x0) * 2 - 1  # (n, W) in the box's [-1, 1]
        gy = (ys[None] - y0) / (y1 - y0) * 2 - 1  # (n, H)
        gx, gy = gx.nan_to_num(posinf=0.0, neginf=0.0), gy.nan_to_num(posinf=0.0, neginf=0.0)  # empty boxes
        n = len(b)
        grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=3)  # (n, H, W, 2)
        out[start : start + n] = F.grid_sample(masks[start : start + n].float(), grid, align_corners=False)
    return out
