"""Test-time selection of detections, as mmdet 2.x does it for every released detector: ``multiclass_nms``
(``mmdet/core/post_processing/bbox_nms.py``) and the dense heads' per-level top-k before it (``nms_pre`` of
``AnchorHead.get_bboxes`` and its ATSS / GFL / FCOS variants). The NMS itself is
:func:`~pvtv2.detection.modeling.boxes.batched_nms` (mmcv's)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.ops import clip_boxes_to_image

from .boxes import batched_nms


def multiclass_nms(boxes: Tensor, scores: Tensor, *, score_thresh: float, iou_threshold: float, max_num: int,
                   factors: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Every (box, class) pair scoring above ``score_thresh`` (before ``factors``, a quality per box that then
    multiplies its scores), class-wise NMS, the best ``max_num``.

    Args:
        boxes: ``(n, 4)`` one box per row, or ``(n, K, 4)`` / ``(n, 4K)`` one box per row and class.
        scores: ``(n, K)`` object-class scores (no background column).

    Returns:
        boxes ``(m, 4)``, scores ``(m,)`` and class indices ``(m,)`` in ``0..K-1``, by decreasing score.
    """
    rows, classes = (scores > score_thresh).nonzero(as_tuple=True)  # row-major: box by box, then class
    kept = scores[rows, classes]
    if factors is not None:
        kept = kept * factors[rows]
    if boxes.dim() == 2 and boxes.size(1) == 4:
        chosen = boxes[rows]
    else:
        chosen = boxes.reshape(len(boxes), -1, 4)[rows, classes]
    keep = batched_nms(chosen, kept, classes, iou_threshold)[:max_num]
    return chosen[keep], kept[keep], classes[keep]


def dense_detections(scores: Sequence[Tensor], factors: Sequence[Tensor | None],
                     decode: Callable[[int, Tensor], Tensor], image_size: tuple[int, int], *, topk: int,
                     score_thresh: float, iou_threshold: float, max_num: int) -> tuple[Tensor, Tensor, Tensor]:
    """One image's detections from a dense head: per level the ``topk`` locations ranked by their best class score
    (times the quality factor, if any), their boxes decoded and clipped to the image, then :func:`multiclass_nms`.

    Args:
        scores: per level ``(n, K)`` class probabilities.
        factors: per level ``(n,)`` quality factors (centerness) or ``None``.
        decode: ``(level, kept indices (m,)) -> (m, 4)`` XYXY boxes.
        image_size: ``(H, W)`` of the image without padding.

    Returns:
        boxes ``(m, 4)``, scores ``(m,)`` and class indices ``(m,)`` in ``0..K-1``.
    """
    all_boxes, all_scores, all_factors = [], [], []
    for level, (level_scores, factor) in enumerate(zip(scores, factors)):
        rank = (level_scores if factor is None else level_scores * factor[:, None]).max(dim=1).values
        keep = rank.topk(topk).indices if len(rank) > topk else torch.arange(len(rank), device=rank.device)
        all_boxes.append(clip_boxes_to_image(decode(level, keep), image_size))
        all_scores.append(level_scores[keep])
        all_factors.append(None if factor is None else factor[keep])
    quality = None if all_factors[0] is None else torch.cat(all_factors)  # type: ignore[arg-type]
    return multiclass_nms(torch.cat(all_boxes), torch.cat(all_scores), score_thresh=score_thresh,
                          iou_threshold=iou_threshold, max_num=max_num, factors=quality)
