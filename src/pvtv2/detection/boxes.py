"""Box arithmetic exactly as mmdet 2.x does it: the delta coder, class-wise NMS and RoI tensors.

torchvision has equivalents (``BoxCoder``, ``batched_nms``) that differ in the last digits or the edge cases
(``BoxCoder`` clamps only growth, computes centres as ``x1 + w/2``; ``batched_nms`` loops per class above 1000
boxes on CPU), which would move a detector's outputs away from the released one's by more than rounding. The
functions here follow mmdet's formulas operation for operation (``mmdet/core/bbox/coder/delta_xywh_bbox_coder.py``,
``mmcv/ops/nms.py`` ``batched_nms``) and use torchvision's ``nms`` kernel, as mmcv's CUDA kernel computes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.ops import nms

# mmdet's ``wh_ratio_clip=16/1000``: a delta may scale a box by at most 1000/16 = 62.5 either way.
MAX_LOG_SCALE = abs(math.log(16 / 1000))


def encode_deltas(boxes: torch.Tensor, targets: torch.Tensor, stds: Sequence[float]) -> torch.Tensor:
    """``(N, 4)`` XYXY boxes and their ``(N, 4)`` targets -> ``(N, 4)`` normalised deltas (dx, dy, dw, dh) / stds."""
    boxes, targets = boxes.float(), targets.float()
    px, py = (boxes[:, 0] + boxes[:, 2]) * 0.5, (boxes[:, 1] + boxes[:, 3]) * 0.5
    pw, ph = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gx, gy = (targets[:, 0] + targets[:, 2]) * 0.5, (targets[:, 1] + targets[:, 3]) * 0.5
    gw, gh = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return deltas / deltas.new_tensor(stds)


def decode_deltas(
    boxes: torch.Tensor, deltas: torch.Tensor, stds: Sequence[float], max_shape: Sequence[int] | None = None
) -> torch.Tensor:
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


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float,
                split_threshold: int = 10000) -> torch.Tensor:
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


def boxes_to_rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image ``(n_i, 4)`` boxes -> ``(sum n_i, 5)`` RoIs ``(image index, x1, y1, x2, y2)`` (mmdet's
    ``bbox2roi``; the format of ``torchvision.ops.roi_align``)."""
    rois = [torch.cat([b.new_full((len(b), 1), i), b[:, :4]], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rois) if rois else torch.zeros(0, 5)
