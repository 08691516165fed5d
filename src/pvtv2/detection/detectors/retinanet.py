"""RetinaNet (torchvision's) on a PVT, wired as the released ``retinanet_pvt_v2_*_fpn_1x_coco`` configs:
FPN P3-P5 from stages 2-4 plus P6/P7 from the stage-4 output (mmdet ``add_extra_convs='on_input'``), 9 anchors
(3 octave scales x 3 ratios) per location, sigmoid focal loss, AdamW 1e-4."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import RetinaNet

from ...models.backbone import WeightsSource
from ..anchors import octave_anchors
from ..fpn import pvt_fpn
from ..labels import ForegroundLabels
from ..registry import DetectorSpec, register


class PVTRetinaNet(ForegroundLabels, RetinaNet):
    """torchvision's RetinaNet with ``num_classes`` = object classes (labels 1..K, see :mod:`.labels`)."""


def retinanet(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 80,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    backbone_overrides: dict[str, Any] | None = None,
    stages: Sequence[int] = (1, 2, 3),
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet on a PVT: FPN P3-P5 from stages 2-4, P6/P7 from the stage-4 output.

    Args:
        backbone: registered PVT name.
        num_classes: object classes (COCO: 80); labels 1..K.
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`pvtv2.models.backbone.pvt_backbone`.
        stages: stages feeding the FPN (the released config: 1, 2, 3).
        **kwargs: passed to :class:`torchvision.models.detection.RetinaNet` (``min_size``, ``max_size``,
            ``score_thresh``, ``detections_per_img``...).
    """
    fpn = pvt_fpn(backbone, stages=stages, extra="p6p7_input", backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides)
    kwargs.setdefault("anchor_generator", octave_anchors(fpn.strides, 4, 3))  # 32..512 on P3-P7
    return PVTRetinaNet(fpn, num_classes, **kwargs)


def one_stage_dense(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Backbone, FPN and head of a torchvision one-stage detector: ``cls_logits`` ``(B, A, K)``,
    ``bbox_regression`` ``(B, A, 4)`` (and FCOS's ``bbox_ctrness`` ``(B, A, 1)``) over the anchors of every level,
    level by level."""
    feats = list(model.backbone(images).values())  # FPN maps (B, 256, H/s, W/s)
    return dict(model.head(feats))


register(DetectorSpec("retinanet", retinanet, lr=1e-4, dense=one_stage_dense,
                      description="RetinaNet (Lin et al. 2017), paper Table 3"))
