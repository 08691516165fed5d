"""Builders of torchvision detectors on a PVT backbone: RetinaNet, Mask R-CNN and FCOS.

The FPN is wired as in the released configs (SPEC section 4): RetinaNet on stages 2-4 (strides 8-32) plus P6/P7
made from the stage-4 output (mmdet's ``add_extra_convs='on_input'``), Mask R-CNN on all four stages plus a max-pool
P6. FCOS takes all four stages too (strides 4-64, one anchor point per location of size = stride); pass
``stages=(1, 2, 3)`` for torchvision's own FCOS wiring (P3-P5 + P6/P7 from P5).

Labels follow torchvision: ``num_classes`` counts a background/unused label 0, so a dataset with K categories
uses labels 1..K and ``num_classes = K + 1``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from ..models import create_model
from ..weights import read_checkpoint, unwrap_state_dict
from .backbone import PVTBackbone, PVTWithFPN

ARCHITECTURES = ("retinanet", "mask_rcnn", "fcos")
NUM_STAGES = 4
WeightsSource = str | os.PathLike[str] | dict[str, torch.Tensor] | None
_DETECTOR_PREFIX = "body.model."  # where our detectors keep the PVT (after unwrap_state_dict drops "backbone.")


def backbone_state(source: str | os.PathLike[str] | dict[str, Any]) -> dict[str, torch.Tensor] | str:
    """Backbone weights from any source: ``"official"``, a classification checkpoint in any format, or a detection
    checkpoint (ours, or mmdet's ``backbone.*``); returns what :func:`pvtv2.create_model` takes as ``weights``."""
    if isinstance(source, str) and source == "official":
        return source
    raw = source if isinstance(source, dict) else read_checkpoint(source)
    sd = unwrap_state_dict(raw, where=str(source) if not isinstance(source, dict) else "state dict")
    if any(k.startswith(_DETECTOR_PREFIX) for k in sd):  # one of our detectors: keep its PVT only
        sd = {k[len(_DETECTOR_PREFIX) :]: v for k, v in sd.items() if k.startswith(_DETECTOR_PREFIX)}
    return sd


def pvt_fpn(
    backbone: str,
    *,
    stages: Sequence[int],
    extra: str | None,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    out_channels: int = 256,
    backbone_overrides: dict[str, Any] | None = None,
) -> PVTWithFPN:
    """A registered PVT (headless, drop-path 0.1 as in every released detection config) with an FPN on top.

    Args:
        backbone: registered model name (``pvtv2.list_models()``).
        stages: stage indices (0..3) feeding the FPN.
        extra: extra FPN levels (see :class:`PVTWithFPN`).
        backbone_weights: ``"official"``, or a checkpoint path / state dict in any format :func:`pvtv2.load_weights`
            reads (classification checkpoints, or the backbone of a detection checkpoint).
        trainable_stages: how many of the last stages train (torchvision's ``trainable_backbone_layers``);
            ``None`` = all 4 (the released configs), 0 = frozen backbone.
        norm_eval: freeze the LayerNorms of the trainable stages.
        out_channels: FPN width.
        backbone_overrides: :class:`pvtv2.PVTConfig` fields to change (e.g. ``{"drop_path_rate": 0.2}``).
    """
    trainable = NUM_STAGES if trainable_stages is None else trainable_stages
    if not 0 <= trainable <= NUM_STAGES:
        raise ValueError(f"trainable_stages must be in 0..{NUM_STAGES}, got {trainable_stages}")
    overrides = {"drop_path_rate": 0.1, **(backbone_overrides or {})}
    weights = backbone_state(backbone_weights) if backbone_weights is not None else None
    model = create_model(backbone, num_classes=0, weights=weights, **overrides)
    body = PVTBackbone(model, stages, frozen_stages=NUM_STAGES - trainable, norm_eval=norm_eval)
    return PVTWithFPN(body, out_channels, extra)


def _anchors(strides: Sequence[int], octave_base: int, scales_per_octave: int) -> AnchorGenerator:
    """mmdet-style anchors: sizes ``octave_base * stride * 2**(i / scales_per_octave)``, ratios 0.5/1/2."""
    sizes = tuple(
        tuple(int(octave_base * s * 2 ** (i / scales_per_octave)) for i in range(scales_per_octave)) for s in strides
    )
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))


def retinanet(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 91,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    stages: Sequence[int] = (1, 2, 3),
    backbone_overrides: dict[str, Any] | None = None,
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet (torchvision) on a PVT: FPN P3-P5 from stages 2-4, P6/P7 from the stage-4 output.

    Args:
        backbone: registered PVT name.
        num_classes: labels including the unused label 0 (COCO: 91 with category ids as labels, or K + 1).
        backbone_weights: see :func:`pvt_fpn`.
        trainable_stages: see :func:`pvt_fpn`.
        norm_eval: see :func:`pvt_fpn`.
        stages: stages feeding the FPN (the released config: 1, 2, 3).
        backbone_overrides: PVTConfig fields to change.
        **kwargs: passed to :class:`torchvision.models.detection.RetinaNet` (``min_size``, ``max_size``,
            ``score_thresh``, ``detections_per_img``...).
    """
    fpn = pvt_fpn(backbone, stages=stages, extra="p6p7_input", backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides)
    kwargs.setdefault("anchor_generator", _anchors(fpn.strides, 4, 3))  # 32..512 on P3-P7, 9 anchors per location
    return RetinaNet(fpn, num_classes, **kwargs)


def mask_rcnn(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 91,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    stages: Sequence[int] = (0, 1, 2, 3),
    backbone_overrides: dict[str, Any] | None = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN (torchvision) on a PVT: FPN P2-P5 from all four stages plus a max-pool P6.

    Args:
        backbone: registered PVT name.
        num_classes: classes including background (label 0).
        backbone_weights: see :func:`pvt_fpn`.
        trainable_stages: see :func:`pvt_fpn`.
        norm_eval: see :func:`pvt_fpn`.
        stages: stages feeding the FPN (the released config: all four).
        backbone_overrides: PVTConfig fields to change.
        **kwargs: passed to :class:`torchvision.models.detection.MaskRCNN`.
    """
    fpn = pvt_fpn(backbone, stages=stages, extra="maxpool", backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides)
    names = [str(i) for i in range(len(stages))]  # RoI features come from the FPN maps, not the pooled level
    kwargs.setdefault("rpn_anchor_generator", _anchors(fpn.strides, 8, 1))  # 32..512 on P2-P6, 3 per location
    kwargs.setdefault("box_roi_pool", MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2))
    kwargs.setdefault("mask_roi_pool", MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2))
    return MaskRCNN(fpn, num_classes, **kwargs)


def fcos(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 91,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    stages: Sequence[int] = (0, 1, 2, 3),
    backbone_overrides: dict[str, Any] | None = None,
    **kwargs: Any,
) -> FCOS:
    """FCOS (torchvision) on a PVT: FPN on all four stages plus a max-pool level (strides 4-64).

    ``stages=(1, 2, 3)`` gives torchvision's ResNet wiring instead (P3-P5 + P6/P7 from P5, strides 8-128).

    Args:
        backbone: registered PVT name.
        num_classes: labels including the unused label 0.
        backbone_weights: see :func:`pvt_fpn`.
        trainable_stages: see :func:`pvt_fpn`.
        norm_eval: see :func:`pvt_fpn`.
        stages: stages feeding the FPN.
        backbone_overrides: PVTConfig fields to change.
        **kwargs: passed to :class:`torchvision.models.detection.FCOS`.
    """
    extra = "maxpool" if 0 in stages else "p6p7"
    fpn = pvt_fpn(backbone, stages=stages, extra=extra, backbone_weights=backbone_weights,
                  trainable_stages=trainable_stages, norm_eval=norm_eval, backbone_overrides=backbone_overrides)
    # One anchor point per location whose size is the level's stride: FCOS's regression ranges follow from it.
    kwargs.setdefault("anchor_generator", AnchorGenerator(tuple((s,) for s in fpn.strides), ((1.0,),) * fpn.num_levels))
    return FCOS(fpn, num_classes, **kwargs)


_BUILDERS = {"retinanet": retinanet, "mask_rcnn": mask_rcnn, "fcos": fcos}


def build_detector(arch: str, **kwargs: Any) -> nn.Module:
    """``build_detector("retinanet", backbone="pvt_v2_b0", num_classes=21)``: the builder of ``arch`` by name."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown detector {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return _BUILDERS[arch](**kwargs)
