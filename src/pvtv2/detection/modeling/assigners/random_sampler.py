"""The samples the RPN and the R-CNN stages train on: mmdet 2.x's ``RandomSampler``
(``mmdet/core/bbox/samplers/random_sampler.py``) over a max-IoU assignment
(:func:`~pvtv2.detection.modeling.assigners.max_iou.assign_max_iou`).

The random draws are ``torch.randperm`` calls in mmdet's order (positives, then negatives, image after image), so a
run seeded like an mmdet run draws the same samples; when the sampler can take every candidate it draws nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
