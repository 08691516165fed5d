"""The one backbone adapter of the dense tasks: selected stage maps of a PVT, with frozen stages and frozen norms.

Detection and segmentation both build their backbone with :func:`pvt_backbone`; necks and heads depend only on
``out_channels_list`` and ``strides`` (detectron2's backbone contract). :class:`PVTBackbone` reads
``model.feature_info`` and calls ``model.forward_features``; it never re-implements the network.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import os
from typing import Any

import torch
from torch import nn

from .pvt import PyramidVisionTransformer

NUM_STAGES = 4
WeightsSource = str | os.PathLike[str] | dict[str, torch.Tensor] | None


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


def pvt_backbone(
    name: str,
    *,
    stages: Sequence[int] = (0, 1, 2, 3),
    weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    overrides: dict[str, Any] | None = None,
) -> PVTBackbone:
    """A registered PVT without its head, as the backbone of a dense task (drop-path 0.1 unless overridden: the
    value of every released detection and segmentation config).

    Args:
        name: registered model name (``pvtv2.list_models()``).
        stages: stage indices (0..3) whose maps are returned.
        weights: ``"official"``, or a checkpoint path / state dict in any format :func:`pvtv2.load_weights` reads
            (a classifier's, or the backbone part of a detector's or segmentor's checkpoint).
        trainable_stages: how many of the last stages train (torchvision's ``trainable_backbone_layers``);
            ``None`` = all 4 (the released configs), 0 = a fixed feature extractor.
        norm_eval: freeze the LayerNorms of the trainable stages.
        overrides: :class:`pvtv2.PVTConfig` fields to change (``{"depths": (1, 1, 1, 1)}``).
    """
    from .registry import create_model

    trainable = NUM_STAGES if trainable_stages is None else trainable_stages
    if not 0 <= trainable <= NUM_STAGES:
        raise ValueError(f"trainable_stages must be in 0..{NUM_STAGES}, got {trainable_stages}")
    cfg = {"drop_path_rate": 0.1, **(overrides or {})}
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    model = create_model(name, num_classes=0, weights=weights, ignore_head=True, **cfg)
    return PVTBackbone(model, stages, frozen_stages=NUM_STAGES - trainable, norm_eval=norm_eval)
