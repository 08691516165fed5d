"""ATSS (Zhang et al. 2020) on a PVT, as the released ``atss_pvt_v2_b2[_li]_fpn_3x_mstrain_fp16`` configs (mmdet
2.13 ``ATSSHead``): FPN P3-P7 from stages 2-4 with P6/P7 on the P5 output, one 8x-stride anchor per location, ATSS
assignment; sigmoid focal loss (gamma 2, alpha 0.25), GIoU (weight 2) weighted by the centre-ness target, centre-ness
BCE; box deltas with stds 0.1, 0.1, 0.2, 0.2; AdamW 1e-4."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ...engine.distributed import reduce_mean
from ...models.backbone import WeightsSource
from ..modeling.boxes import delta_coder
from ..modeling.dense_heads.anchor_point_detector import AnchorPointDetector, from_mmdet
from ..modeling.dense_heads.tower_heads import ATSSHead
from ..modeling.losses import centerness_target
from ..modeling.necks.fpn import pvt_fpn
from ..registry import DetectorSpec, register

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
GIOU_WEIGHT = 2.0
TARGET_STDS = (0.1, 0.1, 0.2, 0.2)  # the released DeltaXYWHBBoxCoder's (means 0)


class ATSS(AnchorPointDetector):
    """ATSS: :class:`~pvtv2.detection.modeling.dense_heads.anchor_point_detector.AnchorPointDetector` with box deltas and a centre-ness branch
    (arguments as there)."""

    box_coder = delta_coder(TARGET_STDS)  # clamps dw, dh to +-log(1000 / 16), as mmdet's wh_ratio_clip

    def loss(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, strides: torch.Tensor,
             labels: torch.Tensor, weights: torch.Tensor, gt_boxes: torch.Tensor,
             num_samples: float) -> dict[str, torch.Tensor]:
        """``loss_cls`` (focal, over the positive count), ``loss_bbox`` (GIoU x centre-ness, over the centre-ness
        sum) and ``loss_centerness`` (BCE, over the positive count): mmdet's ``ATSSHead.loss``."""
        k = self.num_classes
        logits = outputs["cls_score"].reshape(-1, k)  # (B*A, K)
        labels, weights = labels.reshape(-1), weights.reshape(-1)
        onehot = F.one_hot(labels, k + 1)[:, :k].to(logits.dtype)  # background K -> all zeros
        focal = sigmoid_focal_loss(logits, onehot, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="none")
        loss_cls = (focal * weights[:, None]).sum() / num_samples

        deltas, centerness = outputs["bbox_pred"].reshape(-1, 4), outputs["centerness"].reshape(-1)
        pos = (labels < k).nonzero().squeeze(1)
        if len(pos):
            pos_anchors = anchors[pos % len(anchors)]
            # mmdet encodes the matched box into deltas and decodes it back before using it
            target = self.box_coder.decode_single(
                self.box_coder.encode_single(gt_boxes.reshape(-1, 4)[pos], pos_anchors), pos_anchors)
            quality = centerness_target((pos_anchors[:, :2] + pos_anchors[:, 2:]) / 2, target)
            pred = self.box_coder.decode_single(deltas[pos], pos_anchors)
            loss_bbox = GIOU_WEIGHT * (generalized_box_iou_loss(pred, target, reduction="none") * quality).sum()
            loss_ctr = F.binary_cross_entropy_with_logits(centerness[pos], quality, reduction="sum") / num_samples
            quality_sum = quality.sum()
        else:
            loss_bbox, loss_ctr, quality_sum = deltas.sum() * 0, centerness.sum() * 0, deltas.new_tensor(0.0)
        loss_bbox = loss_bbox / reduce_mean(quality_sum).clamp(min=1).item()
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}

    def level_scores(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class probabilities ``(h*w, K)`` and the predicted centre-ness ``(h*w,)`` that multiplies them."""
        scores = out["cls_score"].permute(1, 2, 0).reshape(-1, self.num_classes).sigmoid()  # (K, h, w) -> (hw, K)
        return scores, out["centerness"].reshape(-1).sigmoid()

    def decode(self, out: dict[str, torch.Tensor], anchors: torch.Tensor, stride: int,
               keep: torch.Tensor) -> torch.Tensor:
        deltas = out["bbox_pred"].permute(1, 2, 0).reshape(-1, 4)[keep]  # (4, h, w) -> (hw, 4)
        return self.box_coder.decode_single(deltas, anchors[keep])


def atss(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 80,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    backbone_overrides: dict[str, Any] | None = None,
    fpn_channels: int = 256,
    stages: Sequence[int] = (1, 2, 3),
    **kwargs: Any,
) -> ATSS:
    """ATSS on a PVT (or ``"resnet50"`` / ``"swin_t"``): FPN P3-P5 from stages 2-4, P6/P7 from the P5 output.

    Args:
        backbone: registered PVT name, ``"resnet50"`` or ``"swin_t"``.
        num_classes: object classes (COCO: 80); labels 1..K.
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`pvtv2.models.backbone.build_backbone`.
        fpn_channels: FPN and head width; 256 in every released config.
        stages: stages feeding the FPN (the released config: 1, 2, 3).
        **kwargs: :class:`~pvtv2.detection.modeling.dense_heads.anchor_point_detector.AnchorPointDetector` options (``min_size``, ``max_size``,
            ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``topk_candidates``...).
    """
    fpn = pvt_fpn(backbone, stages=stages, extra="p6p7_output", backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides,
                  out_channels=fpn_channels)
    return ATSS(fpn, ATSSHead(num_classes, fpn.out_channels, fpn.num_levels, feat_channels=fpn.out_channels), num_classes, **kwargs)


register(DetectorSpec("atss", atss, lr=1e-4, dense=AnchorPointDetector.dense, from_mmdet=from_mmdet,
                      description="ATSS (Zhang et al. 2020), paper Table 4; 3x multi-scale recipe"))
