"""Which registered PVT v2 variant the backbone of an OpenMMLab checkpoint (mmdet 2.x, mmseg 0.x) is: from the
config's backbone entry (the authors' class names ``pvt_v2_b0``..., or mmdet's ``PyramidVisionTransformerV2`` by its
sizes), or from the weights' names and shapes (:func:`pvtv2.weights.openmmlab.backbone_state_dict`)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CheckpointError
from ..weights.openmmlab import StateDict, backbone_state_dict
from .registry import create_model, list_models, model_info


def variant_from_config(backbone: dict[str, Any]) -> str | None:
    """Our variant name for a config's backbone entry: the authors' class name (``type='pvt_v2_b2'``), or mmdet's
    ``PyramidVisionTransformerV2`` by its ``embed_dims`` and ``num_layers``; None if neither fits."""
    kind = str(backbone.get("type", ""))
    if kind in list_models():
        return kind
    if kind == "PyramidVisionTransformerV2":
        width, depths = backbone.get("embed_dims", 64), tuple(backbone.get("num_layers", (3, 4, 6, 3)))
        for name in list_models():
            cfg = model_info(name).cfg
            if name.startswith("pvt_v2_") and cfg.embed_dims[0] == width and tuple(cfg.depths) == depths \
                    and cfg.attn_mode == "sra":
                return name
    return None


def variant_from_weights(sd: StateDict) -> str | None:
    """The registered PVT v2 variant whose weights have the names and shapes of the checkpoint's backbone (each
    candidate built on the meta device); None if none has."""
    ours = {k: tuple(v.shape) for k, v in backbone_state_dict(sd, "").items()}
    for name in list_models():
        if name.startswith("pvt_v2_"):
            with torch.device("meta"):
                model = create_model(name, num_classes=0)
            if {k: tuple(v.shape) for k, v in model.state_dict().items()} == ours:
                return name
    return None


def backbone_variant(model_cfg: dict[str, Any], sd: StateDict, *, given: str | None, overridden: bool,
                     where: str = "checkpoint") -> str:
    """The variant to build: ``given``, else the config's, else (unless the caller overrides the config of the
    variant) the one the weights fit; ``where`` names the file in the error."""
    name = given or variant_from_config(model_cfg.get("backbone") or {})
    name = name or (None if overridden else variant_from_weights(sd))
    if name is None:
        raise CheckpointError(f"{where}: cannot tell which PVT v2 variant the backbone is; pass --backbone")
    return name
