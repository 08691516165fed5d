"""Segmentation checkpoints: a training checkpoint (``pvtv2 seg train``'s ``last.pth``) or a weights file written
by :func:`save_segmentor`; both carry the model description and the class list, so ``pvtv2 seg eval`` and
``pvtv2 segment`` rebuild the model from the file alone. Released mmseg Semantic FPN files are read too
(:mod:`.mmseg`)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..engine.model_file import read_model_file, save_model_file
from ..weights import read_checkpoint
from .datasets import DatasetMeta
from .model import SemanticFPN, build_from_spec


def segmentor_record(model: SemanticFPN, meta: DatasetMeta) -> dict[str, Any]:
    """The plain-data description stored next to the weights (``{"seg_model": ..., "data": ...}``)."""
    data = asdict(meta)
    data["class_names"] = list(meta.class_names)
    return {"seg_model": model.spec, "data": data}


def save_segmentor(model: SemanticFPN, meta: DatasetMeta, path: str | os.PathLike[str]) -> Path:
    """Write weights + description atomically (loads with ``torch.load(weights_only=True)``)."""
    return save_model_file(model, segmentor_record(model, meta), path)


def load_segmentor(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *,
                   use_ema: bool = False) -> tuple[SemanticFPN, DatasetMeta]:
    """Rebuild the model and its class list from a segmentation checkpoint: pvtv2's own (``use_ema``: the run's
    EMA weights), or a released mmseg Semantic FPN file (:func:`pvtv2.segmentation.mmseg.load_mmseg_checkpoint`,
    e.g. ``fpn_pvtv2_b2_ade20k_40k``)."""
    from .mmseg import is_mmseg_checkpoint, mmseg_segmentor

    ckpt = read_checkpoint(path)
    if is_mmseg_checkpoint(ckpt):
        return mmseg_segmentor(ckpt, where=str(path), map_location=map_location)
    saved = read_model_file(path, task="segmentation", needs="seg_model", use_ema=use_ema, checkpoint=ckpt,
                            hint="use the last.pth written by 'pvtv2 seg train' or a file from save_segmentor")
    record = saved.description
    model = saved.load_into(build_from_spec(record["seg_model"]))
    d = record.get("data") or {}
    names = tuple(d.get("class_names") or (f"class_{i}" for i in range(model.num_classes)))
    meta = DatasetMeta(int(d.get("num_classes", model.num_classes)), names, int(d.get("ignore_index", 255)),
                       bool(d.get("reduce_zero_label", False)))
    return model.to(map_location), meta
