"""What a checkpoint carries to be used alone, the same for the three tasks.

A task's :meth:`~pvtv2.engine.task.Task.state` is its model's self-description (plain data: classes,
preprocessing, architecture, backbone, sizes). The trainer stores it as ``extra`` in every training checkpoint
(:mod:`pvtv2.engine.checkpoint`); :func:`save_model_file` writes it beside the weights alone, for inference::

    {"format": "pvtv2-model", "version": 1, "model": state_dict, "extra": {...}}

:func:`read_model_file` opens either kind (and the inference files of earlier versions, which put the description
at the top level) and returns the weights to load (the run's EMA weights if asked for), the description and the
training configuration, so that ``load_classifier``, ``load_detector`` and ``load_segmentor`` only rebuild their
model from the description. Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write
from ..errors import CheckpointError
from ..weights import read_checkpoint
from .checkpoint import FORMAT as TRAIN_FORMAT

FORMAT = "pvtv2-model"
VERSION = 1
_EMA_PREFIX = "module."  # torch.optim.swa_utils.AveragedModel keeps the averaged model as ``module``


@dataclass
class ModelFile:
    """A checkpoint opened for inference.

    Attributes:
        path: where it was read.
        weights: the state dict to load (the EMA weights when they were asked for).
        description: the task's self-description (``Task.state()``).
        config: the training configuration (empty for files written by :func:`save_model_file`).
        training: the file is a training checkpoint (``last.pth`` / ``best.pth``).
    """

    path: str
    weights: dict[str, torch.Tensor]
    description: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    training: bool = False

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load :attr:`weights` into ``model`` (strict); one line if they do not fit its description."""
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"{self.path}: the weights do not fit the model it describes ({first})") from None
        return model


def model_description(ckpt: Any) -> dict[str, Any] | None:
    """The self-description of a pvtv2 checkpoint's contents (training or inference, any version), or None when
    ``ckpt`` is not one (a bare state dict, an mmcv file...)."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        return None
    if ckpt.get("format") in (TRAIN_FORMAT, FORMAT):
        return dict(ckpt.get("extra") or {})
    description = {k: v for k, v in ckpt.items() if k not in ("format", "model")}  # earlier inference files
    return description or None


def read_model_file(path: str | os.PathLike[str], *, task: str, needs: str, hint: str, use_ema: bool = False,
                    checkpoint: Any = None) -> ModelFile:
    """Open a pvtv2 checkpoint (training or inference) of ``task`` for its weights and self-description.

    Args:
        path: the file.
        task: what it should hold (``"detection"``...), for the message.
        needs: the description entry the task reads (``"detector"``...): a file without it is another task's.
        hint: how to get the right file, for the message.
        use_ema: return the run's EMA weights instead of the model's (training checkpoints of runs with ``--ema``).
        checkpoint: the file's contents, when the caller has read them already.

    Raises:
        CheckpointError: one line: not a checkpoint of ``task``, or no EMA weights in it.
    """
    ckpt = read_checkpoint(path) if checkpoint is None else checkpoint
    description = model_description(ckpt)
    if description is None or needs not in description:
        raise CheckpointError(f"{path} is not a pvtv2 {task} checkpoint (no {task} model description); {hint}")
    weights = ckpt["model"]
    if use_ema:
        ema = ckpt.get("ema")
        if not ema:
            raise CheckpointError(f"{path} holds no EMA weights (the run was trained without --ema)")
        weights = {k[len(_EMA_PREFIX):]: v for k, v in ema.items() if k.startswith(_EMA_PREFIX)}
    return ModelFile(str(path), weights, description, dict(ckpt.get("config") or {}),
                     ckpt.get("format") == TRAIN_FORMAT)


def save_model_file(model: nn.Module, description: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights and its self-description atomically (what :func:`read_model_file` reads)."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "version": VERSION, "model": sd, "extra": dict(description)}
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
