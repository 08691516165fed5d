"""PVT stages -> FPN: the neck every detector here shares, wired as the released mmdet configs wire it.

:class:`PVTWithFPN` puts torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` on chosen stages of the
:class:`~pvtv2.models.backbone.PVTBackbone` adapter with an extra-level block (P6/P7 or max-pool), the way
torchvision's ``BackboneWithFPN`` does for ResNets; the result is the ``backbone`` of a torchvision detector.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ..models.backbone import StageBackbone, WeightsSource, pvt_backbone


class LastLevelP6P7Output(LastLevelP6P7):
    """mmdet's ``add_extra_convs='on_output'`` with ``relu_before_extra_convs=False`` (ATSS, GFL): P6 = conv(P5),
    P7 = conv(P6), 3x3 stride-2 convs on the FPN's own output and no ReLU between them (torchvision's
    :class:`LastLevelP6P7` puts one before P7)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels)

    def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]) -> tuple[list[torch.Tensor],
                                                                                                   list[str]]:
        p6 = self.p6(p[-1])  # (B, C, ceil(h5/2), ceil(w5/2))
        return [*p, p6, self.p7(p6)], [*names, "p6", "p7"]


class PVTWithFPN(nn.Module):
    """PVT stages -> FPN (+ extra levels): the ``backbone`` of torchvision's RetinaNet, FCOS and Mask R-CNN.

    Args:
        body: the stage selector.
        out_channels: FPN width (256 in every released config).
        extra: ``"p6p7_input"`` (RetinaNet: P6 = conv(C5), P7 = conv(relu(P6)), mmdet ``add_extra_convs='on_input'``),
            ``"p6p7"`` (the same from P5, torchvision's FCOS), ``"p6p7_output"`` (P6 = conv(P5), P7 = conv(P6), no
            ReLU: ATSS and GFL, mmdet ``add_extra_convs='on_output'``), ``"maxpool"`` (Mask R-CNN's P6) or ``None``.
    """

    def __init__(self, body: StageBackbone, out_channels: int = 256, extra: str | None = "maxpool") -> None:
        super().__init__()
        block: ExtraFPNBlock | None
        if extra == "maxpool":
            block = LastLevelMaxPool()
        elif extra in ("p6p7_input", "p6p7"):
            c5 = body.out_channels_list[-1]
            block = LastLevelP6P7(c5 if extra == "p6p7_input" else out_channels, out_channels)
            # torchvision switches to P5 whenever C5 already has out_channels (PVT v2-B0: 256); keep the input.
            block.use_P5 = extra == "p6p7"
        elif extra == "p6p7_output":
            block = LastLevelP6P7Output(out_channels)
        elif extra is None:
            block = None
        else:
            raise ValueError(f"extra must be 'p6p7_input', 'p6p7', 'p6p7_output', 'maxpool' or None, got {extra!r}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels_list, out_channels, extra_blocks=block)
        self.out_channels = out_channels
        self.extra = extra

    @property
    def num_levels(self) -> int:
        """How many maps the forward pass returns."""
        return len(self.body.stages) + {"maxpool": 1, "p6p7_input": 2, "p6p7": 2, "p6p7_output": 2, None: 0}[self.extra]

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
