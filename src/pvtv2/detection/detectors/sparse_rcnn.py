"""Sparse R-CNN on a PVT, as the released ``sparse_rcnn_pvt_v2_b2[_li]_fpn_300_proposals_crop_mstrain_480-800_3x_coco``
configs (whai362/PVT, mmdet 2.13): FPN P2-P5 from all four stages (no extra level), 300 learned proposals, six
dynamic instance interactive stages (:mod:`..sparse`), AdamW 2.5e-5 with weight decay 1e-4 and gradient clipping
at norm 1, fp32 (the ``sparse_rcnn_3x`` recipe).

It keeps 300 detections per image with no score threshold (the released ``max_per_img=300``). pycocotools' cap
(``maxDets`` 100) is per image *and* category, so every detection counts in COCO AP, as in mmdet's evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_convert

from ...analysis.counting import unseen_by_mmcv
from ...models.backbone import WeightsSource
from ..interop.mmdet import convert_detector, fpn_to_ours
from ..modeling.necks.fpn import pvt_fpn
from ..modeling.roi_heads.sparse import DynamicConv, ProposalEmbedding, SparseRoIHeads
from ..modeling.transform import DetectionTransform
from ..registry import DetectorSpec, register
from .cascade_mask_rcnn import IMAGENET_MEAN, IMAGENET_STD

COST_IMAGE_SHAPE = (800, 1333)  # mmdet's forward_dummy decodes the proposals for this image size


class SparseRCNN(GeneralizedRCNN):
    """torchvision's detector frame around learned proposals and Sparse R-CNN's heads (built by
    :func:`sparse_rcnn`)."""


def sparse_rcnn(
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
    num_proposals: int = 300,
    num_stages: int = 6,
    detections_per_img: int = 300,
    score_thresh: float = 0.0,
) -> SparseRCNN:
    """Sparse R-CNN on a PVT, with the released settings as defaults.

    Args:
        backbone: registered backbone name.
        num_classes: object classes K (COCO: 80); sigmoid classifiers with K logits.
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`pvtv2.models.backbone.pvt_backbone`.
        fpn_channels: FPN (and head) width; 256 in every released config.
        stages: stages feeding the FPN (the released config: all four).
        min_size, max_size: test-time resizing of torchvision's transform.
        num_proposals: learned proposals (300).
        num_stages: DII stages (6).
        detections_per_img: (query, class) pairs returned per image (300).
        score_thresh: drop those scoring less (the released test keeps all 300: 0).
    """
    fpn = pvt_fpn(backbone, stages=stages, extra=None, backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides,
                  out_channels=fpn_channels)
    rpn = ProposalEmbedding(num_proposals, fpn.out_channels)
    heads = SparseRoIHeads(num_classes, channels=fpn.out_channels, featmap_names=[str(i) for i in range(len(stages))],
                           strides=fpn.strides, num_stages=num_stages,
                           detections_per_img=detections_per_img, score_thresh=score_thresh)
    transform = DetectionTransform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD)
    return SparseRCNN(fpn, rpn, heads, transform)


def _dense(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """FPN maps ``p2``..``p5`` and the learned proposals: ``proposal_boxes`` ``(B, N, 4)`` XYXY as fractions of the
    image (times ``(W, H, W, H)`` of the image without padding gives pixels) and ``proposal_features``
    ``(B, N, C)``; the stages pool RoIs, which ONNX graphs do not carry well."""
    feats = list(model.backbone(images).values())  # (B, 256, H/s, W/s), strides 4..32
    out = {f"p{s.bit_length() - 1}": f for s, f in zip(model.backbone.strides, feats)}
    embed, b = model.rpn, images.size(0)
    boxes = box_convert(embed.init_proposal_bboxes.weight, "cxcywh", "xyxy")  # (N, 4) in [0, 1]
    out["proposal_boxes"] = boxes[None].expand(b, -1, -1)
    out["proposal_features"] = embed.init_proposal_features.weight[None].expand(b, -1, -1)
    return out


def _cost(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """mmdet's ``forward_dummy``: the dense part, then the six stages on the 300 proposals decoded for an
    800 x 1333 image. What mmcv's counter does not see is left out: RoIAlign (the stages get zero RoI features),
    the self-attention (``nn.MultiheadAttention``) and the dynamic convolutions' batched products."""
    out = _dense(model, images)
    (boxes, obj), _ = model.rpn(ImageList(images, [COST_IMAGE_SHAPE] * images.size(0)))
    roi_feats = images.new_zeros(boxes.size(0) * boxes.size(1), obj.size(-1), *model.roi_heads.box_roi_pool.output_size)
    heads = model.roi_heads.box_head
    with unseen_by_mmcv(m for m in heads.modules() if isinstance(m, (nn.MultiheadAttention, DynamicConv))):
        for t, head in enumerate(heads):
            out[f"stage{t}_scores"], out[f"stage{t}_deltas"], obj = head(roi_feats, obj)
    return out


def from_mmdet(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A released mmdet ``SparseRCNN`` state dict under our names: mmcv's ``MultiheadAttention`` and ``FFN`` wrap
    torch's layers (``attention.attn.*``, ``ffn.layers.0.0`` / ``ffn.layers.1``); every other name is mmdet's."""
    pairs = fpn_to_ours(len(model.backbone.body.stages))[:-2] + [("rpn_head.", "rpn.")]  # no extra FPN levels
    for t in range(len(model.roi_heads.box_head)):
        head, ours = f"roi_head.bbox_head.{t}.", f"roi_heads.box_head.{t}."
        pairs += [(f"{head}attention.attn.", f"{ours}attention."), (f"{head}ffn.layers.0.0.", f"{ours}ffn.0."),
                  (f"{head}ffn.layers.1.", f"{ours}ffn.3."), (head, ours)]
    return convert_detector(sd, pairs, what="Sparse R-CNN")


register(DetectorSpec("sparse_rcnn", sparse_rcnn, lr=2.5e-5, dense=_dense, cost=_cost, from_mmdet=from_mmdet,
                      description="Sparse R-CNN (Sun et al. 2021), 300 learned proposals; paper Table 4"))
