"""Released mmdet 2.x detector checkpoints -> pvtv2 detectors: ``load_mmdet_checkpoint(path) -> (model, meta)``.

An mmdet checkpoint is ``{"meta": {"mmdet_version", "config" (the config as Python text), "CLASSES", ...},
"state_dict": {...}}`` (mmcv ``save_checkpoint``). The config names the detector (``model.type``: ``RetinaNet``,
``MaskRCNN``...) and the backbone: the authors' ``detection/pvt_v2.py`` classes (``type='pvt_v2_b2'``, weights named
``backbone.patch_embed1...``, ``backbone.block1.0...``) or mmdet's own ``PyramidVisionTransformerV2`` (``embed_dims``,
``num_layers``; weights named ``backbone.layers.0.0.projection...``). Without a config both are read from the
weights' names and shapes (:mod:`pvtv2.models.openmmlab`). The detector's registry record converts the rest
(:attr:`DetectorSpec.from_mmdet`), with :func:`convert_detector` and :func:`fpn_to_ours`.

Detector types read so far: :data:`MMDET_TYPES` (add a line with each converter).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...data.images import released_resampling
from ...errors import CheckpointError
from ...models.openmmlab import backbone_variant
from ...weights import read_checkpoint
from ...weights.openmmlab import backbone_state_dict, checkpoint_config, fpn_pairs, load_strict, rename_prefixes
from ..registry import DETECTORS, get_detector

StateDict = dict[str, torch.Tensor]

# mmdet ``model.type`` -> registered detector
MMDET_TYPES: dict[str, str] = {"RetinaNet": "retinanet", "MaskRCNN": "mask_rcnn", "ATSS": "atss", "GFL": "gfl",
                               "CascadeRCNN": "cascade_mask_rcnn", "SparseRCNN": "sparse_rcnn"}

# mmdet 2.x ``CocoDataset.CLASSES``: the 80 COCO categories in the order of the detectors' class outputs
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


# --- key conversion helpers for the detectors' ``from_mmdet`` --------------------------------------------------
def fpn_to_ours(num_inputs: int, prefix: str = "backbone.fpn.") -> list[tuple[str, str]]:
    """Prefix pairs from mmdet's ``FPN`` to the FPN of :class:`~pvtv2.detection.modeling.necks.fpn.PVTWithFPN`."""
    return fpn_pairs(num_inputs, prefix)


def convert_detector(sd: StateDict, pairs: Sequence[tuple[str, str]], *, what: str) -> StateDict:
    """The backbone (authors' or mmdet's layout) under ``backbone.body.model.`` plus every other key renamed by
    ``pairs`` (a key no pair covers is an error)."""
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return {**backbone_state_dict(sd, "backbone.body.model."), **rename_prefixes(rest, list(pairs), what=what)}


def is_mmdet_checkpoint(ckpt: Any) -> bool:
    """An mmcv checkpoint: ``{"state_dict": ..., "meta": {..."mmdet_version"...}}`` or a bare ``state_dict`` whose
    keys say detector (``backbone.``, ``neck.``, a head)."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        return False
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    keys = ckpt["state_dict"].keys()
    return "mmdet_version" in meta or (any(k.startswith("neck.") for k in keys)
                                       and any(k.startswith(("bbox_head.", "roi_head.", "rpn_head.")) for k in keys))


def _arch_from_weights(sd: StateDict) -> str | None:
    if "bbox_head.retina_cls.weight" in sd:
        return "retinanet"
    if "bbox_head.atss_cls.weight" in sd:
        return "atss"
    if "bbox_head.gfl_cls.weight" in sd:
        return "gfl"
    if "roi_head.mask_head.conv_logits.weight" in sd and "rpn_head.rpn_cls.weight" in sd:
        return "mask_rcnn"
    if "roi_head.mask_head.0.conv_logits.weight" in sd:
        return "cascade_mask_rcnn"
    if "rpn_head.init_proposal_bboxes.weight" in sd:
        return "sparse_rcnn"
    return None


def _num_classes(model_cfg: dict[str, Any]) -> int | None:
    for head in (model_cfg.get("bbox_head"), (model_cfg.get("roi_head") or {}).get("bbox_head")):
        if isinstance(head, list):  # cascade: one head per stage
            head = head[0]
        if isinstance(head, dict) and "num_classes" in head:
            return int(head["num_classes"])
    return None


def load_mmdet_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    backbone: str | None = None,
    backbone_overrides: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """A released mmdet 2.x detector checkpoint as the matching pvtv2 detector (eval mode) and its description
    (:func:`pvtv2.detection.inference.detector_meta`, with the checkpoint's class names).

    Args:
        path: the ``.pth`` file (``{"meta", "state_dict"}``).
        arch: registered detector (``retinanet``, ``mask_rcnn``...); default: from the config in the checkpoint's
            meta, else from its weights' names.
        backbone: registered PVT v2 variant; default: from the config, else from the weights' shapes.
        backbone_overrides: :class:`pvtv2.PVTConfig` fields to change (a checkpoint of a non-released size).
        device: where to put the model.
        **options: builder options (``score_thresh``, ``min_size``...); the defaults are the released test settings.
    """
    return mmdet_detector(read_checkpoint(path), where=str(path), arch=arch, backbone=backbone,
                          backbone_overrides=backbone_overrides, device=device, **options)


def mmdet_detector(
    ckpt: dict[str, Any],
    *,
    where: str = "checkpoint",
    arch: str | None = None,
    backbone: str | None = None,
    backbone_overrides: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_mmdet_checkpoint` on a checkpoint already read (``where`` names it in errors)."""
    from ..inference import detector_meta

    path = where
    if not is_mmdet_checkpoint(ckpt):
        raise CheckpointError(f"{path} is not an mmdet checkpoint (expected {{'meta', 'state_dict'}} of a detector)")
    sd: StateDict = ckpt["state_dict"]
    meta, model_cfg = checkpoint_config(ckpt)
    if arch is None:
        arch = MMDET_TYPES.get(str(model_cfg["type"])) if "type" in model_cfg else _arch_from_weights(sd)
    if arch is None:
        kind = model_cfg.get("type", "unknown")
        raise CheckpointError(f"{path}: mmdet detector type {kind!r} is not supported; pvtv2 reads "
                              f"{', '.join(MMDET_TYPES)} (pass --arch if the file has no config)")
    spec = get_detector(arch)
    if spec.from_mmdet is None:
        readable = [n for n, s in DETECTORS.items() if s.from_mmdet is not None]
        raise CheckpointError(f"{path}: reading mmdet checkpoints of {arch!r} is not supported; "
                              f"supported: {', '.join(readable)}")
    backbone = backbone_variant(model_cfg, sd, given=backbone, overridden=bool(backbone_overrides), where=path)
    classes = tuple(meta.get("CLASSES") or ())
    num_classes = _num_classes(model_cfg) or len(classes) or 80
    if not classes:
        classes = COCO_CLASSES if num_classes == 80 else tuple(f"class_{i}" for i in range(1, num_classes + 1))
    elif len(classes) != num_classes:
        raise CheckpointError(f"{path}: meta lists {len(classes)} classes, its config {num_classes}")
    model = spec.build(backbone=backbone, num_classes=num_classes, backbone_overrides=backbone_overrides, **options)
    ours = spec.from_mmdet(sd, model)
    load_strict(model, ours, f"{path} ({arch}, {backbone}, {num_classes} classes)")
    t = model.transform
    t.resampling = released_resampling()
    description = detector_meta(arch, backbone=backbone, class_names=["__background__", *classes],
                                min_size=t.min_size[-1], max_size=t.max_size, backbone_overrides=backbone_overrides,
                                options={k: v for k, v in options.items() if k not in ("min_size", "max_size")})
    return model.to(device).eval(), description
