"""What OpenMMLab checkpoints (mmdet 2.x, mmseg 0.x) share: the config text in ``meta["config"]`` and the PVT v2
backbone under ``backbone.*``, in the authors' layout (their ``pvt_v2.py`` classes ``pvt_v2_b0``...:
``patch_embed1``, ``block1.0``, ``norm1``) or mmdet's own ``PyramidVisionTransformerV2`` (``layers.0.0.projection``...).
The detection and segmentation readers (:mod:`pvtv2.detection.interop.mmdet`, :mod:`pvtv2.segmentation.mmseg`) build on
these; nothing here knows a head or a model (which registered variant a backbone is: :mod:`pvtv2.models.openmmlab`).
"""

from __future__ import annotations

import ast
from typing import Any

import torch

from ..errors import CheckpointError
from .formats import StateDict, convert, detect_format


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


def checkpoint_config(ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta, model config)`` of an OpenMMLab checkpoint (empty dicts where the file has none)."""
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    config = parse_config(meta["config"]) if isinstance(meta.get("config"), str) else {}
    model = config.get("model")
    return meta, model if isinstance(model, dict) else {}


def backbone_state_dict(sd: StateDict, prefix: str) -> StateDict:
    """The ``backbone.*`` weights (authors' or mmdet's PVT v2 layout) under pvtv2's names, each with ``prefix``."""
    body = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    if not body:
        raise CheckpointError("the checkpoint has no backbone weights (no 'backbone.*' key)")
    fmt = detect_format(body)
    if fmt not in ("official", "mmdet"):
        raise CheckpointError(f"the checkpoint's backbone is not a PVT v2 in the authors' or mmdet's layout "
                              f"(first key {next(iter(body))!r})")
    return {prefix + k: v for k, v in convert(body, fmt, "pvtv2").items() if not k.startswith("head.")}


def load_strict(model: torch.nn.Module, sd: StateDict, what: str) -> None:
    """Load ``sd`` into ``model``; any missing, extra or misshapen weight is one line naming the first of them."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing:
        raise CheckpointError(f"{what}: {len(missing)} weights missing, e.g. {missing[0]!r} (truncated file, or a "
                              "model without this head?)")
    if extra:
        raise CheckpointError(f"{what}: {len(extra)} unexpected weights, e.g. {extra[0]!r}")
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{what}: {k!r} has shape {tuple(sd[k].shape)}, the model needs "
                              f"{tuple(expected[k].shape)} (another class count or backbone size?)")
    model.load_state_dict(sd)


def rename_prefixes(sd: StateDict, pairs: list[tuple[str, str]], *, what: str) -> StateDict:
    """Rename every key by the first ``(their prefix, our prefix)`` pair it starts with; a key no pair covers is an
    error naming it (``what``: the model, for the message)."""
    out: StateDict = {}
    for key, value in sd.items():
        for src, dst in pairs:
            if key.startswith(src):
                out[dst + key[len(src):]] = value
                break
        else:
            raise CheckpointError(f"unexpected weight {key!r} for a {what} (a checkpoint of another model?)")
    return out


def fpn_pairs(num_inputs: int, prefix: str) -> list[tuple[str, str]]:
    """Prefix pairs from mmdet's / mmseg's ``FPN`` (``neck.lateral_convs.i.conv``, ``neck.fpn_convs.i.conv``; extra
    convs continue ``fpn_convs`` after the ``num_inputs`` outputs) to torchvision's FPN (``inner_blocks.i.0``,
    ``layer_blocks.i.0``) plus pvtv2's extra levels (``extra_blocks.p6`` / ``p7``)."""
    pairs = []
    for i in range(num_inputs):
        pairs += [(f"neck.lateral_convs.{i}.conv.", f"{prefix}inner_blocks.{i}.0."),
                  (f"neck.fpn_convs.{i}.conv.", f"{prefix}layer_blocks.{i}.0.")]
    return pairs + [(f"neck.fpn_convs.{num_inputs}.conv.", f"{prefix}extra_blocks.p6."),
                    (f"neck.fpn_convs.{num_inputs + 1}.conv.", f"{prefix}extra_blocks.p7.")]
