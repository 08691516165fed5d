"""The box and mask RoI heads of the released mmdet 2.x Mask R-CNN, on torchvision's ``RoIHeads``.

:class:`MMDetRoIHeads`: the RoIs sampled as the RPN's anchors and Cascade's RoIs are
(:mod:`~pvtv2.detection.modeling.assigners`); L1 box loss; mask targets from
:func:`~pvtv2.detection.modeling.roi_heads.roi_align.mask_targets` (cropped with ``aligned=True``, binarised at 0.5);
at test time every (RoI, class) scoring above ``score_thresh`` enters the class-wise NMS, without torchvision's
removal of boxes under 0.01 px (``multiclass_nms``). The RoIs are pooled by
:class:`~pvtv2.detection.modeling.roi_heads.roi_align.LevelRoIAlign`; the RPN in front of these heads is
:class:`~pvtv2.detection.modeling.proposal.rpn.ProposalNetwork`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.ops import clip_boxes_to_image

from ..assigners.max_iou import assign_max_iou
from ..assigners.random_sampler import sample_random
from ..boxes import encode_deltas
from ..losses import fp32_loss
from ..selection import multiclass_nms
from .roi_align import mask_targets


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

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None
                                ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Per image, the RoIs the heads learn from (the released ``rcnn`` train settings: max-IoU assignment with
        low-quality matches, the ground truths added first, random sampling; the same functions as the RPN's and
        Cascade's): sampled boxes (positives first), the ground truth of each (0 for negatives), class labels (0:
        background) and box-delta targets, as torchvision's ``RoIHeads`` returns them."""
        assert targets is not None
        fg, bg = self.proposal_matcher.high_threshold, self.proposal_matcher.low_threshold
        stds = [1.0 / w for w in self.box_coder.weights]
        boxes_out, matched, labels, regression = [], [], [], []
        for boxes, target in zip(proposals, targets):
            gt = target["boxes"]
            assigned = assign_max_iou(boxes, gt, pos_iou=fg, neg_iou=bg, min_pos_iou=fg, match_low_quality=True)
            smp = sample_random(assigned, boxes, gt, num=self.fg_bg_sampler.batch_size_per_image,
                                pos_fraction=self.fg_bg_sampler.positive_fraction, add_gt=True)
            negatives = smp.gt_index.new_zeros(len(smp.boxes) - smp.num_pos)
            gt_index = torch.cat([smp.gt_index, negatives])  # (P + Q,)
            boxes_out.append(smp.boxes)
            matched.append(gt_index)
            labels.append(torch.cat([target["labels"][smp.gt_index], negatives]))
            wanted = gt[gt_index] if len(gt) else torch.zeros_like(smp.boxes)
            regression.append(encode_deltas(smp.boxes, wanted, stds))
        return boxes_out, matched, labels, regression

    def mask_logits(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
                    ) -> Tensor:
        """Mask logits ``(N, K + 1, 2S, 2S)`` of the boxes."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    @staticmethod
    @fp32_loss
    def box_losses(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                   regression_targets: list[Tensor]) -> dict[str, Tensor]:
        """Cross-entropy over the sampled RoIs; L1 of the positives' deltas of their class, over the sampled RoIs."""
        labels_all, targets = torch.cat(labels), torch.cat(regression_targets)
        pos = torch.where(labels_all > 0)[0]
        deltas = box_regression.reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]  # (P, 4)
        return {"loss_cls": F.cross_entropy(class_logits, labels_all),
                "loss_bbox": F.l1_loss(deltas, targets[pos], reduction="sum") / max(len(labels_all), 1)}

    @staticmethod
    @fp32_loss
    def mask_loss(logits: Tensor, boxes: list[Tensor], targets: list[dict[str, Tensor]], matched: list[Tensor],
                  labels: list[Tensor]) -> Tensor:
        """Binary cross-entropy of each positive's class channel against its ground-truth mask cropped to the box
        with ``aligned=True`` and binarised at 0.5."""
        size = logits.shape[-2:]
        wanted = [mask_targets(t["masks"], b, m, size, t["masks"].shape[-2:])  # no padding: see mask_targets
                  for b, t, m in zip(boxes, targets, matched)]
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
            boxes, scores, classes = multiclass_nms(  # background (class 0) dropped
                clip_boxes_to_image(boxes, shape)[:, 1:], scores[:, 1:], score_thresh=self.score_thresh,
                iou_threshold=self.nms_thresh, max_num=self.detections_per_img)
            out_boxes.append(boxes)
            out_scores.append(scores)
            out_labels.append(classes + 1)
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
