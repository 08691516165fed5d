"""Released mmdet 2.x detector checkpoints -> pvtv2 detectors: ``load_mmdet_checkpoint(path) -> (model, meta)``.

An mmdet checkpoint is ``{"meta": {"mmdet_version", "config" (the config as Python text), "CLASSES", ...},
"state_dict": {...}}`` (mmcv ``save_checkpoint``). The config names the detector (``model.type``: ``RetinaNet``,
``MaskRCNN``...) and the backbone: the authors' ``detection/pvt_v2.py`` classes (``type='pvt_v2_b2'``, weights named
``backbone.patch_embed1...``, ``backbone.block1.0...``) or mmdet's own ``PyramidVisionTransformerV2`` (``embed_dims``,
``num_layers``; weights named ``backbone.layers.0.0.projection...``). Without a config both are read from the
weights' names and shapes. The detector's registry record converts the rest (:attr:`DetectorSpec.from_mmdet`), with
the helpers here: :func:`rename_prefixes`, :func:`backbone_to_ours`, :func:`fpn_to_ours`.

Detector types read so far: :data:`MMDET_TYPES` (add a line with each converter).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..weights import convert, detect_format, read_checkpoint
from .registry import DETECTORS, get_detector

StateDict = dict[str, torch.Tensor]

# mmdet ``model.type`` -> registered detector
MMDET_TYPES: dict[str, str] = {"RetinaNet": "retinanet", "MaskRCNN": "mask_rcnn", "ATSS": "atss", "GFL": "gfl"}

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
def rename_prefixes(sd: StateDict, pairs: Sequence[tuple[str, str]], *, what: str) -> StateDict:
    """Rename every key by the first ``(mmdet prefix, our prefix)`` pair it starts with; a key no pair covers is an
    error naming it (``what``: the detector, for the message)."""
    out: StateDict = {}
    for key, value in sd.items():
        for src, dst in pairs:
            if key.startswith(src):
                out[dst + key[len(src):]] = value
                break
        else:
            raise CheckpointError(f"unexpected weight {key!r} for a {what} (a checkpoint of another detector?)")
    return out


def backbone_to_ours(sd: StateDict, prefix: str = "backbone.body.model.") -> StateDict:
    """The ``backbone.*`` weights of an mmdet / mmseg checkpoint (authors' or mmdet's PVT v2 layout) under our
    names with ``prefix``."""
    body = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    if not body:
        raise CheckpointError("the checkpoint has no backbone weights (no 'backbone.*' key)")
    fmt = detect_format(body)
    if fmt not in ("official", "mmdet"):
        raise CheckpointError(f"the checkpoint's backbone is not a PVT v2 in the authors' or mmdet's layout "
                              f"(first key {next(iter(body))!r})")
    return {prefix + k: v for k, v in convert(body, fmt, "pvtv2").items() if not k.startswith("head.")}


def fpn_to_ours(num_inputs: int, prefix: str = "backbone.fpn.") -> list[tuple[str, str]]:
    """Prefix pairs from mmdet's / mmseg's ``FPN`` (``neck.lateral_convs.i.conv``, ``neck.fpn_convs.i.conv``; extra
    convs continue ``fpn_convs`` after the ``num_inputs`` outputs) to torchvision's FPN + our extra levels."""
    pairs = []
    for i in range(num_inputs):
        pairs += [(f"neck.lateral_convs.{i}.conv.", f"{prefix}inner_blocks.{i}.0."),
                  (f"neck.fpn_convs.{i}.conv.", f"{prefix}layer_blocks.{i}.0.")]
    return pairs + [(f"neck.fpn_convs.{num_inputs}.conv.", f"{prefix}extra_blocks.p6."),
                    (f"neck.fpn_convs.{num_inputs + 1}.conv.", f"{prefix}extra_blocks.p7.")]


def convert_detector(sd: StateDict, pairs: Sequence[tuple[str, str]], *, what: str) -> StateDict:
    """Backbone (:func:`backbone_to_ours`) plus every other key renamed by ``pairs``."""
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return {**backbone_to_ours(sd), **rename_prefixes(rest, pairs, what=what)}


# --- reading the checkpoint's config -----------------------------------------------------------------------------
def parse_config(text: str) -> dict[str, Any]:
    """The assignments of an mmcv config text (``Config.pretty_text``: ``model = dict(type='RetinaNet', ...)``) as
    plain data; only literals and ``dict(...)`` calls are evaluated, nothing is executed."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
            return {kw.arg: value(kw.value) for kw in node.keywords}
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        return ast.literal_eval(node)

    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise CheckpointError(f"the checkpoint's config text does not parse ({e.msg}, line {e.lineno})") from None
    out: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                out[stmt.targets[0].id] = value(stmt.value)
            except ValueError:
                continue  # a computed value (not in configs saved by mmcv): not needed here
    return out


def _variant_from_config(backbone: dict[str, Any]) -> str | None:
    """Our variant name for a config's backbone entry (authors' class name, or mmdet's PVT v2 by its sizes)."""
    import pvtv2

    kind = str(backbone.get("type", ""))
    if kind in pvtv2.list_models():
        return kind
    if kind == "PyramidVisionTransformerV2":
        width, depths = backbone.get("embed_dims", 64), tuple(backbone.get("num_layers", (3, 4, 6, 3)))
        for name in pvtv2.list_models():
            cfg = pvtv2.model_info(name).cfg
            if name.startswith("pvt_v2_b") and cfg.embed_dims[0] == width and tuple(cfg.depths) == depths \
                    and cfg.attn_mode == "sra":
                return name
    return None


def _variant_from_weights(sd: StateDict) -> str | None:
    """The registered PVT v2 variant whose keys and shapes equal the checkpoint's backbone (built on the meta device)."""
    import pvtv2

    ours = {k[len("backbone.body.model."):]: tuple(v.shape) for k, v in backbone_to_ours(sd).items()}
    for name in pvtv2.list_models():
        if not name.startswith("pvt_v2_"):
            continue
        with torch.device("meta"):
            model = pvtv2.create_model(name, num_classes=0)
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == ours:
            return name
    return None


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
    from .inference import detector_meta

    path = where
    if not is_mmdet_checkpoint(ckpt):
        raise CheckpointError(f"{path} is not an mmdet checkpoint (expected {{'meta', 'state_dict'}} of a detector)")
    sd: StateDict = ckpt["state_dict"]
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    config = parse_config(meta["config"]) if isinstance(meta.get("config"), str) else {}
    model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {}
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
    if backbone is None:
        backbone = _variant_from_config(model_cfg.get("backbone") or {})
        backbone = backbone or (None if backbone_overrides else _variant_from_weights(sd))
        if backbone is None:
            raise CheckpointError(f"{path}: cannot tell which PVT v2 variant the backbone is; pass --backbone")
    classes = tuple(meta.get("CLASSES") or ())
    num_classes = _num_classes(model_cfg) or len(classes) or 80
    if not classes:
        classes = COCO_CLASSES if num_classes == 80 else tuple(f"class_{i}" for i in range(1, num_classes + 1))
    elif len(classes) != num_classes:
        raise CheckpointError(f"{path}: meta lists {len(classes)} classes, its config {num_classes}")
    model = spec.build(backbone=backbone, num_classes=num_classes, backbone_overrides=backbone_overrides, **options)
    ours = spec.from_mmdet(sd, model)
    _load_strict(model, ours, f"{path} ({arch}, {backbone}, {num_classes} classes)")
    t = model.transform
    description = detector_meta(arch, backbone=backbone, class_names=["__background__", *classes],
                                min_size=t.min_size[-1], max_size=t.max_size, backbone_overrides=backbone_overrides,
                                options={k: v for k, v in options.items() if k not in ("min_size", "max_size")})
    return model.to(device).eval(), description


def _load_strict(model: nn.Module, sd: StateDict, what: str) -> None:
    """Load ``sd`` into ``model``; any missing, extra or misshapen weight is one line naming the first of them."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing:
        raise CheckpointError(f"{what}: {len(missing)} weights missing, e.g. {missing[0]!r} (truncated file, or a "
                              "detector without this head?)")
    if extra:
        raise CheckpointError(f"{what}: {len(extra)} unexpected weights, e.g. {extra[0]!r}")
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{what}: {k!r} has shape {tuple(sd[k].shape)}, the model needs "
                              f"{tuple(expected[k].shape)} (another class count or backbone size?)")
    model.load_state_dict(sd)
