"""Training targets of the anchor and R-CNN stages as mmdet 2.x draws them: max-IoU assignment, random sampling.

:func:`assign_max_iou` is mmdet's ``MaxIoUAssigner`` and :func:`sample_random` its ``RandomSampler``
(``mmdet/core/bbox/assigners/max_iou_assigner.py``, ``samplers/random_sampler.py``). The random draws are
``torch.randperm`` calls in mmdet's order (positives, then negatives, image after image), so a run seeded like an
mmdet run draws the same samples; when a sampler can take every candidate it draws nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Samples:
    """The boxes one image contributes to a loss: positives first, then negatives.

    Attributes:
        boxes: ``(P + Q, 4)`` sampled boxes (positives first).
        num_pos: P.
        gt_index: ``(P,)`` ground truth of each positive (0-based).
        is_gt: ``(P,)`` bool: the positive is a ground-truth box added to the candidates.
        pos_index, neg_index: indices of the samples among the candidates (after ground truths were added).
    """

    boxes: torch.Tensor
    num_pos: int
    gt_index: torch.Tensor
    is_gt: torch.Tensor
    pos_index: torch.Tensor
    neg_index: torch.Tensor


def sample_random(assigned: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor, *, num: int,
                  pos_fraction: float, add_gt: bool) -> Samples:
    """Draw at most ``num * pos_fraction`` positives and fill up to ``num`` with negatives, uniformly.

    Args:
        assigned: ``(N,)`` from :func:`assign_max_iou`.
        boxes: ``(N, 4)`` the candidates.
        gt_boxes: ``(G, 4)``.
        num: samples per image (RPN 256, R-CNN 512).
        pos_fraction: at most this share positive (0.5, 0.25).
        add_gt: the ground-truth boxes join the candidates as positives first (R-CNN stages).
    """
    is_gt = torch.zeros(boxes.size(0), dtype=torch.bool, device=boxes.device)
    if add_gt and gt_boxes.numel():
        g = gt_boxes.size(0)
        boxes = torch.cat([gt_boxes, boxes])
        assigned = torch.cat([torch.arange(1, g + 1, device=assigned.device), assigned])
        is_gt = torch.cat([torch.ones(g, dtype=torch.bool, device=boxes.device), is_gt])
    pos = _choose((assigned > 0).nonzero().view(-1), int(num * pos_fraction)).unique()
    neg = _choose((assigned == 0).nonzero().view(-1), num - pos.numel()).unique()
    return Samples(boxes=torch.cat([boxes[pos], boxes[neg]]), num_pos=pos.numel(), gt_index=assigned[pos] - 1,
                   is_gt=is_gt[pos], pos_index=pos, neg_index=neg)


def _choose(candidates: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` of ``candidates`` uniformly without replacement (all of them if there are not more)."""
    if candidates.numel() <= n:
        return candidates
    return candidates[torch.randperm(candidates.numel())[:n].to(candidates.device)]
