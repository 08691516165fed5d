"""Reading, checking and writing weights: ``load_weights``, ``save_weights`` and the released files."""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write
from ..errors import CheckpointError
from .formats import FORMATS, StateDict, convert, detect_format

log = logging.getLogger(__name__)

_WRAPPERS = ("model", "state_dict", "model_state", "module")  # where trainers nest the weights
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
PRETRAININGS = ("fashion-mnist",)  # backbones pvtv2.cli.pretrain makes on first use (named here for the hint)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file safely (tensors and plain containers only).

    ``path`` may also name a file on the Hugging Face Hub (``hf-hub:OWNER/NAME``, see :mod:`pvtv2.weights.hub`).
    """
    from .hub import hub_file

    path = hub_file(path) or Path(path)
    if not path.is_file():
        hint = ""
        if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not path.suffix.startswith((".pt", ".bin", ".safe")):
            hint = f" (a Hugging Face Hub repository? write hf-hub:{path})"
        elif str(path) in PRETRAININGS:
            hint = (f" ('{path}' is a backbone the command line pretrains on first use; from Python, "
                    "pvtv2.cli.pretrain.resolve_backbone_weights(cfg) makes it and puts its path in the config)")
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says what matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # a real pickle (zip of torch.save, or a raw pickle: protocol opcode 0x80) that the safe unpickler refused,
        # not a file that merely fails to parse (a text file, an image...)
        if "Weights only load failed" in str(e) and (zipfile.is_zipfile(path) or _starts_with(path, b"\x80")):
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects other than tensors, which could run code; "
                "pvtv2 loads weights only. If you trust the file, re-save its state_dict with torch.save"
            ) from None
        why = "not a zip or pickle file of tensors" if "Weights only load failed" in str(e) else _first_line(e)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({why})") from None
    except Exception as e:  # the unpickler fails in many ways on files that are not checkpoints
        if zipfile.is_zipfile(path) or "zip archive" in str(e):
            raise CheckpointError(f"could not read checkpoint {path} (truncated or corrupt?): {_first_line(e)}") from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a zip or pickle file of tensors)") from None


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def unwrap_state_dict(obj: Any, *, where: str = "checkpoint") -> StateDict:
    """Find the state dict inside a training checkpoint (``{"model": ...}``, ``{"state_dict": ...}``), drop
    DDP/compile prefixes, and keep only the backbone's entries of a detector or segmentor."""
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(
                f"{where} holds no state dict: top-level keys are {sorted(map(str, obj))[:8]}; "
                f"expected tensors or one of {list(_WRAPPERS)}"
            )
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{where} holds no tensors (got {type(obj).__name__}); is it a model checkpoint?")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return _backbone_part(sd)


# Keys that only the stage-1 patch embedding has, one per format; pvtv2's first (timm's is a suffix of it).
_ANCHORS = (
    "stages.0.patch_embed.proj.weight",
    "pvt_v2.encoder.layers.0.patch_embedding.proj.weight",
    "encoder.layers.0.patch_embedding.proj.weight",
    "patch_embed1.proj.weight",
    "patch_embed.proj.weight",
    "layers.0.0.projection.weight",
)


def _backbone_part(sd: StateDict) -> StateDict:
    """The backbone's tensors of a bigger model (a detector's ``backbone.``, our detectors'
    ``backbone.body.model.``, a segmentor's ``backbone.model.``...), found by the stage-1 embedding key."""
    if detect_format(sd) is not None:
        return sd
    for anchor in _ANCHORS:
        for key in sd:
            if key.endswith("." + anchor):
                prefix = key[: -len(anchor)]
                part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
                if detect_format(part) is not None:
                    log.info("using the %d backbone tensors under %r (%d others left out)",
                             len(part), prefix, len(sd) - len(part))
                    return part
    return sd


def _is_state_dict(d: dict[str, Any]) -> bool:
    return bool(d) and sum(isinstance(v, torch.Tensor) for v in d.values()) > len(d) // 2


def head_classes(sd: StateDict) -> int | None:
    """Outputs of the classification head of a state dict in any format (``None``: no head, or no PVT layout)."""
    fmt = detect_format(sd)
    head = convert(sd, fmt, "pvtv2").get("head.weight") if fmt else None
    return int(head.shape[0]) if head is not None else None


@dataclass
class LoadReport:
    """What :func:`load_weights` did."""

    format: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dropped_head: bool = False
    checkpoint_classes: int | None = None  # outputs of the checkpoint's classification head (None: it has none)


def load_weights(
    model: nn.Module,
    source: str | os.PathLike[str] | dict[str, Any],
    *,
    strict: bool = True,
    ignore_head: bool | None = False,
    format: str | None = None,
) -> LoadReport:
    """Load weights in any supported format into a pvtv2 model (or anything holding one as ``.backbone``).

    Args:
        model: a :class:`~pvtv2.models.PyramidVisionTransformer`.
        source: a path (``.pth``/``.pt``/``.bin``/``.safetensors``) or a state dict in the official, timm, Hugging
            Face, mmdet or pvtv2 format (detected from the keys), possibly wrapped as ``{"model": ...}``.
        strict: raise on any missing, unexpected or mis-shaped key (default); if False, load what fits and log a
            warning naming what did not.
        ignore_head: leave the model's classification head as it is (fine-tuning to other classes); ``None``: do
            so exactly when the checkpoint's head does not fit the model's (another class count, or only one has a head).
        format: skip detection and read the keys as this format.

    Raises:
        CheckpointError: one line naming the file, the detected format and the keys that do not fit.
    """
    where = str(source) if not isinstance(source, dict) else "state dict"
    raw = read_checkpoint(source) if not isinstance(source, dict) else source
    sd = unwrap_state_dict(raw, where=where)
    fmt = format or detect_format(sd)
    if fmt is None:
        raise CheckpointError(
            f"{where}: unrecognised checkpoint layout (first keys {list(sd)[:3]}); expected a PVT state dict in one "
            f"of the formats {', '.join(FORMATS)}"
        )
    try:
        sd = convert(sd, fmt, "pvtv2")
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: cannot convert from the {fmt} format: {e}") from None
    own = model.state_dict()
    head = sd.get("head.weight")
    if ignore_head is None:  # the two heads differ in presence or shape
        mine = own.get("head.weight")
        ignore_head = (head is None) != (mine is None) or (head is not None and mine is not None
                                                            and head.shape != mine.shape)
    if ignore_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    skip = {k for k in own if k.startswith("head.")} if ignore_head else set()
    report = LoadReport(
        format=fmt,
        loaded=0,
        missing=[k for k in own if k not in sd and k not in skip],
        unexpected=[k for k in sd if k not in own],
        mismatched=[
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in sd.items()
            if k in own and v.shape != own[k].shape
        ],
        dropped_head=ignore_head,
        checkpoint_classes=int(head.shape[0]) if head is not None else None,
    )
    problems = _describe(report)
    if problems and strict:
        hint = ""
        if any(k.startswith("head.") for k in report.unexpected + report.mismatched):
            hint = "; to train a new head, pass ignore_head=True (CLI: --ignore-head)"
        raise CheckpointError(f"{where} ({fmt} format) does not fit {_model_name(model)}: {problems}{hint}")
    if problems:
        log.warning("partial load from %s (%s format): %s", where, fmt, problems)
    bad = {m.split(":")[0] for m in report.mismatched}
    fitting = {k: v for k, v in sd.items() if k in own and k not in bad}
    model.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    return report


def _describe(r: LoadReport) -> str:
    parts = []
    for label, items in (("missing", r.missing), ("unexpected", r.unexpected), ("mis-shaped", r.mismatched)):
        if items:
            shown = ", ".join(items[:3]) + (f", ... ({len(items) - 3} more)" if len(items) > 3 else "")
            parts.append(f"{len(items)} {label} ({shown})")
    return "; ".join(parts)


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    return f"{type(model).__name__}(depths={cfg.depths}, dims={cfg.embed_dims})" if cfg else type(model).__name__


def save_weights(
    model: nn.Module | StateDict, path: str | os.PathLike[str], *, format: str = "pvtv2", metadata: dict[str, str] | None = None
) -> Path:
    """Write a model's weights atomically: safetensors for ``.safetensors`` paths, else a tensors-only
    ``torch.save`` file. ``format`` converts the names first (``"official"``, ``"timm"``, ``"hf"``, ``"mmdet"``)."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    sd = {k: v.detach().cpu().contiguous() for k, v in convert(dict(sd), "pvtv2", format).items()}
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": format, **(metadata or {})}
        return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    return atomic_write(path, lambda tmp: torch.save(sd, tmp))


def released_state_dict(name: str) -> StateDict:
    """The authors' released ImageNet weights of ``name`` (v1 or v2), from torch.hub's cache or downloaded and
    checked into it (see :mod:`pvtv2.weights.download`)."""
    from .download import released_file

    path = released_file(name)
    return unwrap_state_dict(read_checkpoint(path), where=str(path))


def weights_state_dict(source: str | os.PathLike[str] | StateDict, name: str) -> StateDict:
    """The state dict a ``weights=`` argument names for model ``name``: ``"official"`` (the authors' release of
    ``name``), a Hub name, a checkpoint path, or a state dict (unwrapped from training checkpoints)."""
    if isinstance(source, dict):
        return unwrap_state_dict(source, where="state dict")
    if source == "official":
        return released_state_dict(name)
    return unwrap_state_dict(read_checkpoint(source), where=str(source))
