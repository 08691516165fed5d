"""The one-stage detector frame ATSS and GFL share: torchvision's interface around mmdet 2.13's anchor heads.

:class:`AnchorPointDetector` does what mmdet's ``AnchorHead`` and its ATSS/GFL subclasses share: one square anchor
of ``anchor_scale`` x stride per location (mmdet's ``AnchorGenerator(octave_base_scale=8, scales_per_octave=1,
ratios=[1.0])``, :func:`~pvtv2.detection.modeling.anchors.octave_anchors`: centred on ``(x * stride, y * stride)``), the ATSS assignment on
the anchors that lie inside each image's own padded extent (mmdet's ``valid_flags``: a batch padded to its largest image gives the smaller images
anchors outside them, which get no target and no loss), the positive count averaged over processes, losses in
fp32 under autocast (mmdet's ``force_fp32``), and the test-time decoding: the best ``topk_candidates`` per level,
boxes clipped to the image, class-wise NMS of the ones above ``score_thresh``, ``detections_per_img`` kept.
Subclasses give the head, the losses and how a level is scored and decoded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from ....engine.distributed import reduce_mean
from ....models.backbone import PVTBackbone
from ...interop.mmdet import convert_detector, fpn_to_ours, rename_prefixes
from ..anchors import SIZE_DIVISOR, octave_anchors, valid_flags
from ..assigners.atss import atss_assign
from ..selection import dense_detections
from ..transform import DetectionTransform


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-level ``(B, C, h, w)`` maps -> ``(B, sum h*w, C)``, positions row by row, levels in order."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1)


class AnchorPointDetector(nn.Module):
    """A one-stage detector with one anchor per location and the ATSS assignment, with torchvision's interface.

    Args:
        backbone: backbone + FPN (``strides`` and the maps' ``out_channels``), e.g.
            :class:`~pvtv2.detection.modeling.necks.fpn.PVTWithFPN`.
        head: ``feats -> {name: [per-level (B, C, h, w)]}``; its first output is the class logits.
        num_classes: K object classes; labels 1..K in targets and detections.
        anchor_scale: anchor side in strides (mmdet's ``octave_base_scale``).
        topk: ATSS candidates per level and box.
        min_size, max_size, image_mean, image_std: the transform's (:class:`~pvtv2.detection.modeling.transform.DetectionTransform`: mmcv's
            resize rounding; the batch padded to a multiple of 32).
        score_thresh: lowest class score kept at test time (before any quality factor, as mmdet).
        nms_thresh: IoU of the class-wise NMS.
        detections_per_img: detections kept per image.
        topk_candidates: best anchors per level decoded at test time (mmdet's ``nms_pre``).
        **kwargs: more :class:`~pvtv2.detection.modeling.transform.DetectionTransform` arguments.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        *,
        anchor_scale: float = 8.0,
        topk: int = 9,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.topk = topk
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates
        self.anchor_generator = octave_anchors(self.strides, anchor_scale, 1, (1.0,))
        self.transform = DetectionTransform(min_size, max_size, image_mean or [0.485, 0.456, 0.406],
                                            image_std or [0.229, 0.224, 0.225], size_divisible=SIZE_DIVISOR, **kwargs)

    @property
    def strides(self) -> list[int]:
        return list(self.backbone.strides)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        """Training: ``images`` and ``targets`` -> dict of losses. Evaluation: ``images`` -> one dict of
        ``boxes`` (XYXY, input pixels), ``scores`` and ``labels`` (1..K) per image."""
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)
        feats = list(self.backbone(batch.tensors).values())
        outputs = self.head(feats)
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        anchors = list(self.anchor_generator(batch, feats)[0].split([h * w for h, w in sizes]))  # per level (hw, 4)
        if self.training:
            with torch.autocast(batch.tensors.device.type, enabled=False):
                return self.compute_loss(outputs, anchors, sizes, batch.image_sizes, targets)
        detections = self.postprocess(outputs, anchors, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    def compute_loss(self, outputs: dict[str, list[torch.Tensor]], anchors: list[torch.Tensor],
                     sizes: list[tuple[int, int]], image_sizes: list[tuple[int, int]],
                     targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Assign every image's anchors (ATSS), then :meth:`loss` on the whole batch in fp32."""
        flat = {k: flatten_levels(v).float() for k, v in outputs.items()}  # (B, A, C)
        all_anchors = torch.cat(anchors)  # (A, 4)
        counts = [len(a) for a in anchors]
        strides = torch.cat([all_anchors.new_full((n,), s) for n, s in zip(counts, self.strides)])  # (A,)
        labels, weights, boxes, num_pos = [], [], [], 0
        for size, target in zip(image_sizes, targets):
            valid = valid_flags(sizes, self.strides, size, all_anchors.device)
            level_valid = [int(v.sum()) for v in valid.split(counts)]
            gt_boxes = target["boxes"].float()
            gt = torch.full_like(valid, -1, dtype=torch.long)
            gt[valid] = atss_assign(all_anchors[valid], level_valid, gt_boxes, self.topk)
            pos = gt >= 0
            label = torch.full_like(gt, self.num_classes)
            label[pos] = target["labels"][gt[pos]] - 1  # labels 1..K -> class index 0..K-1; K = background
            labels.append(label)
            weights.append(valid.float())  # anchors outside the padded image: no classification loss
            boxes.append(gt_boxes[gt.clamp(min=0)] if len(gt_boxes) else all_anchors.new_zeros(len(gt), 4))
            num_pos += max(int(pos.sum()), 1)
        num_samples = max(float(reduce_mean(all_anchors.new_tensor(float(num_pos)))), 1.0)
        return self.loss(flat, all_anchors, strides, torch.stack(labels), torch.stack(weights), torch.stack(boxes),
                         num_samples)

    def loss(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, strides: torch.Tensor,
             labels: torch.Tensor, weights: torch.Tensor, gt_boxes: torch.Tensor,
             num_samples: float) -> dict[str, torch.Tensor]:
        """The losses from flattened outputs ``(B, A, C)``, anchors ``(A, 4)`` and their strides ``(A,)``, class
        indices ``(B, A)`` (K = background), classification weights ``(B, A)``, each anchor's box ``(B, A, 4)``
        (meaningful for positives) and the positive count averaged over processes."""
        raise NotImplementedError

    def level_scores(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One image's one level (``(C, h, w)`` maps) -> class scores ``(h*w, K)`` and a quality factor ``(h*w,)``
        that multiplies them after the score threshold (``None``: none)."""
        raise NotImplementedError

    def decode(self, out: dict[str, torch.Tensor], anchors: torch.Tensor, stride: int,
               keep: torch.Tensor) -> torch.Tensor:
        """Boxes ``(n, 4)`` XYXY of the anchors ``keep`` of one image's one level."""
        raise NotImplementedError

    def postprocess(self, outputs: dict[str, list[torch.Tensor]], anchors: list[torch.Tensor],
                    image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """mmdet's ``get_bboxes`` with ``multiclass_nms``, per image."""
        results = []
        for i, size in enumerate(image_sizes):
            per_level = [{k: v[level][i] for k, v in outputs.items()} for level in range(len(anchors))]  # (C, h, w)
            scored = [self.level_scores(out) for out in per_level]

            def decode(level: int, keep: torch.Tensor) -> torch.Tensor:
                return self.decode(per_level[level], anchors[level], self.strides[level], keep)

            boxes, scores, classes = dense_detections(
                [s for s, _ in scored], [f for _, f in scored], decode, size, topk=self.topk_candidates,
                score_thresh=self.score_thresh, iou_threshold=self.nms_thresh, max_num=self.detections_per_img)
            results.append({"boxes": boxes, "scores": scores, "labels": classes + 1})
        return results

    def dense(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised images ``(B, 3, H, W)`` -> the head's raw maps, ``{name}_{level}`` in mmdet's
        ``forward_dummy`` order (all class maps, then all box maps...)."""
        outputs = self.head(list(self.backbone(images).values()))
        return {f"{name}_{level}": m for name, maps in outputs.items() for level, m in enumerate(maps)}


def from_mmdet(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A released mmdet ``ATSS`` / ``GFL`` state dict under our names: the backbone (PVT in the authors' or mmdet's
    layout; mmdet's ResNet has torchvision's names), the FPN (:func:`~pvtv2.detection.interop.mmdet.fpn_to_ours`) and the head, whose names
    are mmdet's but for the towers' ``ConvModule`` (``.conv`` / ``.gn`` -> ``Conv2dNormActivation``'s ``.0`` /
    ``.1``). GFL's constant bin values (``bbox_head.integral.project``) are not weights here."""
    sd = {k: v for k, v in sd.items() if k != "bbox_head.integral.project"}
    pairs = fpn_to_ours(len(model.backbone.body.stages))
    for tower in ("cls_convs", "reg_convs"):
        for i in range(len(getattr(model.head, tower))):
            pairs += [(f"bbox_head.{tower}.{i}.conv.", f"head.{tower}.{i}.0."),
                      (f"bbox_head.{tower}.{i}.gn.", f"head.{tower}.{i}.1.")]
    pairs.append(("bbox_head.", "head."))  # scales, atss_cls / atss_reg / atss_centerness, gfl_cls / gfl_reg
    what = type(model).__name__
    if isinstance(model.backbone.body, PVTBackbone):
        return convert_detector(sd, pairs, what=what)
    return rename_prefixes(sd, [("backbone.", "backbone.body.model."), *pairs], what=what)
