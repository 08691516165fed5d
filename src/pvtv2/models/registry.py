"""The model registry: every variant is a row of numbers over :class:`PVTConfig`, never a copy of code."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import torch

from ..errors import UnknownModelError
from .config import PVTConfig
from .pvt import PyramidVisionTransformer


@dataclass(frozen=True)
class ModelInfo:
    """A registered variant: its architecture (a :class:`PVTConfig` row) and a one-line description.

    Released weights and their accuracy are in :mod:`pvtv2.weights.release`, training recipes (drop path, gradient
    clipping per variant) in :mod:`pvtv2.classification.recipes`.
    """

    name: str
    cfg: PVTConfig
    description: str


V2 = PVTConfig()  # B2
V1 = V2.replace(overlap_patch_embed=False, conv_ffn=False, pos_embed=True, cls_token=True, stage_norms=False)

_ROWS: list[ModelInfo] = [
    ModelInfo("pvt_v2_b0", V2.replace(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)), "PVT v2-B0"),
    ModelInfo("pvt_v2_b1", V2.replace(depths=(2, 2, 2, 2)), "PVT v2-B1"),
    ModelInfo("pvt_v2_b2", V2, "PVT v2-B2"),
    ModelInfo("pvt_v2_b2_li", V2.replace(attn_mode="linear"), "PVT v2-B2 with linear SRA"),
    ModelInfo("pvt_v2_b3", V2.replace(depths=(3, 4, 18, 3), drop_path_rate=0.3), "PVT v2-B3"),
    ModelInfo("pvt_v2_b4", V2.replace(depths=(3, 8, 27, 3), drop_path_rate=0.3), "PVT v2-B4"),
    ModelInfo("pvt_v2_b5", V2.replace(depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4), drop_path_rate=0.3), "PVT v2-B5"),
    ModelInfo("pvt_v1_tiny", V1.replace(depths=(2, 2, 2, 2)), "PVT v1-Tiny"),
    ModelInfo("pvt_v1_small", V1, "PVT v1-Small (Table 6 row 1)"),
    ModelInfo("pvt_v1_medium", V1.replace(depths=(3, 4, 18, 3), drop_path_rate=0.3), "PVT v1-Medium"),
    ModelInfo("pvt_v1_large", V1.replace(depths=(3, 8, 27, 3), drop_path_rate=0.3), "PVT v1-Large"),
    # Table 6: PVT v1-Small, then each v2 design added in turn.
    # The +OPE row drops v1's position embeddings: with them, RetinaNet on it has 35.29 M parameters; without them
    # exactly the paper's 34.9 M (and 288.6 GFLOPs either way), so the overlapping, zero-padded convolutions carry
    # position from this row on.
    ModelInfo("pvt_v1_small_ope", V1.replace(overlap_patch_embed=True, pos_embed=False),
              "PVT v1-Small + overlapping patch embedding"),
    ModelInfo("pvt_v1_small_ope_cffn", V2, "+ convolutional FFN (= PVT v2-B2)"),
    ModelInfo("pvt_v1_small_ope_cffn_lsra", V2.replace(attn_mode="linear"), "+ linear SRA (= PVT v2-B2-Li)"),
]

_REGISTRY: dict[str, ModelInfo] = {row.name: row for row in _ROWS}


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in registry order (``list_models("pvt_v2_*")``)."""
    return [name for name in _REGISTRY if fnmatch(name, pattern)]


def model_info(name: str) -> ModelInfo:
    """The registry row of ``name``; an unknown name raises one line listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(_REGISTRY)}") from None


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    weights: str | dict[str, torch.Tensor] | None = None,
    ignore_head: bool | None = None,
    **overrides: Any,
) -> PyramidVisionTransformer:
    """Build a registered model, optionally with weights.

    Args:
        name: a name from :func:`list_models`.
        num_classes: head size; 0 for a headless backbone.
        weights: ``None`` (random init), ``"official"`` (the authors' release, via torch.hub's cache, checked), a
            Hugging Face Hub name (``"hf-hub:timm/pvt_v2_b0.in1k"``, ``"OpenGVLab/pvt_v2_b0"``), a checkpoint path
            in any supported format, or a state dict.
        ignore_head: drop the checkpoint's head instead of loading it. Default: drop it when it does not fit
            (``num_classes`` differs from the checkpoint's, or 0).
        **overrides: :class:`PVTConfig` fields to change (``drop_path_rate=0.2``, ``attn_mode="linear"``...).
    """
    info = model_info(name)
    model = PyramidVisionTransformer(info.cfg.replace(**overrides), num_classes=num_classes)
    if weights is not None:
        from ..weights import load_weights, weights_state_dict

        load_weights(model, weights_state_dict(weights, name), ignore_head=ignore_head)
    return model
