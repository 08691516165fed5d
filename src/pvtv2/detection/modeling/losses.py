"""The losses of ATSS and GFL that torchvision does not have, as mmdet 2.13 defines them.

torchvision provides the sigmoid focal loss (ATSS's classification) and the GIoU loss
(:func:`torchvision.ops.sigmoid_focal_loss`, :func:`torchvision.ops.generalized_box_iou_loss`); this module adds
GFL's quality focal loss and distribution focal loss (mmdet ``models/losses/gfocal_loss.py``), ATSS's centre-ness
target (mmdet ``ATSSHead.centerness_target``) and the aligned IoU that scores GFL's positives (mmdet
``bbox_overlaps(..., is_aligned=True)``). Every function returns unreduced values; the heads weight and average
them as mmdet does. :func:`fp32_loss` runs any detector's loss in float32 under autocast (mmdet's ``force_fp32``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

F_ = TypeVar("F_", bound=Callable[..., Any])


def _to_fp32(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to_fp32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_fp32(v) for v in x)
    return x


def fp32_loss(fn: F_) -> F_:
    """mmdet's ``force_fp32`` for a loss method: autocast off inside, and every floating tensor argument (also in
    dicts, lists and tuples) cast to float32. In bf16 (8-bit mantissa) a focal loss rounds ``1 - p_t`` to 0 for
    every anchor with ``p_t`` above about 0.998, so the many easy negatives stop being pushed down, and the index
    writes of the targets fail on mixed types (Mask R-CNN and Cascade crashed under bf16 autocast). Measured with
    the float32 anchors of :class:`~pvtv2.detection.modeling.anchors.LevelAnchors` (docs/scenes.md): RetinaNet-B0
    trained in bf16 on the scenes had held-out box AP 0.0006 after 500 steps before, 0.043 after (fp32: 0.030)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # a method's self passes through unchanged
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*_to_fp32(args), **_to_fp32(kwargs))

    return wrapper  # type: ignore[return-value]


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor,
                       beta: float = 2.0) -> torch.Tensor:
    """Quality focal loss (Li et al. 2020, eq. 4), summed over classes.

    Every class logit is pushed towards 0 with weight ``sigmoid^beta``; the logit of a positive's own class is
    pushed towards its quality (the IoU of its predicted box) with weight ``|quality - sigmoid|^beta``.

    Args:
        logits: ``(N, K)`` class logits.
        labels: ``(N,)`` class index 0..K-1 of positives; anything else (K, -1) is background.
        quality: ``(N,)`` target quality of positives (ignored elsewhere).
        beta: the focusing exponent.

    Returns:
        ``(N,)`` loss per anchor.
    """
    prob = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * prob.pow(beta)
    pos = ((labels >= 0) & (labels < logits.shape[1])).nonzero().squeeze(1)
    cls = labels[pos]
    pos_logits, target = logits[pos, cls], quality[pos].to(logits.dtype)
    loss[pos, cls] = F.binary_cross_entropy_with_logits(pos_logits, target, reduction="none") * (
        target - prob[pos, cls]).abs().pow(beta)
    return loss.sum(dim=1)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss (Li et al. 2020, eq. 6): cross-entropy towards the two bins around ``target``,
    weighted by how close each is.

    Args:
        logits: ``(M, n + 1)`` bin logits of M box sides.
        target: ``(M,)`` distances in bin units, in ``[0, n)``.

    Returns:
        ``(M,)`` loss per side.
    """
    left = target.long()
    right = left + 1
    w_left, w_right = right.to(target.dtype) - target, target - left.to(target.dtype)
    return F.cross_entropy(logits, left, reduction="none") * w_left + \
        F.cross_entropy(logits, right, reduction="none") * w_right


def centerness_target(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS/ATSS centre-ness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of ``points`` ``(P, 2)``
    inside ``boxes`` ``(P, 4)`` XYXY -> ``(P,)`` (positives only: their points are inside their boxes)."""
    l, t = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    r, b = boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]
    lr, tb = torch.stack([l, r], dim=1), torch.stack([t, b], dim=1)
    return torch.sqrt(lr.min(dim=1)[0] / lr.max(dim=1)[0] * (tb.min(dim=1)[0] / tb.max(dim=1)[0]))


def aligned_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]`` (both ``(N, 4)`` XYXY) -> ``(N,)``; the union is clamped at ``eps`` as mmdet's
    ``bbox_overlaps`` does (:func:`torchvision.ops.box_iou` gives the full N x N matrix instead)."""
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)  # (N, 2)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter).clamp(min=eps)
