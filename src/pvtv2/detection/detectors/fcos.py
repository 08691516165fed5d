"""FCOS (torchvision's) on a PVT: FPN on all four stages plus a max-pool level (strides 4-64), one anchor point per
location; ``stages=(1, 2, 3)`` gives torchvision's own wiring (P3-P5 + P6/P7 from P5, strides 8-128)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torchvision.models.detection import FCOS

from ...models.backbone import WeightsSource
from ..modeling.anchors import point_anchors
from ..modeling.dense_heads.foreground_labels import ForegroundLabels
from ..modeling.losses import fp32_loss
from ..modeling.necks.fpn import pvt_fpn
from ..modeling.selection import dense_detections
from ..registry import DetectorSpec, register
from .retinanet import one_stage_dense


# torchvision's loss names -> mmdet's (every detector's losses carry the names mmdet gives them)
LOSS_NAMES = {"classification": "loss_cls", "bbox_regression": "loss_bbox", "bbox_ctrness": "loss_centerness"}


class MMDetFCOS(FCOS):
    """torchvision's FCOS with mmdet's loss names and mmdet's test-time selection (``FCOSHead.get_bboxes``: per
    level the best ``topk_candidates`` locations by class score x centre-ness, then ``multiclass_nms`` with the
    score threshold on the class score and the centre-ness as the score factor), as every other detector here;
    torchvision's ranks (location, class) pairs by the geometric mean of the two."""

    @fp32_loss
    def compute_loss(self, *args: Any) -> dict[str, Tensor]:
        return {LOSS_NAMES[k]: v for k, v in super().compute_loss(*args).items()}

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        results = []
        for index, shape in enumerate(image_shapes):
            scores = [c[index].sigmoid() for c in head_outputs["cls_logits"]]  # per level (h*w, K)
            quality = [c[index].sigmoid().flatten() for c in head_outputs["bbox_ctrness"]]  # (h*w,)

            def decode(level: int, keep: Tensor) -> Tensor:
                deltas = head_outputs["bbox_regression"][level][index][keep]  # (m, 4)
                return self.box_coder.decode(deltas, anchors[index][level][keep])

            boxes, scores, classes = dense_detections(
                scores, quality, decode, shape, topk=self.topk_candidates, score_thresh=self.score_thresh,
                iou_threshold=self.nms_thresh, max_num=self.detections_per_img)
            results.append({"boxes": boxes, "scores": scores, "labels": classes})
        return results


class PVTFCOS(ForegroundLabels, MMDetFCOS):
    """:class:`MMDetFCOS` with ``num_classes`` = object classes (labels 1..K, see
    :mod:`~pvtv2.detection.modeling.dense_heads.foreground_labels`)."""


def fcos(
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
) -> FCOS:
    """FCOS on a PVT.

    Args:
        backbone: registered PVT name.
        num_classes: object classes (COCO: 80); labels 1..K.
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`pvtv2.models.backbone.pvt_backbone`.
        fpn_channels: FPN (and head) width; 256 in every released config.
        stages: stages feeding the FPN.
        **kwargs: passed to :class:`torchvision.models.detection.FCOS`.
    """
    extra = "maxpool" if 0 in stages else "p6p7"
    fpn = pvt_fpn(backbone, stages=stages, extra=extra, backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides,
                  out_channels=fpn_channels)
    # One anchor point per location whose size is the level's stride: FCOS's regression ranges follow from it.
    kwargs.setdefault("anchor_generator", point_anchors(fpn.strides))
    return PVTFCOS(fpn, num_classes, **kwargs)


register(DetectorSpec("fcos", fcos, lr=1e-4, dense=one_stage_dense,
                      description="FCOS (Tian et al. 2019), anchor-free"))
