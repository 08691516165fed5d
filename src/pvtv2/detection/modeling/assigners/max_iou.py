"""Max-IoU assignment of the RPN's anchors and the R-CNN stages' proposals: mmdet 2.x's ``MaxIoUAssigner``
(``mmdet/core/bbox/assigners/max_iou_assigner.py``). The samples drawn from an assignment are
:func:`~pvtv2.detection.modeling.assigners.random_sampler.sample_random`'s.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou


def assign_max_iou(boxes: torch.Tensor, gt_boxes: torch.Tensor, *, pos_iou: float, neg_iou: float,
                   min_pos_iou: float, match_low_quality: bool) -> torch.Tensor:
    """Assign each box to a ground-truth box by IoU.

    Args:
        boxes: ``(N, 4)`` anchors or proposals, XYXY.
        gt_boxes: ``(G, 4)`` ground-truth boxes.
        pos_iou: a box whose best IoU is >= this is positive (assigned to that ground truth).
        neg_iou: a box whose best IoU is in [0, neg_iou) is negative.
        min_pos_iou: with ``match_low_quality``, each ground truth also takes its best box(es) if that IoU
            is >= this (every box tied at the maximum, as mmdet's ``gt_max_assign_all``).
        match_low_quality: see ``min_pos_iou`` (the RPN's setting; R-CNN stages do not).

    Returns:
        ``(N,)`` int64: ``-1`` ignored, ``0`` negative, ``g + 1`` positive for ground truth ``g``.
    """
    assigned = boxes.new_full((boxes.size(0),), -1, dtype=torch.long)
    if gt_boxes.numel() == 0 or boxes.numel() == 0:
        if gt_boxes.numel() == 0:
            assigned[:] = 0
        return assigned
    overlaps = box_iou(gt_boxes, boxes)  # (G, N)
    best, best_gt = overlaps.max(dim=0)
    assigned[(best >= 0) & (best < neg_iou)] = 0
    pos = best >= pos_iou
    assigned[pos] = best_gt[pos] + 1
    if match_low_quality:
        gt_best = overlaps.max(dim=1).values
        for g in range(gt_boxes.size(0)):
            if gt_best[g] >= min_pos_iou:
                assigned[overlaps[g] == gt_best[g]] = g + 1
    return assigned


