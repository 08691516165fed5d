"""RetinaNet (torchvision's) on a PVT, weight-exact with the released ``retinanet_pvt_v2_*_fpn_1x_coco`` (mmdet 2.13):
FPN P3-P5 from stages 2-4 plus P6 = conv(C5), P7 = conv(P6) (``add_extra_convs='on_input'``, no ReLU before P7), 9
anchors per location (3 octave scales x 3 ratios, mmdet's exact sizes and order), sigmoid focal loss and L1 on the box
deltas averaged over the batch's positive anchors, and the released test settings (top 1000 anchors per level by
their best class score, score > 0.05, class-wise NMS at IoU 0.5, 100 detections per image), AdamW 1e-4."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ...engine.distributed import reduce_mean
from ...models.backbone import WeightsSource
from ..interop.mmdet import convert_detector, fpn_to_ours
from ..modeling.anchors import octave_anchors
from ..modeling.assigners.max_iou import assign_max_iou
from ..modeling.boxes import delta_coder
from ..modeling.dense_heads.foreground_labels import ForegroundLabels
from ..modeling.losses import fp32_loss
from ..modeling.necks.fpn import pvt_fpn
from ..modeling.selection import dense_detections
from ..modeling.transform import use_detection_transform
from ..registry import DetectorSpec, register


class MMDetRetinaNet(RetinaNet):
    """torchvision's RetinaNet with the released detector's loss normalisation and test-time selection (object
    classes 0..K-1 here; :class:`PVTRetinaNet` maps them to labels 1..K).

    - Assignment: mmdet's ``MaxIoUAssigner`` (IoU >= 0.5 positive, < 0.4 negative, and each object's best anchors
      assigned to it, ``min_pos_iou=0``: :func:`~pvtv2.detection.modeling.assigners.max_iou.assign_max_iou`);
      torchvision's ``Matcher`` gives such an anchor to the object it overlaps most instead.
    - Losses: the focal loss (over anchors not ignored) and the L1 loss of the deltas are summed over the batch and
      divided by the number of positive anchors in the batch, each image counting at least one (mmdet
      ``AnchorHead.loss``); torchvision divides per image, then averages the images. Under DDP the count is averaged
      over the processes (as mmdet's later heads do with ``reduce_mean``), so that N processes of B images train as
      one process of N x B; mmdet 2.13's RetinaNet divided by each GPU's own count. ``box_loss="giou"`` decodes
      the deltas and takes the GIoU loss of the boxes instead (torchvision's ``retinanet_resnet50_fpn_v2``).
    - Test: per level the ``topk_candidates`` anchors with the highest best-class score, then every (anchor, class)
      with a score above ``score_thresh`` (mmdet ``AnchorHead._get_bboxes`` + ``multiclass_nms``); torchvision keeps
      the top (anchor, class) pairs instead.
    """

    box_loss = "l1"  # or "giou"

    def box_loss_sum(self, deltas: Tensor, boxes: Tensor, anchors: Tensor) -> Tensor:
        """The summed box loss of P positive anchors: ``deltas`` ``(P, 4)`` predicted, ``boxes`` ``(P, 4)`` their
        objects' boxes, ``anchors`` ``(P, 4)``."""
        if self.box_loss == "giou":
            return generalized_box_iou_loss(self.box_coder.decode_single(deltas, anchors), boxes, reduction="sum")
        return F.l1_loss(deltas, self.box_coder.encode_single(boxes, anchors), reduction="sum")

    @fp32_loss
    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor]) -> dict[str, Tensor]:
        cls_loss = reg_loss = head_outputs["cls_logits"].new_zeros(())
        num_pos = 0
        for target, logits, deltas, anchor in zip(targets, head_outputs["cls_logits"],
                                                  head_outputs["bbox_regression"], anchors):
            assigned = assign_max_iou(anchor, target["boxes"], pos_iou=self.proposal_matcher.high_threshold,
                                      neg_iou=self.proposal_matcher.low_threshold, min_pos_iou=0.0,
                                      match_low_quality=True)  # (A,): g + 1 positive, 0 negative, -1 ignored
            fg = torch.where(assigned > 0)[0]
            matched = assigned - 1
            num_pos += max(len(fg), 1)
            onehot = torch.zeros_like(logits)  # (A, K)
            onehot[fg, target["labels"][matched[fg]]] = 1.0
            valid = assigned >= 0
            cls_loss = cls_loss + sigmoid_focal_loss(logits[valid], onehot[valid], reduction="sum")
            reg_loss = reg_loss + self.box_loss_sum(deltas[fg], target["boxes"][matched[fg]], anchor[fg])
        count = reduce_mean(cls_loss.new_tensor(float(num_pos)))  # as mmdet's later heads
        return {"loss_cls": cls_loss / count, "loss_bbox": reg_loss / count}

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        results = []
        for index, shape in enumerate(image_shapes):
            scores = [logits[index].sigmoid() for logits in head_outputs["cls_logits"]]  # per level (h*w*A, K)

            def decode(level: int, keep: Tensor) -> Tensor:
                deltas = head_outputs["bbox_regression"][level][index][keep]  # (m, 4)
                return self.box_coder.decode_single(deltas, anchors[index][level][keep])

            boxes, scores, classes = dense_detections(
                scores, [None] * len(scores), decode, shape, topk=self.topk_candidates,
                score_thresh=self.score_thresh, iou_threshold=self.nms_thresh, max_num=self.detections_per_img)
            results.append({"boxes": boxes, "scores": scores, "labels": classes})
        return results


class PVTRetinaNet(ForegroundLabels, MMDetRetinaNet):
    """:class:`MMDetRetinaNet` with ``num_classes`` = object classes (labels 1..K, see :mod:`..labels`)."""


def retinanet(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 80,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    backbone_overrides: dict[str, Any] | None = None,
    fpn_channels: int = 256,
    anchor_scale: float = 4.0,
    stages: Sequence[int] = (1, 2, 3),
    head_norm: str | None = None,
    box_loss: str = "l1",
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet on a PVT: FPN P3-P5 from stages 2-4, P6/P7 from the stage-4 output; the released test settings.

    Args:
        backbone: registered PVT name.
        num_classes: object classes (COCO: 80); labels 1..K.
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`pvtv2.models.backbone.pvt_backbone`.
        fpn_channels: FPN (and head) width; 256 in every released config.
        anchor_scale: the smallest anchor's side in strides (mmdet's ``octave_base_scale``; 4 as released, i.e.
            32 px on P3); 2 suits small objects on small images (16 px on P3).
        stages: stages feeding the FPN (the released config: 1, 2, 3).
        head_norm: ``"gn"``: GroupNorm (32 groups) after each of the head's tower convolutions, as torchvision's
            ``retinanet_resnet50_fpn_v2`` and mmdet's ``RetinaHead(norm_cfg=GN)``; ``None`` as released.
        box_loss: ``"l1"`` on the deltas as released, or ``"giou"`` on the decoded boxes (torchvision's v2).
        **kwargs: passed to :class:`torchvision.models.detection.RetinaNet` (``min_size`` 800, ``max_size`` 1333,
            ``score_thresh`` 0.05, ``nms_thresh`` 0.5, ``detections_per_img`` 100, ``topk_candidates`` 1000: the
            released ``test_cfg``).
    """
    fpn = pvt_fpn(backbone, stages=stages, extra="p6p7_input", backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides,
                  out_channels=fpn_channels)
    kwargs.setdefault("anchor_generator", octave_anchors(fpn.strides, anchor_scale, 3))  # 32..512 on P3-P7 as released
    kwargs.setdefault("detections_per_img", 100)
    if head_norm not in (None, "gn"):
        raise ValueError(f"head_norm={head_norm!r}: None (as released) or 'gn' (GroupNorm, 32 groups)")
    if box_loss not in ("l1", "giou"):
        raise ValueError(f"box_loss={box_loss!r}: 'l1' (as released) or 'giou'")
    if head_norm == "gn":
        anchors_per_location = kwargs["anchor_generator"].num_anchors_per_location()[0]
        kwargs.setdefault("head", RetinaNetHead(fpn.out_channels, anchors_per_location, num_classes,
                                                norm_layer=partial(nn.GroupNorm, 32)))
    model = PVTRetinaNet(fpn, num_classes, **kwargs)
    model.box_coder = delta_coder()
    model.box_loss = box_loss
    return use_detection_transform(model)


def one_stage_dense(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Backbone, FPN and head of a torchvision one-stage detector: ``cls_logits`` ``(B, A, K)``,
    ``bbox_regression`` ``(B, A, 4)`` (and FCOS's ``bbox_ctrness`` ``(B, A, 1)``) over the anchors of every level,
    level by level."""
    feats = list(model.backbone(images).values())  # FPN maps (B, 256, H/s, W/s)
    return dict(model.head(feats))


def from_mmdet(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """An mmdet ``RetinaNet`` state dict (``neck.*``, ``bbox_head.{cls,reg}_convs.i.conv``, ``retina_cls``,
    ``retina_reg``) under our names. The class and anchor layouts are the same on both sides: output channel
    ``a * K + k`` is anchor ``a`` (ratio-major, then octave scale) and class ``k`` (mmdet's class k = our label k + 1),
    so the head's weights are copied as they are."""
    pairs = fpn_to_ours(len(model.backbone.body.stages))
    for i in range(len(model.head.classification_head.conv)):
        for theirs, ours in (("cls_convs", "classification_head"), ("reg_convs", "regression_head")):
            pairs += [(f"bbox_head.{theirs}.{i}.conv.", f"head.{ours}.conv.{i}.0."),
                      (f"bbox_head.{theirs}.{i}.gn.", f"head.{ours}.conv.{i}.1.")]  # head_norm="gn"
    pairs += [("bbox_head.retina_cls.", "head.classification_head.cls_logits."),
              ("bbox_head.retina_reg.", "head.regression_head.bbox_reg.")]
    return convert_detector(sd, pairs, what="RetinaNet")


register(DetectorSpec("retinanet", retinanet, lr=1e-4, dense=one_stage_dense, from_mmdet=from_mmdet,
                      description="RetinaNet (Lin et al. 2017), paper Table 3"))
