"""The PVT backbone as torchvision's detectors expect it: an ``OrderedDict`` of FPN maps with ``out_channels``.

:class:`PVTBackbone` reads ``model.feature_info`` and calls ``model.forward_features``; it never re-implements the
network. :class:`PVTWithFPN` adds torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` on chosen stages
with an extra-level block (P6/P7 or max-pool), the way ``BackboneWithFPN`` does for ResNets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ..models import PyramidVisionTransformer


class PVTBackbone(nn.Module):
    """Selected stage outputs of a :class:`PyramidVisionTransformer`, with the usual fine-tuning switches.

    Args:
        model: the backbone (any registered variant; its classification head is not used).
        stages: indices (0..3) of the stages whose outputs are returned, in increasing order.
        frozen_stages: the first ``frozen_stages`` stages get no gradient and stay in eval mode (no drop-path):
            mmdet's ``frozen_stages`` + 1 (0 = train everything, 4 = a fixed feature extractor).
        norm_eval: freeze every LayerNorm of the trainable stages too (affine parameters not trained). LayerNorm
            has no running statistics, so this is what "norms in eval mode" (torchvision's ``FrozenBatchNorm2d``,
            mmdet's ``norm_eval``) amounts to for a transformer.
    """

    def __init__(
        self,
        model: PyramidVisionTransformer,
        stages: Sequence[int] = (0, 1, 2, 3),
        *,
        frozen_stages: int = 0,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        stages = tuple(stages)
        if not stages or list(stages) != sorted(set(stages)) or not all(0 <= s < len(model.stages) for s in stages):
            raise ValueError(f"stages must be increasing indices in 0..{len(model.stages) - 1}, got {stages}")
        if not 0 <= frozen_stages <= len(model.stages):
            raise ValueError(f"frozen_stages must be in 0..{len(model.stages)}, got {frozen_stages}")
        self.model = model
        self.stages = stages
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        info = model.feature_info
        self.out_channels_list = [int(info[s]["num_chs"]) for s in stages]
        self.strides = [int(info[s]["reduction"]) for s in stages]
        # The classification head and the stages after the last one used take no part in the forward pass.
        for p in model.head.parameters():
            p.requires_grad_(False)
        for i, stage in enumerate(model.stages):
            if i < frozen_stages or i > stages[-1]:
                stage.requires_grad_(False)
            elif norm_eval:
                for m in stage.modules():
                    if isinstance(m, nn.LayerNorm):
                        m.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> PVTBackbone:
        super().train(mode)
        for stage in self.model.stages[: self.frozen_stages]:
            stage.eval()
        if self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> ``{"0": (B, C_a, H/s_a, W/s_a), ...}`` for the selected stages (contiguous)."""
        feats = self.model.forward_features(x)  # 4 maps (B, C_i, ceil(H/s_i), ceil(W/s_i)), channels-last views
        return OrderedDict((str(k), feats[s].contiguous()) for k, s in enumerate(self.stages))


class PVTWithFPN(nn.Module):
    """PVT stages -> FPN (+ extra levels): the ``backbone`` of torchvision's RetinaNet, FCOS and Mask R-CNN.

    Args:
        body: the stage selector.
        out_channels: FPN width (256 in every released config).
        extra: ``"p6p7_input"`` (RetinaNet: P6 = conv(C5), P7 = conv(relu(P6)), mmdet ``add_extra_convs='on_input'``),
            ``"p6p7"`` (the same from P5, torchvision's FCOS), ``"maxpool"`` (Mask R-CNN's P6) or ``None``.
    """

    def __init__(self, body: PVTBackbone, out_channels: int = 256, extra: str | None = "maxpool") -> None:
        super().__init__()
        block: ExtraFPNBlock | None
        if extra == "maxpool":
            block = LastLevelMaxPool()
        elif extra in ("p6p7_input", "p6p7"):
            c5 = body.out_channels_list[-1]
            block = LastLevelP6P7(c5 if extra == "p6p7_input" else out_channels, out_channels)
            # torchvision switches to P5 whenever C5 already has out_channels (PVT v2-B0: 256); keep the input.
            block.use_P5 = extra == "p6p7"
        elif extra is None:
            block = None
        else:
            raise ValueError(f"extra must be 'p6p7_input', 'p6p7', 'maxpool' or None, got {extra!r}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels_list, out_channels, extra_blocks=block)
        self.out_channels = out_channels
        self.extra = extra

    @property
    def num_levels(self) -> int:
        """How many maps the forward pass returns."""
        return len(self.body.stages) + {"maxpool": 1, "p6p7_input": 2, "p6p7": 2, None: 0}[self.extra]

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
