"""Released mmseg 0.x Semantic FPN checkpoints -> :class:`~pvtv2.segmentation.model.SemanticFPN`.

The PVT v2 Semantic FPN configs (whai362/PVTv2-Seg ``configs/sem_fpn/PVTv2/fpn_pvtv2_*_ade20k_40k.py``, on mmseg's
``_base_/models/fpn_r50.py``) are an ``EncoderDecoder`` with the PVT backbone, ``FPN(out_channels=256, num_outs=4)``
and ``FPNHead(channels=128, dropout_ratio=0.1)`` with SyncBN, trained on ADE20K with ``reduce_zero_label``: output
``k`` is ADE20K class ``k + 1`` (label 0, "other", is never predicted). The weights map one to one:

- ``backbone.*``: the authors' or mmdet's PVT v2 layout (:mod:`pvtv2.weights.openmmlab`);
- ``neck.lateral_convs.i.conv`` / ``neck.fpn_convs.i.conv`` -> torchvision FPN ``inner_blocks.i.0`` / ``layer_blocks.i.0``;
- ``decode_head.scale_heads.i.{j}.conv`` / ``.bn`` (mmcv ``ConvModule``; ``nn.Upsample`` entries in between hold no
  weights) -> ``decode_head.scale_heads.i.{j}.0`` / ``.1``; ``decode_head.conv_seg`` as it is.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..data.images import released_resampling
from ..errors import CheckpointError
from ..weights import read_checkpoint
from ..models.openmmlab import backbone_variant
from ..weights.openmmlab import backbone_state_dict, checkpoint_config, fpn_pairs, load_strict, rename_prefixes
from .classes import ADE20K_CLASSES
from .datasets import DatasetMeta
from .model import SemanticFPN, semantic_fpn

StateDict = dict[str, torch.Tensor]


def is_mmseg_checkpoint(ckpt: Any) -> bool:
    """An mmcv checkpoint of a segmentor: ``{"state_dict": {... "decode_head.*" ...}, "meta": ...}``."""
    return isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) \
        and any(k.startswith("decode_head.") for k in ckpt["state_dict"])


def from_mmseg(sd: StateDict, model: SemanticFPN) -> StateDict:
    """An mmseg ``EncoderDecoder`` (PVT + ``FPN`` + ``FPNHead``) state dict under our names."""
    pairs = fpn_pairs(len(model.backbone.stages), "neck.")[:-2]  # num_outs=4: no extra levels
    for i, branch in enumerate(model.decode_head.scale_heads):
        for j in range(len(branch)):
            pairs += [(f"decode_head.scale_heads.{i}.{j}.conv.", f"decode_head.scale_heads.{i}.{j}.0."),
                      (f"decode_head.scale_heads.{i}.{j}.bn.", f"decode_head.scale_heads.{i}.{j}.1.")]
    pairs.append(("decode_head.conv_seg.", "decode_head.conv_seg."))
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return {**backbone_state_dict(sd, "backbone.model."), **rename_prefixes(rest, pairs, what="Semantic FPN")}


def load_mmseg_checkpoint(
    path: str | os.PathLike[str],
    *,
    backbone: str | None = None,
    backbone_overrides: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[SemanticFPN, DatasetMeta]:
    """A released mmseg Semantic FPN checkpoint as a :class:`SemanticFPN` (eval mode) and its classes.

    Args:
        path: the ``.pth`` file (``{"meta", "state_dict"}``).
        backbone: registered PVT v2 variant; default: from the config in the checkpoint's meta, else from the
            weights' shapes.
        backbone_overrides: :class:`pvtv2.PVTConfig` fields to change (a checkpoint of a non-released size).
        map_location: where to put the model.
    """
    return mmseg_segmentor(read_checkpoint(path), where=str(path), backbone=backbone,
                           backbone_overrides=backbone_overrides, map_location=map_location)


def mmseg_segmentor(
    ckpt: dict[str, Any],
    *,
    where: str = "checkpoint",
    backbone: str | None = None,
    backbone_overrides: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[SemanticFPN, DatasetMeta]:
    """:func:`load_mmseg_checkpoint` on a checkpoint already read (``where`` names it in errors)."""
    if not is_mmseg_checkpoint(ckpt):
        raise CheckpointError(f"{where} is not an mmseg checkpoint (expected {{'meta', 'state_dict'}} of a segmentor)")
    sd: StateDict = ckpt["state_dict"]
    meta, model_cfg = checkpoint_config(ckpt)
    kind, head = model_cfg.get("type", "EncoderDecoder"), (model_cfg.get("decode_head") or {}).get("type", "FPNHead")
    if (kind, head) != ("EncoderDecoder", "FPNHead") or "neck.lateral_convs.0.conv.weight" not in sd:
        raise CheckpointError(f"{where}: only Semantic FPN segmentors (EncoderDecoder + FPN + FPNHead) are read, "
                              f"this is {kind} with {head}")
    name = backbone_variant(model_cfg, sd, given=backbone, overridden=bool(backbone_overrides), where=where)
    if "decode_head.conv_seg.weight" not in sd:
        raise CheckpointError(f"{where}: the checkpoint has no classifier (decode_head.conv_seg)")
    num_classes = int(sd["decode_head.conv_seg.weight"].shape[0])
    classes = tuple(str(c).strip() for c in meta.get("CLASSES") or ())  # mmseg 0.x spells ADE20K's 'bed 
    if not classes:
        classes = ADE20K_CLASSES if num_classes == 150 else tuple(f"class_{i}" for i in range(num_classes))
    elif len(classes) != num_classes:
        raise CheckpointError(f"{where}: meta lists {len(classes)} classes, the classifier has {num_classes}")
    model = semantic_fpn(backbone=name, num_classes=num_classes, backbone_overrides=backbone_overrides)
    load_strict(model, from_mmseg(sd, model), f"{where} (Semantic FPN, {name}, {num_classes} classes)")
    model.resampling = released_resampling()  # test images resized as mmseg's pipeline does
    ade = classes == ADE20K_CLASSES
    data = DatasetMeta(num_classes, classes, 255, reduce_zero_label=ade)
    return model.to(map_location).eval(), data
