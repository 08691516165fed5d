"""What to export for each kind of model: one small function per kind, so a new kind is a small addition.

A model kind plugs in either by defining ``export_spec(backbone: bool) -> ExportSpec`` on the model class (the hook
detection and segmentation models use) or by a branch in :func:`export_spec` below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import PyramidVisionTransformer


@dataclass(frozen=True)
class ExportSpec:
    """A module ready to trace and the names of its inputs and outputs.

    Args:
        module: ``forward(images)`` returning a tensor or a tuple of tensors (traced as is).
        output_names: one name per output tensor, in order.
        input_name: name of the image input (``(B, C, H, W)`` float, dynamic batch/height/width).
        in_chans: channels of the input.
        min_size: smallest height/width the model accepts.
    """

    module: nn.Module
    output_names: tuple[str, ...]
    input_name: str = "images"
    in_chans: int = 3
    min_size: int = 32


class StageMaps(nn.Module):
    """A PVT backbone whose output is the tuple of its four NCHW stage maps (strides 4, 8, 16, 32)."""

    def __init__(self, model: PyramidVisionTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(f.contiguous() for f in self.model.forward_features(x))  # 4 x (B, C_i, H/s_i, W/s_i)


def is_backbone(model: nn.Module) -> bool:
    """A headless PVT (``num_classes=0``) is used for its stage maps; anything else for its ``forward``."""
    return isinstance(model, PyramidVisionTransformer) and model.num_classes == 0


def export_spec(model: nn.Module, *, backbone: bool | None = None) -> ExportSpec:
    """The :class:`ExportSpec` of ``model``.

    Args:
        model: a :class:`PyramidVisionTransformer`, a module defining ``export_spec(backbone)``, or any module mapping
            an image batch to one tensor (exported as is, output ``output``).
        backbone: export the four stage maps (``stage1``..``stage4``) instead of the logits. Default: True for a
            headless model (``num_classes=0``).
    """
    hook = getattr(model, "export_spec", None)
    if callable(hook):
        return hook(backbone=bool(backbone))
    if not isinstance(model, PyramidVisionTransformer):
        if backbone:
            raise TypeError(f"backbone export is for PVT models; {type(model).__name__} has no export_spec(backbone)")
        return ExportSpec(model, ("output",))  # any image -> tensor module (a segmentor's logits map, ...)
    if backbone is None:
        backbone = is_backbone(model)
    in_chans = model.cfg.in_chans
    if backbone:
        return ExportSpec(StageMaps(model), ("stage1", "stage2", "stage3", "stage4"), in_chans=in_chans)
    return ExportSpec(model, ("logits" if model.num_classes else "pooled",), in_chans=in_chans)
