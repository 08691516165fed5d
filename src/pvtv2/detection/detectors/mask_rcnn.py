"""Mask R-CNN (torchvision's) on a PVT, wired as the released ``mask_rcnn_pvt_v2_*_fpn_1x_coco`` configs: FPN
P2-P5 from all four stages plus a max-pool P6, 3 RPN anchors per location, RoIAlign 7x7 (boxes) / 14x14 (masks),
AdamW 2e-4."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops import MultiScaleRoIAlign

from ...models.backbone import WeightsSource
from ..anchors import octave_anchors
from ..fpn import pvt_fpn
from ..registry import DetectorSpec, register

BOX_ROIS, MASK_ROIS = 1000, 100  # RoIs of mmdet's forward_dummy, which the paper's GFLOPs count


def mask_rcnn(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 80,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    backbone_overrides: dict[str, Any] | None = None,
    stages: Sequence[int] = (0, 1, 2, 3),
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN on a PVT: FPN P2-P5 from all four stages plus a max-pool P6.

    Args:
        backbone: registered PVT name.
        num_classes: object classes (COCO: 80); the box and mask predictors add the background class 0.
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`pvtv2.models.backbone.pvt_backbone`.
        stages: stages feeding the FPN (the released config: all four).
        **kwargs: passed to :class:`torchvision.models.detection.MaskRCNN`.
    """
    fpn = pvt_fpn(backbone, stages=stages, extra="maxpool", backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides)
    names = [str(i) for i in range(len(stages))]  # RoI features come from the FPN maps, not the pooled level
    kwargs.setdefault("rpn_anchor_generator", octave_anchors(fpn.strides, 8, 1))  # 32..512 on P2-P6
    kwargs.setdefault("box_roi_pool", MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2))
    kwargs.setdefault("mask_roi_pool", MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2))
    return MaskRCNN(fpn, num_classes + 1, **kwargs)


def _dense(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """FPN maps ``p2``..``p6`` and the RPN's ``objectness_i`` ``(B, A, h, w)`` / ``rpn_deltas_i`` ``(B, 4A, h, w)``
    per level (the RoI heads need proposals, which depend on the data)."""
    feats = list(model.backbone(images).values())  # (B, 256, H/s, W/s), strides 4..64
    objectness, deltas = model.rpn.head(feats)
    out = {f"p{s.bit_length() - 1}": f for s, f in zip(model.backbone.strides, feats)}  # stride 4 -> p2
    out.update({f"objectness_{i}": o for i, o in enumerate(objectness)})
    out.update({f"rpn_deltas_{i}": d for i, d in enumerate(deltas)})
    return out


def _cost(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """mmdet's ``forward_dummy``: the dense part, then the box head on 1000 RoIs and the mask head on 100 (RoIAlign
    itself is not counted, as in mmcv)."""
    out = _dense(model, images)
    heads, channels = model.roi_heads, model.backbone.out_channels
    box_feats = images.new_zeros(BOX_ROIS, channels, *heads.box_roi_pool.output_size)  # (R, C, 7, 7)
    out["scores"], out["boxes"] = heads.box_predictor(heads.box_head(box_feats))
    mask_feats = images.new_zeros(MASK_ROIS, channels, *heads.mask_roi_pool.output_size)  # (R, C, 14, 14)
    out["masks"] = heads.mask_predictor(heads.mask_head(mask_feats))
    return out


register(DetectorSpec("mask_rcnn", mask_rcnn, lr=2e-4, dense=_dense, cost=_cost, masks=True,
                      description="Mask R-CNN (He et al. 2017), paper Table 3; boxes and instance masks"))
