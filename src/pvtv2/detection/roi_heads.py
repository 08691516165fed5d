"""Two-stage pieces (torchvision's) computing what the released mmdet 2.x Mask R-CNN computes.

- :class:`LevelRoIAlign`: mmdet's ``SingleRoIExtractor``: RoI -> level ``floor(log2(sqrt(area) / 56 + 1e-6))``
  (``finest_scale=56``) on the 4 FPN maps, ``RoIAlign(sampling_ratio=0, aligned=True)``. torchvision's
  ``MultiScaleRoIAlign`` always pools with ``aligned=False`` (half a pixel off) and infers the scales from sizes.
- :class:`MMDetRPN`: the RPN's box loss is L1 (``loss_bbox=L1Loss``), not smooth L1 with beta 1/9; both losses are
  averaged over the sampled anchors, each image counting at least one positive and one negative.
- :class:`MMDetRoIHeads`: L1 box loss; mask targets cropped with ``aligned=True`` and binarised at 0.5
  (``BitmapMasks.crop_and_resize``); at test time every (RoI, class) scoring above ``score_thresh`` enters the
  class-wise NMS, without torchvision's removal of boxes under 0.01 px (``multiclass_nms``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, batched_nms, clip_boxes_to_image, roi_align
from torchvision.ops.boxes import box_area


class LevelRoIAlign(MultiScaleRoIAlign):
    """RoIAlign over FPN levels with mmdet's level rule and ``aligned=True`` (see the module doc).

    Args:
        featmap_names: the FPN maps RoIs are pooled from, finest first.
        output_size: pooled size (7 for boxes, 14 for masks).
        strides: stride of each of those maps (4, 8, 16, 32).
        sampling_ratio: bilinear samples per bin side (0: ``ceil(bin size)``, the released setting).
        finest_scale: RoIs smaller than ``2 * finest_scale`` (side ``sqrt(area)``) go to the finest map.
    """

    def __init__(self, featmap_names: list[str], output_size: int, strides: list[int], *, sampling_ratio: int = 0,
                 finest_scale: float = 56.0) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.strides = [int(s) for s in strides]
        self.finest_scale = finest_scale

    def levels(self, rois: Tensor) -> Tensor:
        """``(K, 5)`` RoIs -> level index ``(K,)`` of each."""
        scale = box_area(rois[:, 1:]).sqrt()
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.strides) - 1).long()

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """FPN maps + per-image boxes ``(k_i, 4)`` -> pooled features ``(sum k_i, C, S, S)``."""
        feats = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])  # (K, 5)
        level = self.levels(rois)
        out = feats[0].new_zeros(len(rois), feats[0].shape[1], *self.output_size)
        for i, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(level == i)[0]
            if len(idx):
                out[idx] = roi_align(feat, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio,
                                     aligned=True).to(out.dtype)
        return out


def _avg_factor(masks: list[Tensor]) -> int:
    """Samples per image, each image counting at least one (mmdet ``max(inds.numel(), 1)``)."""
    return sum(max(int(m.sum()), 1) for m in masks)


class MMDetRPN(RegionProposalNetwork):
    """torchvision's RPN with the released losses (see the module doc)."""

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos_masks))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg_masks))[0]])
        total = _avg_factor(pos_masks) + _avg_factor(neg_masks)
        targets = torch.cat(regression_targets)
        box_loss = F.l1_loss(pred_bbox_deltas[pos], targets[pos], reduction="sum") / total
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], torch.cat(labels)[sampled], reduction="sum") / total
        return objectness_loss, box_loss


def rebuild_rpn(rpn: RegionProposalNetwork) -> MMDetRPN:
    """An :class:`MMDetRPN` with the parts and settings of torchvision's ``rpn``."""
    matcher, sampler = rpn.proposal_matcher, rpn.fg_bg_sampler
    out = MMDetRPN(rpn.anchor_generator, rpn.head, matcher.high_threshold, matcher.low_threshold,
                   sampler.batch_size_per_image, sampler.positive_fraction, rpn._pre_nms_top_n, rpn._post_nms_top_n,
                   rpn.nms_thresh, rpn.score_thresh)
    out.box_coder = rpn.box_coder
    return out


class MMDetRoIHeads(RoIHeads):
    """torchvision's box and mask RoI heads with the released losses and test-time selection (module doc);
    class 0 is the background, object classes 1..K (the released heads put the background last: the checkpoint
    reader moves it)."""

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_feats = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_feats)  # (R, K + 1), (R, 4 (K + 1))
        if self.training:
            losses = self.box_losses(class_logits, box_regression, labels, regression_targets)
            if self.has_mask():
                pos = [torch.where(lab > 0)[0] for lab in labels]
                boxes = [p[i] for p, i in zip(proposals, pos)]
                logits = self.mask_logits(features, boxes, image_shapes)
                losses["loss_mask"] = self.mask_loss(logits, boxes, targets, [m[i] for m, i in zip(matched_idxs, pos)],
                                                     [lab[i] for lab, i in zip(labels, pos)])
            return [], losses
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        result = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
        if self.has_mask():
            logits = self.mask_logits(features, boxes, image_shapes)
            for probs, r in zip(maskrcnn_inference(logits, labels), result):
                r["masks"] = probs  # (N, 1, M, M) of each box's class
        return result, {}

    def mask_logits(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
                    ) -> Tensor:
        """Mask logits ``(N, K + 1, 2S, 2S)`` of the boxes."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    @staticmethod
    def box_losses(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                   regression_targets: list[Tensor]) -> dict[str, Tensor]:
        """Cross-entropy over the sampled RoIs; L1 of the positives' deltas of their class, over the sampled RoIs."""
        labels_all, targets = torch.cat(labels), torch.cat(regression_targets)
        pos = torch.where(labels_all > 0)[0]
        deltas = box_regression.reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]  # (P, 4)
        return {"loss_classifier": F.cross_entropy(class_logits, labels_all),
                "loss_box_reg": F.l1_loss(deltas, targets[pos], reduction="sum") / max(len(labels_all), 1)}

    @staticmethod
    def mask_loss(logits: Tensor, boxes: list[Tensor], targets: list[dict[str, Tensor]], matched: list[Tensor],
                  labels: list[Tensor]) -> Tensor:
        """Binary cross-entropy of each positive's class channel against its ground-truth mask cropped to the box
        with ``aligned=True`` and binarised at 0.5."""
        size = logits.shape[-2:]
        wanted = []
        for b, t, m in zip(boxes, targets, matched):
            rois = torch.cat([m[:, None].to(b.dtype), b], dim=1)  # (P, 5): each positive on its own gt mask
            gt = t["masks"][:, None].to(b.dtype)  # (G, 1, H, W)
            wanted.append(roi_align(gt, rois, size, 1.0, 0, aligned=True)[:, 0] >= 0.5)
        target = torch.cat(wanted).to(logits.dtype)
        if target.numel() == 0:
            return logits.sum() * 0
        chosen = logits[torch.arange(len(target), device=logits.device), torch.cat(labels)]  # (P, 2S, 2S)
        return F.binary_cross_entropy_with_logits(chosen, target)

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                               image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        boxes_all = self.box_coder.decode(box_regression, proposals)  # (R, K + 1, 4)
        scores_all = F.softmax(class_logits, -1)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, shape in zip(boxes_all.split([len(p) for p in proposals]),
                                        scores_all.split([len(p) for p in proposals]), image_shapes):
            boxes = clip_boxes_to_image(boxes, shape)[:, 1:]  # background (class 0) dropped
            rows, classes = torch.where(scores[:, 1:] > self.score_thresh)
            boxes, scores = boxes[rows, classes], scores[rows, classes + 1]
            keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(classes[keep] + 1)
        return out_boxes, out_scores, out_labels


def rebuild_roi_heads(heads: RoIHeads) -> MMDetRoIHeads:
    """An :class:`MMDetRoIHeads` with the parts and settings of torchvision's ``heads``."""
    matcher, sampler = heads.proposal_matcher, heads.fg_bg_sampler
    out = MMDetRoIHeads(heads.box_roi_pool, heads.box_head, heads.box_predictor, matcher.high_threshold,
                        matcher.low_threshold, sampler.batch_size_per_image, sampler.positive_fraction,
                        heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
                        heads.mask_roi_pool, heads.mask_head, heads.mask_predictor)
    out.box_coder = heads.box_coder
    return out
