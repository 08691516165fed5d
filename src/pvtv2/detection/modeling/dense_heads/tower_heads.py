"""The convolution towers of ATSS and GFL (mmdet 2.13 ``ATSSHead`` / ``GFLHead``), shared over the FPN levels.

Each head runs two towers of ``stacked_convs`` 3x3 convolutions (256 channels, GroupNorm with 32 groups, no bias,
ReLU) on every level, one for classification and one for the box; a learnable scalar per level (mmcv's ``Scale``)
multiplies the box output. Module names follow mmdet's where torchvision has no convention of its own
(``cls_convs``, ``reg_convs``, ``scales``, ``atss_cls``...), so released weights map one to one.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

PRIOR_PROB = 0.01  # initial foreground probability of every class logit (RetinaNet's prior)


class Scale(nn.Module):
    """``x * scale`` with a learnable scalar (mmcv's ``Scale``; one per FPN level)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class TowerHead(nn.Module):
    """Classification and box towers plus per-level scales; subclasses add the output convolutions.

    Args:
        in_channels: FPN width.
        num_levels: FPN levels (one ``Scale`` each).
        feat_channels: tower width.
        stacked_convs: convolutions per tower.
    """

    def __init__(self, in_channels: int = 256, num_levels: int = 5, feat_channels: int = 256,
                 stacked_convs: int = 4) -> None:
        super().__init__()
        self.cls_convs = self._tower(in_channels, feat_channels, stacked_convs)
        self.reg_convs = self._tower(in_channels, feat_channels, stacked_convs)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))

    @staticmethod
    def _tower(in_channels: int, channels: int, depth: int) -> nn.ModuleList:
        return nn.ModuleList(
            Conv2dNormActivation(in_channels if i == 0 else channels, channels, 3,
                                 norm_layer=lambda c: nn.GroupNorm(32, c), bias=False)
            for i in range(depth)
        )

    def init_weights(self, cls_out: nn.Conv2d) -> None:
        """mmdet's initialisation: every convolution normal(0, 0.01) with zero bias, the class logits' bias at
        the focal-loss prior (``bias_prob=0.01``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(cls_out.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    def towers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One level's ``(B, C, h, w)`` map -> the classification and box tower outputs, each ``(B, 256, h, w)``."""
        cls_feat, reg_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return cls_feat, reg_feat


class ATSSHead(TowerHead):
    """ATSS's head: class logits, box deltas (one anchor per location) and a centre-ness logit.

    Args:
        num_classes: K object classes (K logits).
        in_channels, num_levels, feat_channels, stacked_convs: see :class:`TowerHead`.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, num_levels: int = 5, feat_channels: int = 256,
                 stacked_convs: int = 4) -> None:
        super().__init__(in_channels, num_levels, feat_channels, stacked_convs)
        self.atss_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.init_weights(self.atss_cls)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """FPN maps -> per level ``cls_score`` ``(B, K, h, w)``, ``bbox_pred`` ``(B, 4, h, w)`` (deltas, scaled)
        and ``centerness`` ``(B, 1, h, w)`` (mmdet's ``forward_dummy`` outputs, in its order)."""
        out: dict[str, list[torch.Tensor]] = {"cls_score": [], "bbox_pred": [], "centerness": []}
        for x, scale in zip(feats, self.scales):
            cls_feat, reg_feat = self.towers(x)
            out["cls_score"].append(self.atss_cls(cls_feat))
            out["bbox_pred"].append(scale(self.atss_reg(reg_feat)).float())
            out["centerness"].append(self.atss_centerness(reg_feat))
        return out


class GFLHead(TowerHead):
    """GFL's head: joint class-quality logits and, per box side, logits of a distribution over ``reg_max + 1``
    distances (in units of the level's stride).

    Args:
        num_classes: K object classes (K logits).
        reg_max: largest distance bin (the released configs: 16).
        in_channels, num_levels, feat_channels, stacked_convs: see :class:`TowerHead`.
    """

    def __init__(self, num_classes: int, reg_max: int = 16, in_channels: int = 256, num_levels: int = 5,
                 feat_channels: int = 256, stacked_convs: int = 4) -> None:
        super().__init__(in_channels, num_levels, feat_channels, stacked_convs)
        self.reg_max = reg_max
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.init_weights(self.gfl_cls)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """FPN maps -> per level ``cls_score`` ``(B, K, h, w)`` and ``bbox_pred`` ``(B, 4 * (reg_max + 1), h, w)``
        (mmdet's ``forward_dummy`` outputs)."""
        out: dict[str, list[torch.Tensor]] = {"cls_score": [], "bbox_pred": []}
        for x, scale in zip(feats, self.scales):
            cls_feat, reg_feat = self.towers(x)
            out["cls_score"].append(self.gfl_cls(cls_feat))
            out["bbox_pred"].append(scale(self.gfl_reg(reg_feat)).float())
        return out


def integral(logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """GFL's box readout: the expected distance under the softmax over ``reg_max + 1`` bins, per side.

    ``(..., 4 * (reg_max + 1))`` logits (side-major: left, top, right, bottom) -> ``(..., 4)`` distances in bins.
    """
    probs = logits.reshape(*logits.shape[:-1], 4, reg_max + 1).softmax(dim=-1)  # (..., 4, n + 1)
    bins = torch.linspace(0, reg_max, reg_max + 1, dtype=probs.dtype, device=probs.device)
    return probs @ bins  # (..., 4)
