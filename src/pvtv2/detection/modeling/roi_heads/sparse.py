"""The learned proposals and dynamic instance interactive heads of Sparse R-CNN (Sun et al. 2021).

As mmdet 2.13 builds them for whai362/PVT ``detection/configs/sparse_rcnn_pvt_v2_b2[_li]_fpn_300_proposals_crop_
mstrain_480-800_3x_coco.py``: 300 learned boxes (normalised cx, cy, w, h: the whole image at the start) and 300
learned 256-d features (``EmbeddingRPNHead``); six stages of ``DIIHead`` (self-attention over the proposals,
a dynamic 1x1 conv of each proposal's 7x7 RoI features with parameters generated from its feature, an FFN, then
a 1-layer class branch and a 3-layer box branch), each refining the boxes of the stage before
(deltas with standard deviations 0.5, 0.5, 1, 1, not clipped). Training matches the queries of each stage to the
ground truth one to one (:mod:`~pvtv2.detection.modeling.assigners.hungarian`) and sums focal loss (weight 2), L1 on image-normalised boxes (5) and
GIoU (2), each over the number of matched queries averaged over the processes (mmdet's ``reduce_mean``). At test
time the 300 x K sigmoid scores of the last stage are ranked and the best 300 (query, class) pairs are the
detections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from ....engine.distributed import reduce_mean
from ..assigners.hungarian import hungarian_match, match_cost
from ..boxes import decode_deltas
from ..losses import fp32_loss
from .roi_align import LevelRoIAlign

DELTA_STDS = (0.5, 0.5, 1.0, 1.0)


class ProposalEmbedding(nn.Module):
    """Learned proposals (mmdet's ``EmbeddingRPNHead``), called as torchvision's RPN:
    ``(images, features, targets)`` -> ``((boxes (B, N, 4) XYXY pixels, features (B, N, C)), {})``.

    Args:
        num_proposals: N (300 in the released configs).
        channels: proposal feature width.
    """

    def __init__(self, num_proposals: int = 300, channels: int = 256) -> None:
        super().__init__()
        self.init_proposal_bboxes = nn.Embedding(num_proposals, 4)  # (cx, cy, w, h) / image size
        self.init_proposal_features = nn.Embedding(num_proposals, channels)  # N(0, 1), as mmdet leaves it
        nn.init.constant_(self.init_proposal_bboxes.weight[:, :2], 0.5)
        nn.init.constant_(self.init_proposal_bboxes.weight[:, 2:], 1.0)

    def forward(self, images: ImageList, features: object = None, targets: object = None
                ) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
        whwh = torch.tensor([[w, h, w, h] for h, w in images.image_sizes], dtype=images.tensors.dtype,
                            device=images.tensors.device)  # (B, 4)
        boxes = box_convert(self.init_proposal_bboxes.weight, "cxcywh", "xyxy")[None] * whwh[:, None]  # (B, N, 4)
        feats = self.init_proposal_features.weight[None].expand(len(images.image_sizes), -1, -1)  # (B, N, C)
        return (boxes, feats), {}


class DynamicConv(nn.Module):
    """Each proposal's 7x7 RoI features through two 1x1 convs whose weights its feature generates (mmdet's
    ``DynamicConv``): ``(R, C)`` features, ``(R, C, 7, 7)`` RoI features -> ``(R, C)``.

    Args:
        channels: C.
        feat_channels: width between the two dynamic convs (64).
        roi_size: side of the RoI grid.
    """

    def __init__(self, channels: int = 256, feat_channels: int = 64, roi_size: int = 7) -> None:
        super().__init__()
        self.channels, self.feat_channels = channels, feat_channels
        self.dynamic_layer = nn.Linear(channels, 2 * channels * feat_channels)
        self.norm_in = nn.LayerNorm(feat_channels)
        self.norm_out = nn.LayerNorm(channels)
        self.fc_layer = nn.Linear(channels * roi_size**2, channels)
        self.fc_norm = nn.LayerNorm(channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, params: torch.Tensor, roi_feats: torch.Tensor) -> torch.Tensor:
        c, f = self.channels, self.feat_channels
        x = roi_feats.flatten(2).transpose(1, 2)  # (R, C, 7, 7) -> (R, 49, C)
        p = self.dynamic_layer(params)  # (R, 2*C*F)
        w_in, w_out = p[:, : c * f].view(-1, c, f), p[:, -c * f :].view(-1, f, c)
        x = self.activation(self.norm_in(torch.bmm(x, w_in)))  # (R, 49, F)
        x = self.activation(self.norm_out(torch.bmm(x, w_out)))  # (R, 49, C)
        return self.activation(self.fc_norm(self.fc_layer(x.flatten(1))))  # (R, 49*C) -> (R, C)


def _fc_branch(channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(channels, channels, bias=False), nn.LayerNorm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DIIHead(nn.Module):
    """One Sparse R-CNN stage (mmdet's ``DIIHead``): ``(B*N, C, 7, 7)`` RoI features and ``(B, N, C)`` proposal
    features -> class logits ``(B, N, K)``, box deltas ``(B, N, 4)`` and the new proposal features.

    Args:
        num_classes: K (sigmoid: no background logit).
        channels: C.
        num_heads: self-attention heads.
        ffn_channels: FFN hidden width.
        num_cls_fcs, num_reg_fcs: Linear + LayerNorm + ReLU layers of the two branches.
        dropout: of attention, dynamic conv and FFN (0 in the released configs).
    """

    def __init__(self, num_classes: int, channels: int = 256, num_heads: int = 8, ffn_channels: int = 2048,
                 num_cls_fcs: int = 1, num_reg_fcs: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(channels, num_heads, dropout=dropout)  # (N, B, C) as mmcv's
        self.attention_norm = nn.LayerNorm(channels)
        self.instance_interactive_conv = DynamicConv(channels)
        self.instance_interactive_conv_dropout = nn.Dropout(dropout)
        self.instance_interactive_conv_norm = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_channels), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_channels, channels), nn.Dropout(dropout))
        self.ffn_norm = nn.LayerNorm(channels)
        self.cls_fcs = _fc_branch(channels, num_cls_fcs)
        self.fc_cls = nn.Linear(channels, num_classes)
        self.reg_fcs = _fc_branch(channels, num_reg_fcs)
        self.fc_reg = nn.Linear(channels, 4)
        # mmdet: Xavier-uniform for every matrix, the focal-loss prior 0.01 on the class bias, box bias 0
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.fc_cls.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, roi_feats: torch.Tensor, obj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = obj.shape
        obj = obj.permute(1, 0, 2)  # (B, N, C) -> (N, B, C): mmdet's layout, the same rounding
        obj = self.attention_norm(obj + self.attention(obj, obj, obj)[0])  # weights computed, as mmcv's call does
        x = obj.permute(1, 0, 2).reshape(b * n, c)  # (N, B, C) -> (B*N, C)
        x = self.instance_interactive_conv_norm(
            x + self.instance_interactive_conv_dropout(self.instance_interactive_conv(x, roi_feats)))
        x = self.ffn_norm(x + self.ffn(x))  # (B*N, C)
        cls = self.fc_cls(self.cls_fcs(x)).view(b, n, -1)
        deltas = self.fc_reg(self.reg_fcs(x)).view(b, n, 4)
        return cls, deltas, x.view(b, n, c)


class SparseRoIHeads(nn.Module):
    """Six DII stages over the learned proposals. Called as torchvision's ``RoIHeads``: ``heads(features,
    (boxes, proposal features), image_shapes, targets)`` -> ``(detections, losses)``: losses
    ``stage{t}_loss_cls``, ``stage{t}_loss_bbox``, ``stage{t}_loss_iou`` (mmdet's names) in training, detections
    ``{"boxes", "scores", "labels" (1..K)}`` (``detections_per_img`` each, by decreasing score) otherwise.

    Args:
        num_classes: K.
        channels: FPN and proposal feature width.
        featmap_names, strides: names and strides of the FPN maps (P2-P5).
        num_stages: DII stages (6).
        cls_weight, l1_weight, giou_weight: loss and matching-cost weights (2, 5, 2).
        detections_per_img: (query, class) pairs kept per image (300: every query once on average).
        score_thresh: pairs scoring less are dropped after the ranking (the released test: none, 0).
    """

    def __init__(self, num_classes: int, *, channels: int = 256, featmap_names: Sequence[str] = ("0", "1", "2", "3"),
                 strides: Sequence[int] = (4, 8, 16, 32),
                 num_stages: int = 6, cls_weight: float = 2.0, l1_weight: float = 5.0, giou_weight: float = 2.0,
                 detections_per_img: int = 300, score_thresh: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box_roi_pool = LevelRoIAlign(list(featmap_names), 7, list(strides), sampling_ratio=2)
        self.box_head = nn.ModuleList(DIIHead(num_classes, channels) for _ in range(num_stages))
        self.weights = {"cls": cls_weight, "l1": l1_weight, "giou": giou_weight}
        self.detections_per_img = detections_per_img
        self.score_thresh = score_thresh

    def has_mask(self) -> bool:
        """torchvision's ``RoIHeads.has_mask``: Sparse R-CNN predicts boxes only."""
        return False

    def stages(self, features: dict[str, torch.Tensor], boxes: torch.Tensor, obj: torch.Tensor,
               image_shapes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per stage, its class logits ``(B, N, K)`` and refined boxes ``(B, N, 4)`` (each stage's boxes are
        detached before the next stage pools from them, as mmdet does)."""
        out = []
        for head in self.box_head:
            cls, deltas, obj = head(self.box_roi_pool(features, list(boxes), image_shapes), obj)
            new = decode_deltas(boxes.reshape(-1, 4), deltas.reshape(-1, 4), DELTA_STDS).view_as(boxes)
            out.append((cls, new))
            boxes = new.detach()
        return out

    def forward(self, features: dict[str, torch.Tensor], proposals: tuple[torch.Tensor, torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None = None
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        outputs = self.stages(features, *proposals, image_shapes)
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            losses: dict[str, torch.Tensor] = {}
            for t, (cls, boxes) in enumerate(outputs):
                losses.update({f"stage{t}_{k}": v for k, v in self.loss(cls, boxes, image_shapes, targets).items()})
            return [], losses
        cls, boxes = outputs[-1]
        return [self.select(c, b) for c, b in zip(cls, boxes)], {}

    def select(self, logits: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``detections_per_img`` best (query, class) pairs of one image: ``(N, K)`` logits, ``(N, 4)`` boxes."""
        scores, idx = logits.sigmoid().flatten().topk(min(self.detections_per_img, logits.numel()))
        keep = scores >= self.score_thresh
        scores, idx = scores[keep], idx[keep]
        return {"boxes": boxes[idx // self.num_classes], "scores": scores, "labels": idx % self.num_classes + 1}

    @fp32_loss
    def loss(self, logits: torch.Tensor, boxes: torch.Tensor, image_shapes: list[tuple[int, int]],
             targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One stage's losses: ``(B, N, K)`` logits and ``(B, N, 4)`` boxes against the targets."""
        k = self.num_classes
        labels = torch.full(logits.shape[:2], k, dtype=torch.long, device=logits.device)  # (B, N), K: no object
        pred, goal, scale = [], [], []
        for i, (target, (h, w)) in enumerate(zip(targets, image_shapes)):
            gt_labels = target["labels"] - 1
            if gt_labels.numel() == 0:
                continue
            cost = match_cost(logits[i].detach(), boxes[i].detach(), gt_labels, target["boxes"], (h, w),
                              cls_weight=self.weights["cls"], l1_weight=self.weights["l1"],
                              giou_weight=self.weights["giou"])
            q, g = hungarian_match(cost)
            labels[i, q] = gt_labels[g]
            pred.append(boxes[i, q])
            goal.append(target["boxes"][g])
            scale.append(boxes.new_tensor([w, h, w, h]).expand(len(q), 4))
        # mmdet's DIIHead divides by the matched count averaged over processes (reduce_mean), here at least 1
        num_pos = max(float(reduce_mean(logits.new_tensor(float(sum(len(p) for p in pred))))), 1.0)
        onehot = F.one_hot(labels.flatten(), k + 1)[:, :k].to(logits.dtype)  # (B*N, K), no-object row all 0
        loss_cls = sigmoid_focal_loss(logits.reshape(-1, k), onehot, alpha=0.25, gamma=2.0, reduction="sum")
        losses = {"loss_cls": self.weights["cls"] * loss_cls / num_pos}
        if pred:
            p, g, s = torch.cat(pred), torch.cat(goal), torch.cat(scale)
            losses["loss_bbox"] = self.weights["l1"] * (p / s - g / s).abs().sum() / num_pos
            losses["loss_iou"] = self.weights["giou"] * generalized_box_iou_loss(p, g, reduction="sum") / num_pos
        else:
            losses["loss_bbox"] = losses["loss_iou"] = boxes.sum() * 0
        return losses
