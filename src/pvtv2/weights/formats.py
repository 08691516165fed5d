"""Checkpoint key formats: detection and pure state-dict conversions to and from pvtv2's own names.

pvtv2's names: ``stages.{s}.patch_embed.{proj,norm}``, ``stages.{s}.pos_embed``, ``stages.3.cls_token``,
``stages.{s}.blocks.{j}.{norm1,attn.{q,kv,proj,sr,norm},norm2,mlp.{fc1,dwconv,fc2}}``, ``stages.{s}.norm``,
``head``. Every function here takes a state dict and returns a new one; none touches a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Union

import torch

StateDict = dict[str, torch.Tensor]
Rule = tuple[str, Union[str, Callable[[re.Match[str]], str]]]

FORMATS = ("pvtv2", "official", "timm", "hf", "mmdet")


def _rename(sd: StateDict, rules: list[Rule]) -> StateDict:
    """Apply every regex rule, in order, to every key."""
    out: StateDict = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _shift(prefix: str, delta: int, suffix: str = ".") -> Callable[[re.Match[str]], str]:
    """Replacement that renumbers the first captured stage index by ``delta``."""
    return lambda m: f"{prefix}{int(m.group(1)) + delta}{suffix}"


def _is_v1(sd: StateDict) -> bool:
    """PVT v1 checkpoints (ours) carry one final norm and no per-stage norms."""
    return "stages.3.norm.weight" in sd and "stages.0.norm.weight" not in sd


# --- the authors' release (github.com/whai362/PVT) ----------------------------------------------------------
def official_to_pvtv2(sd: StateDict) -> StateDict:
    """``patch_embed1.``/``block1.0.``/``norm1.``/``pos_embed1``/``cls_token``/``norm.`` -> pvtv2 names."""
    return _rename(
        sd,
        [
            (r"^patch_embed(\d)\.", _shift("stages.", -1, ".patch_embed.")),
            (r"^pos_embed(\d)$", _shift("stages.", -1, ".pos_embed")),
            (r"^cls_token$", "stages.3.cls_token"),
            (r"^block(\d)\.", _shift("stages.", -1, ".blocks.")),
            (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
            (r"^norm(\d)\.", _shift("stages.", -1, ".norm.")),
            (r"^norm\.", "stages.3.norm."),
        ],
    )


def pvtv2_to_official(sd: StateDict) -> StateDict:
    """Inverse of :func:`official_to_pvtv2`."""
    final_norm = [(r"^stages\.3\.norm\.", "norm.")] if _is_v1(sd) else []
    return _rename(
        sd,
        final_norm
        + [
            (r"^stages\.(\d)\.patch_embed\.", _shift("patch_embed", 1)),
            (r"^stages\.(\d)\.pos_embed$", _shift("pos_embed", 1, "")),
            (r"^stages\.3\.cls_token$", "cls_token"),
            (r"^stages\.(\d)\.blocks\.", _shift("block", 1)),
            (r"\.mlp\.dwconv\.", ".mlp.dwconv.dwconv."),
            (r"^stages\.(\d)\.norm\.", _shift("norm", 1)),
        ],
    )


# --- timm (timm.models.pvt_v2) ------------------------------------------------------------------------------
def timm_to_pvtv2(sd: StateDict) -> StateDict:
    """timm keeps stage 1's embedding at ``patch_embed.`` and the others at ``stages.{s}.downsample.``."""
    return _rename(sd, [(r"^patch_embed\.", "stages.0.patch_embed."), (r"\.downsample\.", ".patch_embed.")])


def pvtv2_to_timm(sd: StateDict) -> StateDict:
    """Inverse of :func:`timm_to_pvtv2`."""
    return _rename(sd, [(r"^stages\.0\.patch_embed\.", "patch_embed."), (r"\.patch_embed\.", ".downsample.")])


# --- Hugging Face transformers (PvtV2Model / PvtV2ForImageClassification) -----------------------------------
_HF_NAMES = [  # (Hugging Face, pvtv2) name pieces; none is a substring of another, so order does not matter
    (".patch_embedding.proj.", ".patch_embed.proj."),
    (".patch_embedding.layer_norm.", ".patch_embed.norm."),
    (".layer_norm_1.", ".norm1."),
    (".layer_norm_2.", ".norm2."),
    (".attention.query.", ".attn.q."),
    (".attention.spatial_reduction.", ".attn.sr."),
    (".attention.layer_norm.", ".attn.norm."),
    (".attention.proj.", ".attn.proj."),
    (".mlp.dense1.", ".mlp.fc1."),
    (".mlp.dwconv.dwconv.", ".mlp.dwconv."),
    (".mlp.dense2.", ".mlp.fc2."),
]


def hf_to_pvtv2(sd: StateDict) -> StateDict:
    """HF splits kv into ``key``/``value`` (the two halves of the official ``kv`` rows) and calls the head
    ``classifier``."""
    rules: list[Rule] = [(re.escape(hf), ours) for hf, ours in _HF_NAMES]
    rules += [
        (r"^(pvt_v2\.)?encoder\.layers\.", "stages."),
        (r"^stages\.(\d)\.layer_norm\.", r"stages.\1.norm."),
        (r"^classifier\.", "head."),
    ]
    sd = _rename(sd, rules)
    out: StateDict = {}
    for key, value in sd.items():
        if ".attention.key." in key:
            base, leaf = key.split(".attention.key.")
            out[f"{base}.attn.kv.{leaf}"] = torch.cat([value, sd[f"{base}.attention.value.{leaf}"]], dim=0)
        elif ".attention.value." not in key:
            out[key] = value
    return out


def pvtv2_to_hf(sd: StateDict) -> StateDict:
    """To ``PvtV2ForImageClassification`` names (``PvtV2Model`` names when the state dict has no head)."""
    out: StateDict = {}
    for key, value in sd.items():
        if ".attn.kv." in key:
            base, leaf = key.split(".attn.kv.")
            k, v = value.chunk(2, dim=0)  # (2C, ...) -> 2 x (C, ...)
            out[f"{base}.attention.key.{leaf}"] = k
            out[f"{base}.attention.value.{leaf}"] = v
        else:
            out[key] = value
    prefix = "pvt_v2.encoder.layers." if "head.weight" in sd else "encoder.layers."
    rules: list[Rule] = [(re.escape(ours), hf) for hf, ours in _HF_NAMES]
    rules += [
        (r"^stages\.(\d)\.norm\.", r"stages.\1.layer_norm."),
        (r"^stages\.", prefix),
        (r"^head\.", "classifier."),
    ]
    return _rename(out, rules)


# --- mmdetection (PyramidVisionTransformerV2) ---------------------------------------------------------------
def mmdet_to_pvtv2(sd: StateDict) -> StateDict:
    """mmdet fuses q and kv into ``attn.attn.in_proj_*`` and writes the FFN as 1x1 convolutions."""
    if any(".1.0.pos_embed" in k for k in sd):
        raise ValueError("mmdet's PVT v1 layout (with position embeddings) is not supported; use the official file")
    sd = _rename(
        sd,
        [
            (r"^layers\.(\d)\.0\.projection\.", r"stages.\1.patch_embed.proj."),
            (r"^layers\.(\d)\.0\.norm\.", r"stages.\1.patch_embed.norm."),
            (r"^layers\.(\d)\.1\.(\d+)\.", r"stages.\1.blocks.\2."),
            (r"^layers\.(\d)\.2\.", r"stages.\1.norm."),
            (r"\.attn\.attn\.out_proj\.", ".attn.proj."),
            (r"\.ffn\.layers\.0\.", ".mlp.fc1."),
            (r"\.ffn\.layers\.1\.", ".mlp.dwconv."),
            (r"\.ffn\.layers\.4\.", ".mlp.fc2."),
        ],
    )
    out: StateDict = {}
    for key, value in sd.items():
        if ".attn.attn.in_proj_" in key:
            base, leaf = key.split(".attn.attn.in_proj_")
            dim = value.shape[0] // 3
            out[f"{base}.attn.q.{leaf}"] = value[:dim]
            out[f"{base}.attn.kv.{leaf}"] = value[dim:]
        elif (".mlp.fc1.weight" in key or ".mlp.fc2.weight" in key) and value.ndim == 4:
            out[key] = value.flatten(1)  # (out, in, 1, 1) -> (out, in)
        else:
            out[key] = value
    return out


def pvtv2_to_mmdet(sd: StateDict) -> StateDict:
    """To mmdet's ``PyramidVisionTransformerV2`` backbone names (no head: mmdet's backbone has none)."""
    out: StateDict = {}
    for key, value in sd.items():
        if key.startswith("head."):
            continue
        if ".attn.q." in key:
            base, leaf = key.split(".attn.q.")
            out[f"{base}.attn.attn.in_proj_{leaf}"] = torch.cat([value, sd[f"{base}.attn.kv.{leaf}"]], dim=0)
        elif ".attn.kv." in key:
            continue
        elif (".mlp.fc1.weight" in key or ".mlp.fc2.weight" in key) and value.ndim == 2:
            out[key] = value[:, :, None, None]  # (out, in) -> (out, in, 1, 1)
        else:
            out[key] = value
    return _rename(
        out,
        [
            (r"^stages\.(\d)\.patch_embed\.proj\.", r"layers.\1.0.projection."),
            (r"^stages\.(\d)\.patch_embed\.norm\.", r"layers.\1.0.norm."),
            (r"^stages\.(\d)\.blocks\.(\d+)\.", r"layers.\1.1.\2."),
            (r"^stages\.(\d)\.norm\.", r"layers.\1.2."),
            (r"\.attn\.proj\.", ".attn.attn.out_proj."),
            (r"\.mlp\.fc1\.", ".ffn.layers.0."),
            (r"\.mlp\.dwconv\.", ".ffn.layers.1."),
            (r"\.mlp\.fc2\.", ".ffn.layers.4."),
        ],
    )


_TO_PVTV2: dict[str, Callable[[StateDict], StateDict]] = {
    "pvtv2": dict,
    "official": official_to_pvtv2,
    "timm": timm_to_pvtv2,
    "hf": hf_to_pvtv2,
    "mmdet": mmdet_to_pvtv2,
}
_FROM_PVTV2: dict[str, Callable[[StateDict], StateDict]] = {
    "pvtv2": dict,
    "official": pvtv2_to_official,
    "timm": pvtv2_to_timm,
    "hf": pvtv2_to_hf,
    "mmdet": pvtv2_to_mmdet,
}


def detect_format(sd: StateDict) -> str | None:
    """Which of :data:`FORMATS` a (bare) state dict is in, from its stage-1 embedding key; ``None`` if unknown."""
    keys = set(sd)
    if "stages.0.patch_embed.proj.weight" in keys:
        return "pvtv2"
    if "patch_embed1.proj.weight" in keys:
        return "official"
    if "patch_embed.proj.weight" in keys and any(k.startswith("stages.") for k in keys):
        return "timm"
    if keys & {"encoder.layers.0.patch_embedding.proj.weight", "pvt_v2.encoder.layers.0.patch_embedding.proj.weight"}:
        return "hf"
    if "layers.0.0.projection.weight" in keys:
        return "mmdet"
    return None


def convert(sd: StateDict, src: str, dst: str) -> StateDict:
    """Convert a state dict between any two of :data:`FORMATS` (through pvtv2's names)."""
    for name in (src, dst):
        if name not in _TO_PVTV2:
            raise ValueError(f"unknown checkpoint format {name!r}; known: {', '.join(FORMATS)}")
    return _FROM_PVTV2[dst](_TO_PVTV2[src](sd))
