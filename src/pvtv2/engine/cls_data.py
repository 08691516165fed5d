"""Assemble a classification run's data from its config: loaders, sampler, loss and the preprocessing record
that ``pvtv2 predict`` replays on new images."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import (
    EpochSampler,
    ImageFolder,
    SeededDataset,
    TensorLoader,
    collate_skip_bad,
    eval_transform,
    load_fashion_mnist,
    mixup_fn,
    train_transform,
)
from ..data import fashion_mnist as fm
from ..errors import DataError
from .distributed import DistEnv
from .recipes import ClassificationConfig

log = logging.getLogger(__name__)


@dataclass
class ClassificationData:
    """Everything the loop needs from the data side."""

    name: str
    train: Iterable[Any]
    train_sampler: EpochSampler
    val: Iterable[Any]
    classes: list[str]
    steps_per_epoch: int
    n_train: int
    n_val: int
    criterion: nn.Module
    mixup: Any = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    skipped_train: int = 0  # unreadable training images skipped so far (this process)


def build_data(cfg: ClassificationConfig, env: DistEnv) -> ClassificationData:
    """Loaders for ``cfg.dataset`` (``fashion_mnist`` or ``folder``), split across ``env``'s processes."""
    per_rank = cfg.batch_size // env.world_size
    if cfg.dataset == "fashion_mnist":
        data = _fashion_mnist(cfg, env, per_rank)
    elif cfg.dataset == "folder":
        data = _folder(cfg, env, per_rank)
    else:
        raise DataError(f"unknown dataset {cfg.dataset!r}; use fashion_mnist or folder")
    if data.steps_per_epoch == 0:
        raise DataError(f"{data.n_train} training images make no full global batch of {cfg.batch_size}; "
                        "lower --batch-size")
    return data


def _criterion(cfg: ClassificationConfig, mixup: Any) -> nn.Module:
    if mixup is not None:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()  # label smoothing is folded into the mixed targets
    return nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)


def _fashion_mnist(cfg: ClassificationConfig, env: DistEnv, per_rank: int) -> ClassificationData:
    train = load_fashion_mnist("train", cfg.data_dir).subset(cfg.train_subset)
    test = load_fashion_mnist("test", cfg.data_dir).subset(cfg.val_subset)
    in_chans = int(cfg.model_overrides.get("in_chans", 3))
    sampler = EpochSampler(len(train), env.rank, env.world_size, shuffle=True, seed=cfg.seed,
                           repeats=cfg.repeated_aug, batch_size=per_rank, drop_last=True)
    common = {"size": cfg.input_size, "channels": in_chans, "mean": fm.MEAN, "std": fm.STD, "device": env.device,
              "resize": cfg.resize}
    train_loader = TensorLoader(train, sampler, per_rank, crop_pad=cfg.crop_pad, hflip=cfg.hflip, drop_last=True,
                                **common)
    val_sampler = EpochSampler(len(test), env.rank, env.world_size, shuffle=False, pad=False)
    val_loader = TensorLoader(test, val_sampler, max(per_rank, 256), **common)
    side = cfg.resize or int(train.images.shape[-1])  # the digit-box side inside the padded input
    preprocess = {"kind": "fashion_mnist", "size": cfg.input_size, "image_size": side, "channels": in_chans,
                  "mean": [fm.MEAN], "std": [fm.STD]}
    return ClassificationData(f"Fashion-MNIST ({train.source})", train_loader, sampler, val_loader,
                              list(train.classes), sampler.num_samples // per_rank, len(train), len(test),
                              _criterion(cfg, None), None, preprocess)


def _folder(cfg: ClassificationConfig, env: DistEnv, per_rank: int) -> ClassificationData:
    if not cfg.data_dir:
        raise DataError("the folder dataset needs --data-dir DIR with DIR/train/<class>/* and DIR/val/<class>/*")
    root = Path(cfg.data_dir)
    train_ds = ImageFolder(root / "train", train_transform(cfg.input_size, cfg.aug), on_bad=cfg.on_bad_image)
    val_ds = ImageFolder(root / "val", eval_transform(cfg.input_size, cfg.crop_pct, cfg.aug.interpolation),
                         on_bad=cfg.on_bad_image, classes=train_ds.classes)
    train_set = SeededDataset(_first(train_ds, cfg.train_subset))
    val_set = SeededDataset(_first(val_ds, cfg.val_subset))
    sampler = EpochSampler(len(train_set), env.rank, env.world_size, shuffle=True, seed=cfg.seed,
                           repeats=cfg.repeated_aug, batch_size=per_rank, drop_last=True)
    val_sampler = EpochSampler(len(val_set), env.rank, env.world_size, shuffle=False, pad=False)
    loader_kw: dict[str, Any] = {"num_workers": cfg.workers, "collate_fn": collate_skip_bad,
                                 "pin_memory": env.device.type == "cuda", "persistent_workers": cfg.workers > 0}
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=per_rank, sampler=sampler, drop_last=True,
                                               **loader_kw)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=per_rank, sampler=val_sampler, **loader_kw)
    mixup = mixup_fn(cfg.aug, len(train_ds.classes))
    preprocess = {"kind": "imagenet", "size": cfg.input_size, "crop_pct": cfg.crop_pct,
                  "interpolation": cfg.aug.interpolation}
    return ClassificationData(f"ImageFolder {root}", train_loader, sampler, val_loader, list(train_ds.classes),
                              sampler.num_samples // per_rank, len(train_set), len(val_set), _criterion(cfg, mixup),
                              mixup, preprocess)


def _first(ds: Any, n: int | None) -> Any:
    if n is None or n >= len(ds):
        return ds
    return torch.utils.data.Subset(ds, range(n))
