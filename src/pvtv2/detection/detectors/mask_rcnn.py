"""Mask R-CNN (torchvision's) on a PVT, weight-exact with the released ``mask_rcnn_pvt_v2_*_fpn_1x_coco`` (mmdet 2.13):
FPN P2-P5 from all four stages plus a max-pooled P6, 3 RPN anchors per location (8 x stride, exact sizes), RoIAlign
7x7 (boxes) / 14x14 (masks) with ``aligned=True`` and mmdet's level rule, L1 box losses, and the released test
settings (RPN: 1000 proposals per level before and 1000 after NMS at IoU 0.7; boxes: score > 0.05, class-wise NMS
at IoU 0.5, 100 per image), AdamW 2e-4."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from ...models.backbone import WeightsSource
from ..interop.mmdet import convert_detector, fpn_to_ours
from ..modeling.anchors import octave_anchors
from ..modeling.boxes import delta_coder
from ..modeling.necks.fpn import pvt_fpn
from ..modeling.proposal.rpn import proposal_network_like
from ..modeling.roi_heads.mask_rcnn import rebuild_roi_heads
from ..modeling.roi_heads.roi_align import LevelRoIAlign
from ..modeling.transform import use_detection_transform
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
    fpn_channels: int = 256,
    stages: Sequence[int] = (0, 1, 2, 3),
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN on a PVT: FPN P2-P5 from all four stages plus a max-pool P6; the released test settings.

    Args:
        backbone: registered PVT name.
        num_classes: object classes (COCO: 80); the box and mask predictors add the background class 0.
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`pvtv2.models.backbone.pvt_backbone`.
        fpn_channels: FPN (and head) width: the RPN conv, the box head's input and the mask head's four convs and
            upsampling; 256 in every released config (narrower heads make it CPU-sized: the scenes recipe's 64).
        stages: stages feeding the FPN (the released config: all four).
        **kwargs: passed to :class:`torchvision.models.detection.MaskRCNN` (its defaults are the released
            ``test_cfg``; ``rpn_post_nms_top_n_train`` is 1000 as in ``rpn_proposal``).
    """
    fpn = pvt_fpn(backbone, stages=stages, extra="maxpool", backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides,
                  out_channels=fpn_channels)
    names, strides = [str(i) for i in range(len(stages))], fpn.strides[: len(stages)]  # RoIs: not the pooled P6
    kwargs.setdefault("rpn_anchor_generator", octave_anchors(fpn.strides, 8, 1))  # 32..512 on P2-P6
    kwargs.setdefault("rpn_post_nms_top_n_train", 1000)
    kwargs.setdefault("box_roi_pool", LevelRoIAlign(names, 7, strides))
    kwargs.setdefault("mask_roi_pool", LevelRoIAlign(names, 14, strides))
    # torchvision's default mask head is 256 wide whatever the FPN: follow the FPN (the released head at 256)
    own_predictor = "mask_head" not in kwargs
    kwargs.setdefault("mask_head", MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1))
    model = MaskRCNN(fpn, num_classes + 1, **kwargs)
    if own_predictor:  # torchvision builds it 256 wide and refuses one beside num_classes
        model.roi_heads.mask_predictor = MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1)
    # the released RPN: L1 box loss (smooth L1 with beta 0), every anchor in the loss (allowed_border=-1)
    model.rpn = proposal_network_like(model.rpn, fpn.strides, allowed_border=-1, smooth_l1_beta=0.0)
    model.roi_heads = rebuild_roi_heads(model.roi_heads)
    model.roi_heads.box_coder = delta_coder((0.1, 0.1, 0.2, 0.2))
    return use_detection_transform(model)


def from_mmdet(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """An mmdet ``MaskRCNN`` state dict under our names. mmdet's softmax classifier puts the background last
    (``fc_cls`` row K), torchvision's first: the rows move to (K, 0, ..., K-1). mmdet regresses 4 deltas per object
    class (``fc_reg``: 4K rows) and predicts K mask channels (``conv_logits``); torchvision's predictors also have
    the background's 4 rows and 1 channel, which neither training nor inference reads: they are set to zero."""
    pairs = fpn_to_ours(len(model.backbone.body.stages))[:-2]  # no extra convs: P6 is a max-pool
    pairs += [("rpn_head.rpn_conv.", "rpn.head.conv.0.0."), ("rpn_head.rpn_cls.", "rpn.head.cls_logits."),
              ("rpn_head.rpn_reg.", "rpn.head.bbox_pred."),
              ("roi_head.bbox_head.shared_fcs.0.", "roi_heads.box_head.fc6."),
              ("roi_head.bbox_head.shared_fcs.1.", "roi_heads.box_head.fc7."),
              ("roi_head.bbox_head.fc_cls.", "roi_heads.box_predictor.cls_score."),
              ("roi_head.bbox_head.fc_reg.", "roi_heads.box_predictor.bbox_pred."),
              ("roi_head.mask_head.upsample.", "roi_heads.mask_predictor.conv5_mask."),
              ("roi_head.mask_head.conv_logits.", "roi_heads.mask_predictor.mask_fcn_logits.")]
    pairs += [(f"roi_head.mask_head.convs.{i}.conv.", f"roi_heads.mask_head.{i}.0.")
              for i in range(len(model.roi_heads.mask_head))]
    out = convert_detector(sd, pairs, what="Mask R-CNN")
    for leaf in ("weight", "bias"):
        cls = out.get(f"roi_heads.box_predictor.cls_score.{leaf}")
        if cls is not None:  # (K + 1, ...): background last -> first
            out[f"roi_heads.box_predictor.cls_score.{leaf}"] = torch.cat([cls[-1:], cls[:-1]])
        for key, rows in ((f"roi_heads.box_predictor.bbox_pred.{leaf}", 4),
                          (f"roi_heads.mask_predictor.mask_fcn_logits.{leaf}", 1)):
            if key in out:  # K object classes -> background (zeros) + K
                out[key] = torch.cat([out[key].new_zeros(rows, *out[key].shape[1:]), out[key]])
    return out


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


register(DetectorSpec("mask_rcnn", mask_rcnn, lr=2e-4, dense=_dense, cost=_cost, masks=True, from_mmdet=from_mmdet,
                      description="Mask R-CNN (He et al. 2017), paper Table 3; boxes and instance masks"))
