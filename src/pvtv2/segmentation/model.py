"""Semantic FPN on a PVT backbone: ``semantic_fpn("pvt_v2_b0", num_classes=150)``.

The backbone is the one :class:`~pvtv2.models.PyramidVisionTransformer`, used through ``forward_features`` and
``feature_info``; the neck is torchvision's ``FeaturePyramidNetwork`` (4 levels, 256 channels, no extra levels, as
mmseg's ``FPN(num_outs=4)``); the decoder is :class:`~pvtv2.segmentation.head.SemanticFPNHead`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from ..errors import CheckpointError
from ..export import ExportSpec, export_spec
from ..models import PVTConfig, PyramidVisionTransformer, create_model
from .head import SemanticFPNHead

NORMS = {"bn": nn.BatchNorm2d, "gn": lambda c: nn.GroupNorm(32, c)}


class SemanticFPN(nn.Module):
    """Backbone -> FPN -> Semantic FPN head -> logits bilinearly upsampled to the input size.

    Args:
        backbone: a headless :class:`PyramidVisionTransformer` (``num_classes=0``).
        num_classes: output classes (150 for ADE20K).
        fpn_channels: FPN width (256).
        head_channels: decoder branch width (128).
        dropout: dropout before the classifier (0.1).
        norm: decoder norm, ``"bn"`` (the released SyncBN; converted to SyncBatchNorm under DDP) or ``"gn"``.
    """

    def __init__(
        self,
        backbone: PyramidVisionTransformer,
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
        in_chs = [f["num_chs"] for f in backbone.feature_info]
        strides = [f["reduction"] for f in backbone.feature_info]
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
            "backbone_cfg": asdict(backbone.cfg),
            "num_classes": num_classes,
            "fpn_channels": fpn_channels,
            "head_channels": head_channels,
            "dropout": dropout,
            "norm": norm,
        }

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits at stride 4: ``(B, num_classes, ceil(H / 4), ceil(W / 4))``."""
        feats = self.backbone.forward_features(x)  # 4 maps, strides 4, 8, 16, 32
        pyramid = self.neck(OrderedDict((str(i), f) for i, f in enumerate(feats)))  # 4 maps of fpn_channels
        return self.decode_head(list(pyramid.values()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits ``(B, num_classes, H, W)``."""
        logits = self.forward_logits(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def export_spec(self, backbone: bool = False) -> ExportSpec:
        """The :func:`pvtv2.export.export_spec` hook: images -> ``logits`` at the input size (or the stage maps)."""
        return export_spec(self.backbone, backbone=True) if backbone else ExportSpec(self, ("logits",))


def semantic_fpn(
    backbone: str | PyramidVisionTransformer,
    num_classes: int = 150,
    *,
    backbone_weights: str | os.PathLike[str] | dict[str, torch.Tensor] | None = None,
    drop_path_rate: float | None = 0.1,
    **head_kwargs: Any,
) -> SemanticFPN:
    """Build Semantic FPN on a registered backbone name or a :class:`PyramidVisionTransformer`.

    Args:
        backbone: a name from ``pvtv2.list_models()`` or a model (its classification head is removed).
        num_classes: output classes (150 for ADE20K).
        backbone_weights: ``"official"`` (released ImageNet weights), a checkpoint path in any supported format,
            or a state dict; loaded through ``load_weights`` with the head left out. None: random init.
        drop_path_rate: stochastic depth of a backbone built by name (0.1 for every variant in the released
            segmentation configs); None keeps the registry's value.
        **head_kwargs: ``fpn_channels``, ``head_channels``, ``dropout``, ``norm`` of :class:`SemanticFPN`.
    """
    if isinstance(backbone, str):
        overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        model = create_model(backbone, num_classes=0, weights=backbone_weights, ignore_head=True, **overrides)
    elif isinstance(backbone, PyramidVisionTransformer):
        model = backbone
        if model.num_classes:
            model.reset_classifier(0)
        if backbone_weights is not None:
            from ..weights import load_weights

            if backbone_weights == "official":
                raise ValueError("backbone_weights='official' needs a backbone name; pass a checkpoint path")
            load_weights(model, backbone_weights, ignore_head=True)
    else:
        raise TypeError(f"backbone must be a model name or a PyramidVisionTransformer, got {type(backbone).__name__}")
    return SemanticFPN(model, num_classes, **head_kwargs)


def build_from_spec(spec: dict[str, Any]) -> SemanticFPN:
    """Rebuild a :class:`SemanticFPN` (random weights) from its ``spec`` dict."""
    try:
        cfg = PVTConfig(**spec["backbone_cfg"])
        kwargs = {k: spec[k] for k in ("fpn_channels", "head_channels", "dropout", "norm")}
        return SemanticFPN(PyramidVisionTransformer(cfg, num_classes=0), spec["num_classes"], **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's model description is incomplete or invalid ({e})") from None
