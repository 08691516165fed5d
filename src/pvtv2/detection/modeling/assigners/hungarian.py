"""One-to-one matching of predictions to ground truth (Sparse R-CNN, DETR): mmdet 2.x's ``HungarianAssigner``.

The cost of predicting ground truth ``g`` with query ``q`` is ``w_cls * focal(q, label_g) + w_l1 * |box_q -
box_g|_1 + w_iou * (-GIoU(box_q, box_g))``, boxes XYXY divided by the image size for the L1 term (mmdet's
``FocalLossCost``, ``BBoxL1Cost``, ``IoUCost(giou)``); ``scipy.optimize.linear_sum_assignment`` then picks the
cheapest matching, each ground truth to one query.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou


def focal_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
               eps: float = 1e-12) -> torch.Tensor:
    """``(Q, K)`` class logits, ``(G,)`` labels (0-based) -> ``(Q, G)``: the focal loss of calling each query the
    ground truth's class minus that of not calling it (mmdet's ``FocalLossCost``)."""
    p = logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return pos[:, labels] - neg[:, labels]


def match_cost(logits: torch.Tensor, boxes: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
               image_size: tuple[int, int], *, cls_weight: float = 2.0, l1_weight: float = 5.0,
               giou_weight: float = 2.0) -> torch.Tensor:
    """``(Q, G)`` matching cost of one image.

    Args:
        logits: ``(Q, K)`` class logits of the queries.
        boxes: ``(Q, 4)`` their boxes, XYXY pixels.
        gt_labels: ``(G,)`` 0-based labels.
        gt_boxes: ``(G, 4)`` XYXY pixels.
        image_size: ``(H, W)`` of the image without padding (the L1 term's unit).
        cls_weight, l1_weight, giou_weight: the three weights (released: 2, 5, 2).
    """
    h, w = image_size
    scale = boxes.new_tensor([w, h, w, h])
    l1 = torch.cdist(boxes / scale, gt_boxes / scale, p=1)
    return (cls_weight * focal_cost(logits, gt_labels) + l1_weight * l1
            - giou_weight * generalized_box_iou(boxes, gt_boxes))


@torch.no_grad()
def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, G)`` cost -> ``(query indices, ground-truth indices)`` of the cheapest one-to-one matching (as many
    pairs as the smaller side), queries in increasing order."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, device=cost.device), torch.as_tensor(cols, device=cost.device)
