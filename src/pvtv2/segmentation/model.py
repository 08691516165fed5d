"""Semantic FPN on a PVT backbone: ``semantic_fpn(backbone="pvt_v2_b0", num_classes=150)``.

The backbone is the dense tasks' one adapter (:func:`pvtv2.models.backbone.pvt_backbone`: all four stages, frozen
stages and norms as asked); the neck is torchvision's ``FeaturePyramidNetwork`` (4 levels, 256 channels, no extra levels, as
mmseg's ``FPN(num_outs=4)``); the decoder is :class:`~pvtv2.segmentation.head.SemanticFPNHead`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from ..errors import CheckpointError
from ..export import ExportSpec, export_spec
from ..models import PVTConfig, PyramidVisionTransformer
from ..models.backbone import PVTBackbone, WeightsSource, pvt_backbone
from .head import SemanticFPNHead

NORMS = {"bn": nn.BatchNorm2d, "gn": lambda c: nn.GroupNorm(32, c)}


class SemanticFPN(nn.Module):
    """Backbone -> FPN -> Semantic FPN head -> logits bilinearly upsampled to the input size.

    Args:
        backbone: the backbone adapter on all four stages.
        num_classes: output classes (150 for ADE20K).
        fpn_channels: FPN width (256).
        head_channels: decoder branch width (128).
        dropout: dropout before the classifier (0.1).
        norm: decoder norm, ``"bn"`` (the released SyncBN; converted to SyncBatchNorm under DDP) or ``"gn"``.
    """

    resampling: str = "torchvision"  # how predict_logits resizes 8-bit images: "opencv" for released mmseg files

    def __init__(
        self,
        backbone: PVTBackbone,
        num_classes: int = 150,
        *,
        fpn_channels: int = 256,
        head_channels: int = 128,
        dropout: float = 0.1,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        if backbone.stages != (0, 1, 2, 3):
            raise ValueError(f"Semantic FPN reads all four stages; the backbone gives {backbone.stages}")
        in_chs, strides = backbone.out_channels_list, backbone.strides
        self.neck = FeaturePyramidNetwork(in_chs, fpn_channels)
        for m in self.neck.modules():  # new layers: Xavier (mmseg's FPN init)
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.decode_head = SemanticFPNHead(
            [fpn_channels] * len(in_chs), strides, head_channels, num_classes, dropout, NORMS[norm]
        )
        # everything needed to rebuild this model from a checkpoint (plain data: safe to store and load)
        self.spec: dict[str, Any] = {
            "backbone_cfg": asdict(backbone.model.cfg),
            "frozen_stages": backbone.frozen_stages,
            "norm_eval": backbone.norm_eval,
            "num_classes": num_classes,
            "fpn_channels": fpn_channels,
            "head_channels": head_channels,
            "dropout": dropout,
            "norm": norm,
        }

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits at stride 4: ``(B, num_classes, ceil(H / 4), ceil(W / 4))``."""
        pyramid = self.neck(self.backbone(x))  # 4 maps (strides 4, 8, 16, 32) -> 4 maps of fpn_channels
        return self.decode_head(list(pyramid.values()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits ``(B, num_classes, H, W)``."""
        logits = self.forward_logits(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def export_spec(self, backbone: bool = False) -> ExportSpec:
        """The :func:`pvtv2.export.export_spec` hook: images -> ``logits`` at the input size (or the stage maps)."""
        return export_spec(self.backbone.model, backbone=True) if backbone else ExportSpec(self, ("logits",))


def semantic_fpn(
    *,
    backbone: str = "pvt_v2_b0",
    num_classes: int = 150,
    backbone_weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    backbone_overrides: dict[str, Any] | None = None,
    **head_kwargs: Any,
) -> SemanticFPN:
    """Semantic FPN on a registered backbone (the detectors' builder signature).

    Args:
        backbone: a name from ``pvtv2.list_models()``.
        num_classes: output classes (150 for ADE20K).
        backbone_weights: ``"official"`` (released ImageNet weights), a checkpoint path in any supported format, or
            a state dict; the head is left out. None: random init.
        trainable_stages, norm_eval: see :func:`pvtv2.models.backbone.pvt_backbone` (released: all stages train).
        backbone_overrides: :class:`pvtv2.PVTConfig` fields to change (drop path is 0.1 for every variant in the
            released segmentation configs, the default here).
        **head_kwargs: ``fpn_channels``, ``head_channels``, ``dropout``, ``norm`` of :class:`SemanticFPN`.
    """
    body = pvt_backbone(backbone, weights=backbone_weights, trainable_stages=trainable_stages, norm_eval=norm_eval,
                        overrides=backbone_overrides)
    return SemanticFPN(body, num_classes, **head_kwargs)


def build_from_spec(spec: dict[str, Any]) -> SemanticFPN:
    """Rebuild a :class:`SemanticFPN` (random weights) from its ``spec`` dict."""
    try:
        cfg = PVTConfig(**spec["backbone_cfg"])
        body = PVTBackbone(PyramidVisionTransformer(cfg, num_classes=0), frozen_stages=spec.get("frozen_stages", 0),
                           norm_eval=spec.get("norm_eval", False))
        kwargs = {k: spec[k] for k in ("fpn_channels", "head_channels", "dropout", "norm")}
        return SemanticFPN(body, spec["num_classes"], **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's model description is incomplete or invalid ({e})") from None
