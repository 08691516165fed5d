"""PVT stages -> FPN: the neck every detector here shares, wired as the released mmdet configs wire it.

:class:`PVTWithFPN` puts torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` on chosen stages of the
:class:`~pvtv2.models.backbone.PVTBackbone` adapter with an extra-level block (P6/P7 or max-pool), the way
torchvision's ``BackboneWithFPN`` does for ResNets; the result is the ``backbone`` of a torchvision detector.
torchvision's FPN computes what mmdet's ``FPN`` computes (1x1 laterals, nearest top-down upsampling to the finer
map's size, 3x3 outputs); the extra levels follow the mmdet options (:class:`ExtraConvs`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ....models.backbone import StageBackbone, WeightsSource, neck_conv, pvt_backbone


class ExtraConvs(LastLevelP6P7):
    """P6 = 3x3/2 conv of C5 (``from_input``) or of P5, P7 = 3x3/2 conv of P6, with or without a ReLU before P7:
    mmdet's ``FPN(add_extra_convs='on_input' | 'on_output', relu_before_extra_convs=...)``. torchvision's
    :class:`~torchvision.ops.feature_pyramid_network.LastLevelP6P7` always applies the ReLU (and picks P5 whenever
    C5 has the FPN's width); the parameters keep its names (``p6``, ``p7``)."""

    def __init__(self, in_channels: int, out_channels: int, *, from_input: bool, relu: bool) -> None:
        super().__init__(in_channels, out_channels)
        self.use_P5 = not from_input
        self.relu = relu

    def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]
                ) -> tuple[list[torch.Tensor], list[str]]:
        # 3x3/2 convs of maps that are 1x1 for images under 64 / 128 px: neck_conv keeps bf16 training finite
        p6 = neck_conv(self.p6, p[-1] if self.use_P5 else c[-1])
        p7 = neck_conv(self.p7, F.relu(p6) if self.relu else p6)
        return [*p, p6, p7], [*names, "p6", "p7"]


# extra levels: name -> (from C5, ReLU before P7); see PVTWithFPN
_EXTRA_CONVS = {"p6p7_input": (True, False), "p6p7_output": (False, False), "p6p7": (False, True)}


class PVTWithFPN(nn.Module):
    """PVT stages -> FPN (+ extra levels): the ``backbone`` of torchvision's RetinaNet, FCOS and Mask R-CNN.

    Args:
        body: the stage selector.
        out_channels: FPN width (256 in every released config).
        extra: ``"p6p7_input"`` (the released RetinaNet: P6 = conv(C5), P7 = conv(P6), mmdet
            ``add_extra_convs='on_input'`` without ``relu_before_extra_convs``), ``"p6p7_output"`` (the same from
            P5, mmdet ``'on_output'``), ``"p6p7"`` (from P5 with a ReLU before P7: torchvision's FCOS, mmdet's FCOS
            configs; ATSS and GFL use ``"p6p7_output"``), ``"maxpool"`` (Mask R-CNN's P6 = 1x1/2 max-pool of P5) or
            ``None``.
    """

    def __init__(self, body: StageBackbone, out_channels: int = 256, extra: str | None = "maxpool") -> None:
        super().__init__()
        block: ExtraFPNBlock | None
        if extra == "maxpool":
            block = LastLevelMaxPool()
        elif extra in _EXTRA_CONVS:
            from_input, relu = _EXTRA_CONVS[extra]
            block = ExtraConvs(body.out_channels_list[-1] if from_input else out_channels, out_channels,
                               from_input=from_input, relu=relu)
        elif extra is None:
            block = None
        else:
            raise ValueError(f"extra must be one of {[*_EXTRA_CONVS, 'maxpool']} or None, got {extra!r}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels_list, out_channels, extra_blocks=block)
        self.out_channels = out_channels
        self.extra = extra

    @property
    def num_levels(self) -> int:
        """How many maps the forward pass returns."""
        return len(self.body.stages) + (0 if self.extra is None else 1 if self.extra == "maxpool" else 2)

    @property
    def strides(self) -> list[int]:
        """Stride of each returned map."""
        s = list(self.body.strides)
        while len(s) < self.num_levels:
            s.append(s[-1] * 2)
        return s

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> ``num_levels`` maps ``(B, out_channels, H/s, W/s)``."""
        return self.fpn(self.body(x))


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
    """A registered PVT or comparison backbone (:func:`~pvtv2.models.backbone.build_backbone`) with an FPN on
    ``stages``.

    Args:
        backbone: registered model name (``pvtv2.list_models()``), ``"resnet50"`` or ``"swin_t"``.
        stages: stage indices (0..3) feeding the FPN.
        extra: extra FPN levels (see :class:`PVTWithFPN`).
        backbone_weights, trainable_stages, norm_eval, backbone_overrides: see
            :func:`~pvtv2.models.backbone.pvt_backbone`.
        out_channels: FPN width.
    """
    body = pvt_backbone(backbone, stages=stages, weights=backbone_weights, trainable_stages=trainable_stages,
                        norm_eval=norm_eval, overrides=backbone_overrides)
    return PVTWithFPN(body, out_channels, extra)
