"""mmdet 2.x key names -> ours, for the parts the one-stage detectors share (backbone, FPN, tower heads).

mmdet writes a detector as ``backbone.*`` (the authors' ``pvt_v2.py`` layout, mmdet's own ``PyramidVisionTransformerV2``
layout, or, for ResNet, torchvision's own names), ``neck.lateral_convs.{i}.conv`` / ``neck.fpn_convs.{i}.conv``
(the extra P6/P7 convolutions follow the FPN outputs) and ``bbox_head.*`` with mmcv ``ConvModule`` towers
(``.conv`` / ``.gn``). Ours are torchvision's ``FeaturePyramidNetwork`` (``inner_blocks`` / ``layer_blocks`` /
``extra_blocks.p6``, ``.p7``) and ``Conv2dNormActivation`` (``.0`` / ``.1``); the head's other names are mmdet's.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.backbone import PVTBackbone
from ..weights.formats import convert, detect_format

StateDict = dict[str, torch.Tensor]
DROPPED = ("bbox_head.integral.project",)  # GFL's constant bin values, a buffer in mmdet


def backbone_from_mmdet(sd: StateDict, model: nn.Module) -> StateDict:
    """mmdet's ``backbone.*`` tensors -> ours under ``backbone.body.model.`` (PVT in any layout pvtv2 reads;
    torchvision-named backbones as they are)."""
    part = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    if isinstance(model.backbone.body, PVTBackbone):
        fmt = detect_format(part)
        if fmt is None:
            raise CheckpointError("the mmdet checkpoint's backbone.* is not a PVT in a layout pvtv2 reads "
                                  "(official pvt_v2.py or mmdet PyramidVisionTransformerV2)")
        part = convert(part, fmt, "pvtv2")
    return {f"backbone.body.model.{k}": v for k, v in part.items()}


def fpn_from_mmdet(sd: StateDict, num_inputs: int) -> StateDict:
    """mmdet's ``neck.*`` (FPN on ``num_inputs`` maps, extra convs after them) -> ours under ``backbone.fpn.``."""
    extra = {num_inputs: "extra_blocks.p6", num_inputs + 1: "extra_blocks.p7"}
    out = {}
    for key, value in sd.items():
        m = re.match(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$", key)
        if m is None:
            continue
        kind, i, leaf = m.group(1), int(m.group(2)), m.group(3)
        if kind == "lateral_convs":
            name = f"inner_blocks.{i}.0"
        else:
            name = f"layer_blocks.{i}.0" if i < num_inputs else extra[i]
        out[f"backbone.fpn.{name}.{leaf}"] = value
    return out


def head_from_mmdet(sd: StateDict) -> StateDict:
    """mmdet's ``bbox_head.*`` of ATSS / GFL -> ours under ``head.`` (``ConvModule`` ``.conv`` / ``.gn`` ->
    ``Conv2dNormActivation`` ``.0`` / ``.1``)."""
    out = {}
    for key, value in sd.items():
        if not key.startswith("bbox_head.") or key in DROPPED:
            continue
        key = re.sub(r"_convs\.(\d+)\.conv\.", r"_convs.\1.0.", key)
        key = re.sub(r"_convs\.(\d+)\.gn\.", r"_convs.\1.1.", key)
        out["head." + key[len("bbox_head."):]] = value
    return out


def one_stage_from_mmdet(sd: StateDict, model: nn.Module) -> StateDict:
    """A released mmdet ATSS / GFL state dict -> the state dict of ``model`` (an
    :class:`~pvtv2.detection.one_stage.AnchorPointDetector`)."""
    num_inputs = len(model.backbone.body.out_channels_list)
    return {**backbone_from_mmdet(sd, model), **fpn_from_mmdet(sd, num_inputs), **head_from_mmdet(sd)}
