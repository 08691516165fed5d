"""The region proposal network of the released two-stage configs (mmdet 2.x ``RPNHead``), for Mask R-CNN and
Cascade Mask R-CNN alike (they differ in settings only: Mask R-CNN's box loss is L1 and every anchor takes part,
Cascade's is smooth L1 with beta 1/9 on the anchors inside the image).

:class:`ProposalNetwork`'s layers are torchvision's :class:`~torchvision.models.detection.rpn.RPNHead` (3x3 conv + ReLU, 1x1 objectness
and 1x1 box-delta convs: the same parameters as mmdet's). What torchvision's ``RegionProposalNetwork`` does
differently, and this module does as mmdet does:

- anchors: exact float sizes on the levels' nominal strides (:class:`~pvtv2.detection.modeling.anchors.LevelAnchors`);
- training targets: only anchors wholly inside the image (``allowed_border=0``) and on the image's own padded
  extent take part; max-IoU assignment 0.7 / 0.3 with low-quality matches, 256 samples (half positive); binary
  cross-entropy and smooth-L1 (beta 1/9) both averaged over the sampled anchors;
- proposals: top-k per level, decode and clip, drop empty boxes, NMS 0.7 per level, keep the best overall.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from ..anchors import inside_image, octave_anchors, padded_shape, valid_anchors
from ..assigners.max_iou import assign_max_iou
from ..assigners.random_sampler import sample_random
from ..boxes import batched_nms, decode_deltas, encode_deltas
from ..losses import fp32_loss


class ProposalNetwork(nn.Module):
    """RPN over FPN levels with mmdet's anchors, targets and proposal selection.

    Called as torchvision's ``RegionProposalNetwork``: ``rpn(images, features, targets)`` -> ``(proposals,
    losses)``, proposals a list of ``(n, 4)`` boxes per image (by decreasing score, detached), losses
    ``loss_rpn_cls`` and ``loss_rpn_bbox`` in training.

    Args:
        in_channels: FPN width.
        strides: stride of each level used (4..64 for P2-P6).
        scale, ratios: anchors per location: ``stride * scale`` wide for each ratio (released: 8; 0.5, 1, 2).
        pre_nms_top_n: best anchors kept per level before NMS, ``{"training": 2000, "testing": 1000}``.
        post_nms_top_n: proposals kept per image after NMS, ``{"training": 2000, "testing": 1000}``.
        nms_thresh: IoU of the per-level NMS.
        batch_size_per_image, positive_fraction: the anchor sampler.
        fg_iou_thresh, bg_iou_thresh: max-IoU assignment thresholds (low-quality matches from ``bg_iou_thresh``).
        allowed_border: anchors reaching more than this many pixels outside the image take no part in the loss
            (Cascade's config: 0; negative: every anchor, as mmdet's Mask R-CNN config).
        smooth_l1_beta: of the box loss (Cascade's config: 1/9; 0: L1, as mmdet's Mask R-CNN config).
    """

    def __init__(
        self,
        in_channels: int = 256,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        scale: float = 8.0,
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        *,
        pre_nms_top_n: dict[str, int] | None = None,
        post_nms_top_n: dict[str, int] | None = None,
        nms_thresh: float = 0.7,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        allowed_border: int = 0,
        smooth_l1_beta: float = 1.0 / 9.0,
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.anchor_generator = octave_anchors(strides, scale, 1, ratios)
        self.head = RPNHead(in_channels, len(ratios))  # normal(0, 0.01) init, as mmdet's
        self.pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 1000}
        self.post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 1000}
        self.nms_thresh = nms_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.allowed_border = allowed_border
        self.smooth_l1_beta = smooth_l1_beta

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return self.anchor_generator.num_anchors_per_location()[0]

    def level_anchors(self, images: ImageList, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``(h * w * A, 4)`` anchors of each level (location-major, then ratio: the heads' channel order)."""
        counts = [f.shape[-2] * f.shape[-1] * self.num_anchors for f in feats]
        return list(self.anchor_generator(images, feats)[0].split(counts))

    def forward(
        self, images: ImageList, features: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        feats = list(features.values())[: len(self.strides)]
        objectness, deltas = self.head(feats)  # per level (B, A, h, w), (B, 4A, h, w)
        anchors = self.level_anchors(images, feats)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            losses = self.loss(objectness, deltas, anchors, images.image_sizes, targets)
        return self.proposals(objectness, deltas, anchors, images.image_sizes), losses

    @torch.no_grad()
    def proposals(self, objectness: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                  image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Per image, ``(n, 4)`` proposals by decreasing score (mmdet ``RPNHead._get_bboxes``)."""
        pre_n, post_n = self.pre_nms_top_n[self._mode()], self.post_nms_top_n[self._mode()]
        b = objectness[0].size(0)
        scores, boxes, refs, levels = [], [], [], []
        for lvl, (obj, dlt, anc) in enumerate(zip(objectness, deltas, anchors)):
            s = obj.permute(0, 2, 3, 1).reshape(b, -1).sigmoid()  # (B, h*w*A): location-major
            d = dlt.permute(0, 2, 3, 1).reshape(b, -1, 4)  # (B, h*w*A, 4)
            a = anc.expand_as(d)
            if 0 < pre_n < d.size(1):
                s, order = s.sort(descending=True)
                s, order = s[:, :pre_n], order[:, :pre_n]
                rows = torch.arange(b, device=d.device).view(-1, 1).expand_as(order)
                d, a = d[rows, order], a[rows, order]
            scores.append(s)
            boxes.append(d)
            refs.append(a)
            levels.append(torch.full_like(s, lvl, dtype=torch.long))
        scores_all, refs_all, deltas_all, levels_all = (torch.cat(x, dim=1) for x in (scores, refs, boxes, levels))
        result = []
        for i in range(b):
            props = decode_deltas(refs_all[i], deltas_all[i], (1.0, 1.0, 1.0, 1.0), max_shape=image_sizes[i])
            sc, lv = scores_all[i], levels_all[i]
            keep = ((props[:, 2] - props[:, 0]) > 0) & ((props[:, 3] - props[:, 1]) > 0)
            if not keep.all():
                props, sc, lv = props[keep], sc[keep], lv[keep]
            result.append(props[batched_nms(props, sc, lv, self.nms_thresh)][:post_n])
        return result

    @fp32_loss
    def loss(self, objectness: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
             image_sizes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Binary cross-entropy on sampled anchors and smooth-L1 on the positive ones, both over the number of
        samples of the batch (each image counting at least one positive and one negative, as mmdet)."""
        flat_anchors = torch.cat(anchors)
        num_base = self.num_anchors
        labels, label_w, box_t, box_w = [], [], [], []
        num_samples = 0
        for size, target in zip(image_sizes, targets):
            pad = padded_shape(size)
            valid = torch.cat([valid_anchors(f.shape[-2:], s, num_base, pad, flat_anchors.device)
                               for f, s in zip(objectness, self.strides)])
            idx = (valid & inside_image(flat_anchors, size, self.allowed_border)).nonzero().view(-1)
            gt = target["boxes"]
            assigned = assign_max_iou(flat_anchors[idx], gt, pos_iou=self.fg_iou_thresh, neg_iou=self.bg_iou_thresh,
                                      min_pos_iou=self.bg_iou_thresh, match_low_quality=True)
            smp = sample_random(assigned, flat_anchors[idx], gt, num=self.batch_size_per_image,
                                pos_fraction=self.positive_fraction, add_gt=False)
            pos, neg = idx[smp.pos_index], idx[smp.neg_index]
            lab = torch.zeros_like(flat_anchors[:, 0])
            lab[pos] = 1.0
            w = torch.zeros_like(lab)
            w[pos], w[neg] = 1.0, 1.0
            t, tw = torch.zeros_like(flat_anchors), torch.zeros_like(flat_anchors)
            if pos.numel():
                t[pos] = encode_deltas(flat_anchors[pos], gt[smp.gt_index], (1.0, 1.0, 1.0, 1.0))
                tw[pos] = 1.0
            labels.append(lab)
            label_w.append(w)
            box_t.append(t)
            box_w.append(tw)
            num_samples += max(pos.numel(), 1) + max(neg.numel(), 1)
        logits = torch.cat([o.permute(0, 2, 3, 1).reshape(o.size(0), -1) for o in objectness], dim=1)  # (B, N)
        reg = torch.cat([d.permute(0, 2, 3, 1).reshape(d.size(0), -1, 4) for d in deltas], dim=1)  # (B, N, 4)
        # per image, the anchors are level by level: (B, N) matches the order of flat_anchors
        bce = F.binary_cross_entropy_with_logits(logits, torch.stack(labels), reduction="none")
        l1 = F.smooth_l1_loss(reg, torch.stack(box_t), beta=self.smooth_l1_beta, reduction="none")
        return {"loss_rpn_cls": (bce * torch.stack(label_w)).sum() / num_samples,
                "loss_rpn_bbox": (l1 * torch.stack(box_w)).sum() / num_samples}


def proposal_network_like(rpn: RegionProposalNetwork, strides: Sequence[int], *, allowed_border: int,
                          smooth_l1_beta: float) -> ProposalNetwork:
    """A :class:`ProposalNetwork` with the head, anchors and settings of torchvision's ``rpn`` (as ``MaskRCNN``
    builds it from its ``rpn_*`` arguments), and mmdet's targets, losses and proposal selection."""
    matcher, sampler = rpn.proposal_matcher, rpn.fg_bg_sampler
    out = ProposalNetwork(
        rpn.head.conv[0][0].in_channels, strides, pre_nms_top_n=dict(rpn._pre_nms_top_n),
        post_nms_top_n=dict(rpn._post_nms_top_n), nms_thresh=rpn.nms_thresh,
        batch_size_per_image=sampler.batch_size_per_image, positive_fraction=sampler.positive_fraction,
        fg_iou_thresh=matcher.high_threshold, bg_iou_thresh=matcher.low_threshold, allowed_border=allowed_border,
        smooth_l1_beta=smooth_l1_beta)
    out.head, out.anchor_generator = rpn.head, rpn.anchor_generator
    return out
