"""Generalized Focal Loss (Li et al. 2020) on a PVT, as the released ``gfl_pvt_v2_b2[_li]_fpn_3x_mstrain_fp16``
configs (mmdet 2.13 ``GFLHead``): ATSS's neck, anchors and assignment; no centre-ness; each box side a distribution
over 17 distances (``reg_max`` 16, in strides) read out as its expectation; quality focal loss (beta 2) towards the
IoU of the predicted box, GIoU (weight 2) and distribution focal loss (weight 0.25), both weighted by the best
predicted class score; AdamW 1e-4."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.ops import generalized_box_iou_loss

from ...engine.distributed import reduce_mean
from ...models.backbone import WeightsSource
from ..modeling.dense_heads.anchor_point_detector import AnchorPointDetector, from_mmdet
from ..modeling.dense_heads.tower_heads import GFLHead, integral
from ..modeling.losses import aligned_iou, distribution_focal_loss, quality_focal_loss
from ..modeling.necks.fpn import pvt_fpn
from ..registry import DetectorSpec, register

QFL_BETA = 2.0
GIOU_WEIGHT, DFL_WEIGHT = 2.0, 0.25
REG_MAX = 16


class GFL(AnchorPointDetector):
    """GFL: :class:`~pvtv2.detection.modeling.dense_heads.anchor_point_detector.AnchorPointDetector` with distribution box regression (arguments as
    there)."""

    head: GFLHead

    def loss(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, strides: torch.Tensor,
             labels: torch.Tensor, weights: torch.Tensor, gt_boxes: torch.Tensor,
             num_samples: float) -> dict[str, torch.Tensor]:
        """``loss_cls`` (QFL, over the positive count), ``loss_bbox`` (GIoU) and ``loss_dfl`` (DFL over the 4 sides),
        both weighted by the best class score and over its sum: mmdet's ``GFLHead.loss``. Boxes are measured in
        strides."""
        k, n = self.num_classes, self.head.reg_max
        logits = outputs["cls_score"].reshape(-1, k)  # (B*A, K)
        reg = outputs["bbox_pred"].reshape(-1, 4 * (n + 1))  # (B*A, 4 * 17)
        labels, weights = labels.reshape(-1), weights.reshape(-1)
        pos = (labels < k).nonzero().squeeze(1)
        quality = logits.new_zeros(len(labels))
        if len(pos):
            idx = pos % len(anchors)
            stride = strides[idx, None]
            centres = (anchors[idx, :2] + anchors[idx, 2:]) / 2 / stride  # (P, 2), in strides
            score_weight = logits.detach().sigmoid().max(dim=1)[0][pos]  # (P,)
            dist = integral(reg[pos], n)  # (P, 4): left, top, right, bottom
            pred = torch.cat([centres - dist[:, :2], centres + dist[:, 2:]], dim=1)
            target = gt_boxes.reshape(-1, 4)[pos] / stride
            quality[pos] = aligned_iou(pred.detach(), target)
            loss_bbox = GIOU_WEIGHT * (generalized_box_iou_loss(pred, target, reduction="none") * score_weight).sum()
            target_dist = torch.cat([centres - target[:, :2], target[:, 2:] - centres], dim=1).clamp(0, n - 0.1)
            dfl = distribution_focal_loss(reg[pos].reshape(-1, n + 1), target_dist.reshape(-1))  # (P*4,)
            loss_dfl = DFL_WEIGHT * (dfl * score_weight.repeat_interleave(4)).sum() / 4.0
            weight_sum = score_weight.sum()
        else:
            loss_bbox, loss_dfl, weight_sum = reg.sum() * 0, reg.sum() * 0, reg.new_tensor(0.0)
        loss_cls = (quality_focal_loss(logits, labels, quality, QFL_BETA) * weights).sum() / num_samples
        avg = reduce_mean(weight_sum).clamp(min=1).item()
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox / avg, "loss_dfl": loss_dfl / avg}

    def level_scores(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Joint class-quality probabilities ``(h*w, K)``; no separate factor."""
        return out["cls_score"].permute(1, 2, 0).reshape(-1, self.num_classes).sigmoid(), None  # (K, h, w) -> (hw, K)

    def decode(self, out: dict[str, torch.Tensor], anchors: torch.Tensor, stride: int,
               keep: torch.Tensor) -> torch.Tensor:
        reg = out["bbox_pred"].permute(1, 2, 0).reshape(-1, 4 * (self.head.reg_max + 1))[keep]  # -> (n, 68)
        dist = integral(reg, self.head.reg_max) * stride  # (n, 4) in pixels
        centres = (anchors[keep, :2] + anchors[keep, 2:]) / 2
        return torch.cat([centres - dist[:, :2], centres + dist[:, 2:]], dim=1)


def gfl(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 80,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    backbone_overrides: dict[str, Any] | None = None,
    fpn_channels: int = 256,
    stages: Sequence[int] = (1, 2, 3),
    reg_max: int = REG_MAX,
    **kwargs: Any,
) -> GFL:
    """GFL on a PVT (or ``"resnet50"`` / ``"swin_t"``): ATSS's FPN (P3-P7, P6/P7 from the P5 output).

    Args:
        backbone: registered PVT name, ``"resnet50"`` or ``"swin_t"``.
        num_classes: object classes (COCO: 80); labels 1..K.
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`pvtv2.models.backbone.build_backbone`.
        fpn_channels: FPN and head width; 256 in every released config.
        stages: stages feeding the FPN (the released config: 1, 2, 3).
        reg_max: largest distance bin, in strides (the released config: 16).
        **kwargs: :class:`~pvtv2.detection.modeling.dense_heads.anchor_point_detector.AnchorPointDetector` options (``min_size``, ``max_size``,
            ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``topk_candidates``...).
    """
    fpn = pvt_fpn(backbone, stages=stages, extra="p6p7_output", backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides,
                  out_channels=fpn_channels)
    return GFL(fpn, GFLHead(num_classes, reg_max, fpn.out_channels, fpn.num_levels, feat_channels=fpn.out_channels), num_classes, **kwargs)


register(DetectorSpec("gfl", gfl, lr=1e-4, dense=AnchorPointDetector.dense, from_mmdet=from_mmdet,
                      description="GFL (Li et al. 2020), paper Table 4; 3x multi-scale recipe"))
