"""Adaptive Training Sample Selection (Zhang et al. 2020), as mmdet 2.13's ``ATSSAssigner`` does it.

For each ground-truth box: on every pyramid level take the ``topk`` anchors whose centres are nearest to the box
centre; their IoUs with the box give a threshold, mean + standard deviation; candidates at or above it whose centre
lies inside the box (by more than 0.01 px) are positives. An anchor that is a positive of several boxes goes to the
one it overlaps most. ATSS and GFL both assign this way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

INSIDE_MARGIN = 0.01  # a positive's centre is more than this inside its box (mmdet's constant)


def atss_assign(
    anchors: torch.Tensor, num_level_anchors: Sequence[int], gt_boxes: torch.Tensor, topk: int = 9
) -> torch.Tensor:
    """Assign each anchor a ground-truth box or the background.

    Args:
        anchors: ``(N, 4)`` XYXY anchors of all levels, level after level.
        num_level_anchors: how many of them each level has (sums to N).
        gt_boxes: ``(G, 4)`` XYXY ground-truth boxes of the image.
        topk: candidates per level and box (the released configs: 9).

    Returns:
        ``(N,)`` int64: index into ``gt_boxes`` of each anchor's box, -1 for background.
    """
    num_gt, num_anchors = gt_boxes.shape[0], anchors.shape[0]
    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return assigned
    overlaps = box_iou(anchors, gt_boxes)  # (N, G)
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0  # (G, 2)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2.0  # (N, 2)
    distances = (centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(-1).sqrt()  # (N, G)

    candidates, start = [], 0
    for count in num_level_anchors:
        _, idx = distances[start:start + count].topk(min(topk, count), dim=0, largest=False)  # (k, G)
        candidates.append(idx + start)
        start += count
    candidate_idx = torch.cat(candidates, dim=0)  # (L*k, G): anchor indices per box
    gt_idx = torch.arange(num_gt, device=anchors.device).expand_as(candidate_idx)
    candidate_iou = overlaps[candidate_idx, gt_idx]
    threshold = candidate_iou.mean(0) + candidate_iou.std(0)  # (G,)
    is_pos = candidate_iou >= threshold[None, :]

    cand_centres = centres[candidate_idx]  # (L*k, G, 2)
    inside = torch.stack([cand_centres[..., 0] - gt_boxes[:, 0], cand_centres[..., 1] - gt_boxes[:, 1],
                          gt_boxes[:, 2] - cand_centres[..., 0], gt_boxes[:, 3] - cand_centres[..., 1]],
                         dim=1).min(dim=1)[0] > INSIDE_MARGIN  # (L*k, G)
    is_pos &= inside

    # Each anchor goes to the box it overlaps most among those it is a positive of.
    iou_if_pos = torch.full_like(overlaps, float("-inf"))
    iou_if_pos[candidate_idx[is_pos], gt_idx[is_pos]] = overlaps[candidate_idx[is_pos], gt_idx[is_pos]]
    best, best_gt = iou_if_pos.max(dim=1)
    matched = best != float("-inf")
    assigned[matched] = best_gt[matched]
    return assigned
