"""Cascade Mask R-CNN on a PVT, as the released ``cascade_mask_rcnn_pvt_v2_b2[_li]_fpn_3x_mstrain_fp16`` configs
(whai362/PVT, mmdet 2.13): FPN P2-P5 from all four stages plus a max-pool P6, mmdet's RPN (3 anchors per
location), three cascade box stages and three mask heads (:mod:`..cascade`), AdamW 1e-4.

torchvision's ``GeneralizedRCNN`` runs the pieces (transform, backbone, RPN, RoI heads, post-processing); the
RPN, RoI pooling, heads and mask pasting are mmdet's (:mod:`..rpn`, :mod:`..roi_heads`, :mod:`..cascade`,
:mod:`..transform`), so the released weights give the released detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ...analysis.counting import unseen_by_mmcv
from ...models.backbone import WeightsSource
from ..interop.mmdet import convert_detector, fpn_to_ours
from ..modeling.necks.fpn import pvt_fpn
from ..modeling.proposal.rpn import ProposalNetwork
from ..modeling.roi_heads.cascade import CascadeRoIHeads
from ..modeling.transform import DetectionTransform
from ..registry import DetectorSpec, register
from .mask_rcnn import BOX_ROIS, MASK_ROIS
from .mask_rcnn import _dense as rpn_dense

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class CascadeMaskRCNN(GeneralizedRCNN):
    """torchvision's two-stage detector frame with mmdet's RPN and cascade RoI heads (built by
    :func:`cascade_mask_rcnn`)."""


def cascade_mask_rcnn(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 80,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    backbone_overrides: dict[str, Any] | None = None,
    fpn_channels: int = 256,
    stages: Sequence[int] = (0, 1, 2, 3),
    min_size: int = 800,
    max_size: int = 1333,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
) -> CascadeMaskRCNN:
    """Cascade Mask R-CNN on a PVT, with the released training and test settings as defaults.

    Args:
        backbone: registered backbone name.
        num_classes: object classes K (COCO: 80); the classifiers add background as their last logit.
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`pvtv2.models.backbone.pvt_backbone`.
        fpn_channels: FPN (and head) width; 256 in every released config.
        stages: stages feeding the FPN (the released config: all four).
        min_size, max_size: test-time resizing of torchvision's transform (shorter side, longer side at most).
        rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test: anchors kept per level before the RPN's NMS.
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: proposals per image.
        rpn_nms_thresh: IoU of the RPN's NMS.
        rpn_batch_size_per_image: anchors sampled per image for the RPN loss.
        box_batch_size_per_image: RoIs sampled per image and stage (a quarter positive at most).
        score_thresh, box_nms_thresh, box_detections_per_img: test-time selection (class scores above
            ``score_thresh``, class-wise NMS at ``box_nms_thresh``, the best ``box_detections_per_img``; the RPN and
            box options are named as torchvision's ``MaskRCNN`` names them, ``score_thresh`` as the trainer does).
    """
    fpn = pvt_fpn(backbone, stages=stages, extra="maxpool", backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides,
                  out_channels=fpn_channels)
    rpn = ProposalNetwork(
        fpn.out_channels, fpn.strides,
        pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
        nms_thresh=rpn_nms_thresh, batch_size_per_image=rpn_batch_size_per_image,
    )
    heads = CascadeRoIHeads(
        num_classes, in_channels=fpn.out_channels, featmap_names=[str(i) for i in range(len(stages))],
        strides=fpn.strides[: len(stages)],  # RoIs come from the FPN maps, not the pooled P6
        batch_size_per_image=box_batch_size_per_image, score_thresh=score_thresh, nms_thresh=box_nms_thresh,
        detections_per_img=box_detections_per_img,
    )
    transform = DetectionTransform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD)
    return CascadeMaskRCNN(fpn, rpn, heads, transform)


def _cost(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """mmdet's ``forward_dummy``: the dense part, then each of the three box heads on the same 1000 RoIs and each
    mask head on 100. What mmcv's counter does not see is left out: RoIAlign (the heads get zero RoI features)
    and the box heads' BatchNorm (``SyncBN`` in the released config, a type mmcv 1.3 has no hook for)."""
    out = rpn_dense(model, images)
    heads, channels = model.roi_heads, model.backbone.out_channels
    box_feats = images.new_zeros(BOX_ROIS, channels, *heads.box_roi_pool.output_size)  # (R, C, 7, 7)
    with unseen_by_mmcv(m for m in heads.box_head.modules() if isinstance(m, nn.BatchNorm2d)):
        for t, head in enumerate(heads.box_head):
            out[f"s{t}_scores"], out[f"s{t}_deltas"] = head(box_feats)
    mask_feats = images.new_zeros(MASK_ROIS, channels, *heads.mask_roi_pool.output_size)  # (R, C, 14, 14)
    for t, head in enumerate(heads.mask_head):
        out[f"s{t}_masks"] = head(mask_feats)
    return out


def from_mmdet(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A released mmdet ``CascadeRCNN`` state dict under our names (the layers have mmdet's shapes and class order:
    nothing moves). ``ConvModule``'s ``.conv`` / ``.bn`` become ``Conv2dNormActivation``'s ``.0`` / ``.1``."""
    heads = model.roi_heads
    pairs = fpn_to_ours(len(model.backbone.body.stages))[:-2]  # no extra convs: P6 is a max-pool
    pairs += [("rpn_head.rpn_conv.", "rpn.head.conv.0.0."), ("rpn_head.rpn_cls.", "rpn.head.cls_logits."),
              ("rpn_head.rpn_reg.", "rpn.head.bbox_pred.")]
    for t in range(heads.num_stages):
        box, ours = f"roi_head.bbox_head.{t}.", f"roi_heads.box_head.{t}."
        convs = [m for m in heads.box_head[t].trunk if isinstance(m, nn.Sequential)]
        for i in range(len(convs)):
            pairs += [(f"{box}shared_convs.{i}.conv.", f"{ours}trunk.{i}.0."),
                      (f"{box}shared_convs.{i}.bn.", f"{ours}trunk.{i}.1.")]
        pairs += [(f"{box}shared_fcs.0.", f"{ours}trunk.{len(convs) + 1}."),  # after the convs and the Flatten
                  (f"{box}fc_", f"{ours}fc_")]
        mask, ours = f"roi_head.mask_head.{t}.", f"roi_heads.mask_head.{t}."
        pairs += [(f"{mask}convs.{i}.conv.", f"{ours}0.{i}.0.") for i in range(len(heads.mask_head[t][0]))]
        pairs += [(f"{mask}upsample.", f"{ours}1.conv5_mask."), (f"{mask}conv_logits.", f"{ours}1.mask_fcn_logits.")]
    return convert_detector(sd, pairs, what="Cascade Mask R-CNN")


register(DetectorSpec("cascade_mask_rcnn", cascade_mask_rcnn, lr=1e-4, dense=rpn_dense, cost=_cost, masks=True,
                      from_mmdet=from_mmdet,
                      description="Cascade Mask R-CNN (Cai & Vasconcelos 2019), paper Table 4; boxes and masks"))
