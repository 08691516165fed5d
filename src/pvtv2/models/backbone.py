"""The backbone adapter of the dense tasks: selected stage maps of a PVT, with frozen stages and frozen norms.

Detection and segmentation both build their backbone with :func:`build_backbone` (also known as
``pvt_backbone``); necks and heads depend only on ``out_channels_list`` and ``strides`` (detectron2's backbone
contract, :class:`StageBackbone`). :class:`PVTBackbone` reads ``model.feature_info`` and calls
``model.forward_features``; it never re-implements the network. The paper's comparison backbones (torchvision's
ResNet-50 and Swin-T) sit behind the same contract in :mod:`.comparison`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import os
from typing import Any

import torch
from torch import nn

from ..layers.conv import padding_safe_conv
from .pvt import PyramidVisionTransformer

NUM_STAGES = 4
WeightsSource = str | os.PathLike[str] | dict[str, torch.Tensor] | None


class StageBackbone(nn.Module):
    """The backbone contract of the dense tasks: selected stage maps of a four-stage network, with frozen stages.

    Subclasses wrap one network (PVT here, torchvision's ResNet-50 and Swin-T in :mod:`.comparison`), hand this
    class the modules of each stage and implement ``forward``. Necks and heads read only ``out_channels_list`` and
    ``strides``.

    Args:
        stage_modules: per stage, the modules that belong to it (the down-sampling that opens it included).
        channels, strides: per stage, output channels and stride.
        stages: indices (0..3) of the stages whose outputs are returned, in increasing order.
        frozen_stages: the first ``frozen_stages`` stages get no gradient and stay in eval mode (no drop-path):
            mmdet's ``frozen_stages`` + 1 (0 = train everything, 4 = a fixed feature extractor).
        norm_eval: also freeze the affine parameters of the norms (``norm_types``) of the trainable stages.
    """

    norm_types: tuple[type[nn.Module], ...] = (nn.LayerNorm,)
    frozen_statistics = False  # True: norms always in eval mode (BatchNorm statistics never updated)

    def __init__(
        self,
        stage_modules: Sequence[Sequence[nn.Module]],
        channels: Sequence[int],
        strides: Sequence[int],
        stages: Sequence[int],
        *,
        frozen_stages: int,
        norm_eval: bool,
    ) -> None:
        super().__init__()
        stages, n = tuple(stages), len(stage_modules)
        if not stages or list(stages) != sorted(set(stages)) or not all(0 <= s < n for s in stages):
            raise ValueError(f"stages must be increasing indices in 0..{n - 1}, got {stages}")
        if not 0 <= frozen_stages <= n:
            raise ValueError(f"frozen_stages must be in 0..{n}, got {frozen_stages}")
        self.stages = stages
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_channels_list = [int(channels[s]) for s in stages]
        self.strides = [int(strides[s]) for s in stages]
        self._stage_modules = [list(mods) for mods in stage_modules]  # plain lists: not registered twice
        # Stages after the last one used take no part in the forward pass.
        for i, mods in enumerate(self._stage_modules):
            for m in mods:
                if i < frozen_stages or i > stages[-1]:
                    m.requires_grad_(False)
                elif norm_eval:
                    for norm in self._norms(m):
                        norm.requires_grad_(False)

    def _norms(self, module: nn.Module) -> list[nn.Module]:
        return [m for m in module.modules() if isinstance(m, self.norm_types)]

    def train(self, mode: bool = True) -> StageBackbone:
        super().train(mode)
        for mods in self._stage_modules[: self.frozen_stages]:
            for m in mods:
                m.eval()
        if self.norm_eval or self.frozen_statistics:
            for m in self._norms(self):
                m.eval()
        return self


class PVTBackbone(StageBackbone):
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
        info = model.feature_info
        super().__init__([[s] for s in model.stages], [i["num_chs"] for i in info], [i["reduction"] for i in info],
                         stages, frozen_stages=frozen_stages, norm_eval=norm_eval)
        self.model = model
        for p in model.head.parameters():  # the classification head takes no part either
            p.requires_grad_(False)
        self.train()

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> ``{"0": (B, C_a, H/s_a, W/s_a), ...}`` for the selected stages (contiguous)."""
        feats = self.model.forward_features(x)  # 4 maps (B, C_i, ceil(H/s_i), ceil(W/s_i)), channels-last views
        return OrderedDict((str(k), feats[s].contiguous()) for k, s in enumerate(self.stages))


def build_backbone(
    name: str,
    *,
    stages: Sequence[int] = (0, 1, 2, 3),
    weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    overrides: dict[str, Any] | None = None,
) -> StageBackbone:
    """A registered PVT without its head, or one of the comparison backbones of the paper's Table 4 (``"resnet50"``,
    ``"swin_t"``: :mod:`.comparison`), as the backbone of a dense task. PVTs get drop-path 0.1 unless overridden:
    the value of every released detection and segmentation config.

    Args:
        name: registered model name (``pvtv2.list_models()``) or a comparison backbone name.
        stages: stage indices (0..3) whose maps are returned.
        weights: ``"official"`` (the authors' ImageNet weights; torchvision's for the comparison backbones), or a
            checkpoint path / state dict in any format :func:`pvtv2.load_weights` reads (a classifier's, or the
            backbone part of a detector's or segmentor's checkpoint).
        trainable_stages: how many of the last stages train (torchvision's ``trainable_backbone_layers``);
            ``None`` = the released configs' (PVT and Swin-T: all 4; ResNet-50: 3), 0 = a fixed feature extractor.
        norm_eval: freeze the norms of the trainable stages.
        overrides: :class:`pvtv2.PVTConfig` fields to change (``{"depths": (1, 1, 1, 1)}``); for the comparison
            backbones, their constructor's (``depths`` for both).
    """
    from .comparison import COMPARISON_BACKBONES

    if name in COMPARISON_BACKBONES:
        return COMPARISON_BACKBONES[name](stages=stages, weights=weights, trainable_stages=trainable_stages,
                                          norm_eval=norm_eval, overrides=overrides)
    from .registry import create_model

    trainable = trainable_stages_or(trainable_stages, NUM_STAGES)
    cfg = {"drop_path_rate": 0.1, **(overrides or {})}
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    model = create_model(name, num_classes=0, weights=weights, ignore_head=True, **cfg)
    return PVTBackbone(model, stages, frozen_stages=NUM_STAGES - trainable, norm_eval=norm_eval)


pvt_backbone = build_backbone  # the name the rest of the package has used
# a neck's strided convs on maps of a few pixels (P6/P7 of small images) train in bf16 through this, as the stages do
neck_conv = padding_safe_conv


def trainable_stages_or(trainable_stages: int | None, default: int) -> int:
    """``trainable_stages``, or ``default`` for ``None``, checked to be in 0..4."""
    trainable = default if trainable_stages is None else trainable_stages
    if not 0 <= trainable <= NUM_STAGES:
        raise ValueError(f"trainable_stages must be in 0..{NUM_STAGES}, got {trainable_stages}")
    return trainable
