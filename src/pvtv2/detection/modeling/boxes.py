"""Box arithmetic and mask pasting as mmdet 2.x does them (``DeltaXYWHBBoxCoder``, mmcv's ``batched_nms``,
``FCNMaskHead.get_seg_masks``).

torchvision's :class:`~torchvision.models.detection._utils.BoxCoder` clamps the log-scale deltas from above only and
computes centres as ``x1 + w / 2``; its ``batched_nms`` loops over the classes above 1000 boxes on CPU, and its
``paste_masks_in_image`` resizes each mask to the integer box and pastes it with one pixel of padding. The released
detectors clamp both ways, shift the classes apart for one NMS and sample each mask over the image with
``grid_sample``. These differences show in the final boxes and masks, so the detectors here use the functions below,
which follow mmdet's formulas operation for operation (the same rounding) on torchvision's ``nms`` kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import nms

# mmdet's ``wh_ratio_clip=16/1000``: a delta may scale a box by at most 1000/16 = 62.5 either way.
MAX_LOG_SCALE = abs(math.log(16 / 1000))


def encode_deltas(boxes: Tensor, targets: Tensor, stds: Sequence[float]) -> Tensor:
    """``(N, 4)`` XYXY boxes and their ``(N, 4)`` targets -> ``(N, 4)`` normalised deltas (dx, dy, dw, dh) / stds."""
    boxes, targets = boxes.float(), targets.float()
    px, py = (boxes[:, 0] + boxes[:, 2]) * 0.5, (boxes[:, 1] + boxes[:, 3]) * 0.5
    pw, ph = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gx, gy = (targets[:, 0] + targets[:, 2]) * 0.5, (targets[:, 1] + targets[:, 3]) * 0.5
    gw, gh = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return deltas / deltas.new_tensor(stds)


def decode_deltas(boxes: Tensor, deltas: Tensor, stds: Sequence[float], max_shape: Sequence[int] | None = None
                  ) -> Tensor:
    """Apply deltas to boxes (mmdet's ``delta2bbox``).

    Args:
        boxes: ``(..., N, 4)`` XYXY reference boxes (anchors, proposals).
        deltas: ``(..., N, 4k)``: one or ``k`` (class-specific) sets of normalised deltas per box.
        stds: the coder's standard deviations (dx, dy, dw, dh); means are 0 in every released config.
        max_shape: ``(H, W)`` to clip the decoded boxes to (the image without padding); ``None``: no clipping.

    Returns:
        ``(..., N, 4k)`` XYXY boxes.
    """
    d = deltas * deltas.new_tensor(stds).repeat(deltas.size(-1) // 4)  # (..., N, 4k)
    dx, dy, dw, dh = d[..., 0::4], d[..., 1::4], d[..., 2::4], d[..., 3::4]  # (..., N, k) each
    x1, y1, x2, y2 = (boxes[..., i].unsqueeze(-1) for i in range(4))  # (..., N, 1)
    px, py, pw, ph = (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1
    dw = dw.clamp(min=-MAX_LOG_SCALE, max=MAX_LOG_SCALE)
    dh = dh.clamp(min=-MAX_LOG_SCALE, max=MAX_LOG_SCALE)
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    out = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=-1)  # (..., N, k, 4)
    out = out.view(deltas.shape)
    if max_shape is not None:
        h, w = max_shape[0], max_shape[1]
        out = torch.minimum(out.clamp(min=0), out.new_tensor([w, h, w, h]).repeat(deltas.size(-1) // 4))
    return out


class DeltaXYWHCoder(BoxCoder):
    """torchvision's coder (``weights`` = 1 / mmdet's ``target_stds``; means 0 in every released config) decoding
    as mmdet does (:func:`decode_deltas`: ``dw``, ``dh`` clamped to ``[-log(1000/16), log(1000/16)]``)."""

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """``(N, 4k)`` deltas on ``(N, 4)`` reference boxes -> ``(N, 4k)`` boxes XYXY (not clipped)."""
        return decode_deltas(boxes.to(rel_codes.dtype), rel_codes, [1.0 / w for w in self.weights])


def delta_coder(stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> DeltaXYWHCoder:
    """The coder of mmdet's ``DeltaXYWHBBoxCoder(target_means=0, target_stds=stds)``."""
    return DeltaXYWHCoder(tuple(1.0 / s for s in stds), bbox_xform_clip=MAX_LOG_SCALE)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float,
                split_threshold: int = 10000) -> Tensor:
    """NMS within each group (class or level), as mmcv's ``batched_nms``: indices kept, by decreasing score.

    Below ``split_threshold`` boxes the groups are shifted apart by ``group * (max coordinate + 1)`` and one NMS
    runs (the shift changes the IoUs in the last bits, so it is kept for equality with mmcv); above, one NMS per
    group.
    """
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    if boxes.size(0) < split_threshold:
        offsets = groups.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for g in torch.unique(groups):
        idx = (groups == g).nonzero().view(-1)
        keep[idx[nms(boxes[idx], scores[idx], iou_threshold)]] = True
    kept = keep.nonzero().view(-1)
    return kept[scores[kept].sort(descending=True)[1]]


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
