"""The RoI heads of Cascade Mask R-CNN (Cai & Vasconcelos 2018) as the released PVT v2 configs set them up.

mmdet 2.13's ``CascadeRoIHead`` with the box and mask heads of whai362/PVT
``detection/configs/cascade_mask_rcnn_pvt_v2_b2_fpn_3x_mstrain_fp16.py``: three stages, each a box head of four
3x3 convs with BatchNorm and one 1024-wide FC (``ConvFCBBoxHead``; background-last softmax over K + 1 classes and
class-specific ``4K`` deltas), trained with GIoU (weight 10) on the decoded boxes, and an ``FCNMaskHead`` (four
3x3 convs, 2x deconvolution, K mask logits). Stage ``t`` samples its RoIs at IoU 0.5 / 0.6 / 0.7 from the boxes
stage ``t - 1`` regressed, its deltas have standard deviations 0.1/0.2, 0.05/0.1, 0.033/0.067 and its losses
weigh 1 / 0.5 / 0.25. At test time the class logits of the three stages are averaged, the boxes come from the
last stage, and the mask probabilities of the three mask heads are averaged.

Object labels are 1..K outside this module; inside, class ``k`` is logit ``k - 1`` and background is logit K, so
every layer has mmdet's shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import generalized_box_iou_loss

from ..anchors import padded_shape
from ..assigners.max_iou import assign_max_iou
from ..assigners.random_sampler import Samples, sample_random
from ..boxes import decode_deltas
from ..losses import fp32_loss
from ..selection import multiclass_nms
from .roi_align import LevelRoIAlign, mask_targets

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
STAGE_WEIGHTS = (1.0, 0.5, 0.25)


class ConvFCBoxHead(nn.Module):
    """mmdet's ``ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1, norm_cfg=BN)``: ``(R, C, 7, 7)`` RoI
    features -> class logits ``(R, K + 1)`` (background last) and class-specific deltas ``(R, 4K)``.

    Args:
        num_classes: K.
        in_channels: RoI feature channels.
        roi_size: side of the pooled RoI grid.
        num_convs: 3x3 conv + BN + ReLU layers (no conv bias, as mmcv's ``ConvModule`` with a norm).
        fc_channels: width of the FC layer.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, roi_size: int = 7, num_convs: int = 4,
                 fc_channels: int = 1024) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.trunk = FastRCNNConvFCHead((in_channels, roi_size, roi_size), [in_channels] * num_convs,
                                        [fc_channels], norm_layer=nn.BatchNorm2d)
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 * num_classes)
        # mmdet's initialisation: convs Kaiming (torchvision's too), the FC Xavier-normal, predictors N(0, 0.01 / 0.001)
        fc = next(m for m in self.trunk if isinstance(m, nn.Linear))
        nn.init.xavier_normal_(fc.weight)
        for layer, std in ((fc, None), (self.fc_cls, 0.01), (self.fc_reg, 0.001)):
            if std is not None:
                nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk(x)  # (R, C, 7, 7) -> (R, 1024)
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Sequential):
    """mmdet's ``FCNMaskHead``: four 3x3 conv + ReLU, a 2x deconvolution + ReLU, 1x1 logits: ``(R, C, 14, 14)``
    -> ``(R, K, 28, 28)`` (torchvision's ``MaskRCNNHeads`` + ``MaskRCNNPredictor``, biases zeroed as mmdet's)."""

    def __init__(self, num_classes: int, in_channels: int = 256, num_convs: int = 4) -> None:
        super().__init__(MaskRCNNHeads(in_channels, [in_channels] * num_convs, 1),
                         MaskRCNNPredictor(in_channels, in_channels, num_classes))
        for m in self[1].modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.zeros_(m.bias)


def select_class(values: torch.Tensor, classes: torch.Tensor, width: int) -> torch.Tensor:
    """``(R, K * width, ...)`` per-class outputs -> ``(R, width, ...)`` those of each row's class (0-based)."""
    per_class = values.view(values.size(0), -1, width, *values.shape[2:])  # (R, K*w, ...) -> (R, K, w, ...)
    return per_class[torch.arange(values.size(0), device=values.device), classes]


class CascadeRoIHeads(nn.Module):
    """Three box stages and three mask heads, each refining the boxes of the stage before.

    Called as torchvision's ``RoIHeads``: ``heads(features, proposals, image_shapes, targets)`` -> ``(detections,
    losses)``: losses ``s{t}.loss_cls``, ``s{t}.loss_bbox``, ``s{t}.loss_mask`` (mmdet's names) in training,
    detections ``{"boxes", "scores", "labels" (1..K), "masks" (N, 1, 28, 28) probabilities}`` otherwise.

    Args:
        num_classes: K.
        in_channels: FPN width.
        featmap_names, strides: names and strides of the FPN maps the RoIs are pooled from (P2-P5).
        stage_ious: per stage, the IoU above which a RoI is positive (and below which negative).
        stage_stds: per stage, the delta standard deviations.
        stage_weights: per stage, the weight of its losses.
        batch_size_per_image, positive_fraction: RoIs sampled per image and stage (ground truths added first).
        giou_weight: weight of the GIoU box loss.
        score_thresh, nms_thresh, detections_per_img: test-time selection (per-class NMS).
        masks: with the mask heads.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 256,
        featmap_names: Sequence[str] = ("0", "1", "2", "3"),
        strides: Sequence[int] = (4, 8, 16, 32),
        stage_ious: Sequence[float] = STAGE_IOUS,
        stage_stds: Sequence[Sequence[float]] = STAGE_STDS,
        stage_weights: Sequence[float] = STAGE_WEIGHTS,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        giou_weight: float = 10.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        masks: bool = True,
    ) -> None:
        super().__init__()
        if not len(stage_ious) == len(stage_stds) == len(stage_weights):
            raise ValueError("stage_ious, stage_stds and stage_weights need one entry per stage")
        self.num_classes = num_classes
        self.stage_ious, self.stage_stds = tuple(stage_ious), tuple(stage_stds)
        self.stage_weights = tuple(stage_weights)
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.giou_weight = giou_weight
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.box_roi_pool = LevelRoIAlign(list(featmap_names), 7, list(strides), sampling_ratio=0)
        self.box_head = nn.ModuleList(ConvFCBoxHead(num_classes, in_channels) for _ in stage_ious)
        self.mask_roi_pool = LevelRoIAlign(list(featmap_names), 14, list(strides), sampling_ratio=0) if masks else None
        self.mask_head = nn.ModuleList(FCNMaskHead(num_classes, in_channels) for _ in stage_ious) if masks else None

    @property
    def num_stages(self) -> int:
        return len(self.stage_ious)

    def has_mask(self) -> bool:
        """torchvision's ``RoIHeads.has_mask``: the evaluation scores masks when this is true."""
        return self.mask_head is not None

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None = None
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            return [], self.loss(features, proposals, image_shapes, targets)
        return self.detect(features, proposals, image_shapes), {}

    # --- training -------------------------------------------------------------------------------------------
    def sample(self, stage: int, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
               ) -> list[Samples]:
        """Per image, the RoIs stage ``stage`` learns from (ground truths added, max-IoU, random sampling)."""
        iou = self.stage_ious[stage]
        out = []
        for boxes, target in zip(proposals, targets):
            assigned = assign_max_iou(boxes, target["boxes"], pos_iou=iou, neg_iou=iou, min_pos_iou=iou,
                                      match_low_quality=False)
            out.append(sample_random(assigned, boxes, target["boxes"], num=self.batch_size_per_image,
                                     pos_fraction=self.positive_fraction, add_gt=True))
        return out

    def loss(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
             image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        k = self.num_classes
        for t in range(self.num_stages):
            samples = self.sample(t, proposals, targets)
            boxes = torch.cat([s.boxes for s in samples])  # (R, 4) the stage's RoIs, image by image
            cls, reg = self.box_head[t](self.box_roi_pool(features, [s.boxes for s in samples], image_shapes))
            labels = torch.cat([torch.cat([tg["labels"][s.gt_index] - 1,
                                           s.gt_index.new_full((len(s.boxes) - s.num_pos,), k)])
                                for s, tg in zip(samples, targets)])  # (R,) 0..K-1 objects, K background
            w = self.stage_weights[t]
            losses[f"s{t}.loss_cls"] = w * F.cross_entropy(cls.float(), labels)
            losses[f"s{t}.loss_bbox"] = w * self.box_loss(boxes, reg, labels, samples, targets, t)
            if self.mask_head is not None:
                losses[f"s{t}.loss_mask"] = w * self.mask_loss(t, features, samples, targets, image_shapes)
            if t < self.num_stages - 1:
                proposals = self.refine_training(t, boxes, cls, reg, labels, samples, image_shapes)
        return losses

    @fp32_loss
    def box_loss(self, boxes: torch.Tensor, reg: torch.Tensor, labels: torch.Tensor, samples: list[Samples],
                 targets: list[dict[str, torch.Tensor]], stage: int) -> torch.Tensor:
        """GIoU between the positives' decoded boxes (of their class) and their ground truths, over all RoIs."""
        pos = labels < self.num_classes
        if not pos.any():
            return reg[pos].sum()
        pred = decode_deltas(boxes[pos], select_class(reg[pos], labels[pos], 4), self.stage_stds[stage])
        gt = torch.cat([tg["boxes"][s.gt_index] for s, tg in zip(samples, targets)])
        return self.giou_weight * generalized_box_iou_loss(pred, gt, reduction="sum") / boxes.size(0)

    @fp32_loss
    def mask_loss(self, stage: int, features: dict[str, torch.Tensor], samples: list[Samples],
                  targets: list[dict[str, torch.Tensor]], image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Per-pixel binary cross-entropy of the positives' masks of their class, averaged."""
        pos_boxes = [s.boxes[: s.num_pos] for s in samples]
        logits = self.mask_head[stage](self.mask_roi_pool(features, pos_boxes, image_shapes))  # (P, K, 28, 28)
        if logits.size(0) == 0:
            return logits.sum()
        labels = torch.cat([tg["labels"][s.gt_index] - 1 for s, tg in zip(samples, targets)])
        size = logits.shape[-1]
        goal = torch.cat([mask_targets(tg["masks"], b, s.gt_index, size, padded_shape(shape))
                          for b, s, tg, shape in zip(pos_boxes, samples, targets, image_shapes)])
        return F.binary_cross_entropy_with_logits(select_class(logits, labels, 1)[:, 0], goal)

    @torch.no_grad()
    def refine_training(self, stage: int, boxes: torch.Tensor, cls: torch.Tensor, reg: torch.Tensor,
                        labels: torch.Tensor, samples: list[Samples], image_shapes: list[tuple[int, int]]
                        ) -> list[torch.Tensor]:
        """The next stage's proposals: each RoI regressed for its target class (its predicted class where it is
        background), clipped to the image, ground-truth RoIs dropped (mmdet's ``refine_bboxes``)."""
        classes = torch.where(labels == self.num_classes, cls[:, :-1].argmax(1), labels)
        deltas = select_class(reg, classes, 4)
        out, start = [], 0
        for s, shape in zip(samples, image_shapes):
            n = len(s.boxes)
            refined = decode_deltas(boxes[start : start + n], deltas[start : start + n], self.stage_stds[stage],
                                    max_shape=shape)
            keep = torch.ones(n, dtype=torch.bool, device=refined.device)
            keep[: s.num_pos] = ~s.is_gt
            out.append(refined[keep])
            start += n
        return out

    # --- inference ------------------------------------------------------------------------------------------
    def stage_outputs(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                      image_shapes: list[tuple[int, int]]) -> list[dict[str, list[torch.Tensor]]]:
        """Per stage and image, the RoIs it saw (``boxes``), its class logits and deltas (``cls``, ``reg``): the
        raw outputs of each stage, each stage's boxes regressed by the one before for its best class."""
        boxes, out = list(proposals), []
        counts = [len(b) for b in boxes]
        for t in range(self.num_stages):
            cls, reg = self.box_head[t](self.box_roi_pool(features, boxes, image_shapes))
            out.append({"boxes": boxes, "cls": list(cls.split(counts)), "reg": list(reg.split(counts))})
            if t < self.num_stages - 1:
                boxes = [decode_deltas(b, select_class(r, c[:, :-1].argmax(1), 4), self.stage_stds[t], max_shape=s)
                         for b, c, r, s in zip(boxes, out[-1]["cls"], out[-1]["reg"], image_shapes)]
        return out

    def detect(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
               image_shapes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        stages = self.stage_outputs(features, proposals, image_shapes)
        last = stages[-1]
        results = []
        for i, shape in enumerate(image_shapes):
            logits = sum(s["cls"][i] for s in stages) / self.num_stages  # class logits averaged over the stages
            boxes = decode_deltas(last["boxes"][i], last["reg"][i], self.stage_stds[-1], max_shape=shape)
            results.append(self.select(boxes, F.softmax(logits, dim=-1)))
        if self.mask_head is not None:
            self.add_masks(features, results, image_shapes)
        return results

    def select(self, boxes: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(n, 4K)`` class boxes and ``(n, K + 1)`` probabilities -> the detections (mmdet's ``multiclass_nms``)."""
        boxes, scores, classes = multiclass_nms(boxes, scores[:, : self.num_classes], score_thresh=self.score_thresh,
                                                iou_threshold=self.nms_thresh, max_num=self.detections_per_img)
        return {"boxes": boxes, "scores": scores, "labels": classes + 1}

    def add_masks(self, features: dict[str, torch.Tensor], results: list[dict[str, torch.Tensor]],
                  image_shapes: list[tuple[int, int]]) -> None:
        """Each detection's ``(1, 28, 28)`` mask probabilities of its class, averaged over the three mask heads."""
        boxes = [r["boxes"] for r in results]
        if sum(len(b) for b in boxes) == 0:
            for r in results:
                r["masks"] = r["boxes"].new_zeros(0, 1, 28, 28)
            return
        roi_feats = self.mask_roi_pool(features, boxes, image_shapes)
        probs = sum(head(roi_feats).sigmoid() for head in self.mask_head) / self.num_stages  # (N, K, 28, 28)
        labels = torch.cat([r["labels"] for r in results]) - 1
        per_image = select_class(probs, labels, 1).split([len(r["boxes"]) for r in results])
        for r, m in zip(results, per_image):
            r["masks"] = m
