"""A classification run's data from its config: the training set, the evaluation batches, the loss, and the
preprocessing record that ``pvtv2 predict`` replays on new images."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import TensorDataset, load_fashion_mnist
from ..data import fashion_mnist as fm
from ..engine.distributed import DistEnv
from ..engine.sampling import StepSampler, shard, step_loader
from ..errors import DataError
from .folder import ImageFolder, collate_skip_bad
from .recipes import ClassificationConfig
from .tensor_loader import TensorLoader, index_batches
from .transforms import eval_transform, mixup_fn, train_transform

log = logging.getLogger(__name__)


@dataclass
class ClassificationData:
    """Everything the task needs from the data side.

    Attributes:
        name: shown in the log.
        train: the training set (a :class:`TensorDataset` in memory, or a dataset of ``(image, label)``).
        val: the evaluation batches of this process.
        classes: class names in label order.
        n_val: evaluation images in all.
        criterion: the training loss.
        mixup: timm's batch mixup/cutmix, or ``None``.
        preprocess: how :mod:`.inference` turns an image into the model's input.
    """

    name: str
    train: Any
    val: Iterable[Any]
    classes: list[str]
    n_val: int
    criterion: nn.Module
    mixup: Any = None
    preprocess: dict[str, Any] = field(default_factory=dict)


def build_data(cfg: ClassificationConfig, env: DistEnv) -> ClassificationData:
    """The data of ``cfg.dataset`` (``fashion_mnist`` or ``folder``), the evaluation part sharded over ``env``."""
    if cfg.dataset == "fashion_mnist":
        return _fashion_mnist(cfg, env)
    if cfg.dataset == "folder":
        return _folder(cfg, env)
    raise DataError(f"unknown dataset {cfg.dataset!r}; use fashion_mnist or folder")


def train_loader(cfg: ClassificationConfig, data: ClassificationData, sampler: StepSampler,
                 env: DistEnv) -> Iterable[Any]:
    """Training batches for the sampler's steps: built on the device for in-memory data, else by DataLoader
    workers (``(images, labels, skipped)``; unreadable images are dropped and counted)."""
    if isinstance(data.train, TensorDataset):
        return TensorLoader(data.train, sampler, crop_pad=cfg.crop_pad, hflip=cfg.hflip, **_tensor_args(cfg, env))
    return step_loader(data.train, sampler, collate_fn=collate_skip_bad, workers=cfg.workers,
                       pin_memory=env.device.type == "cuda")


def _criterion(cfg: ClassificationConfig, mixup: Any) -> nn.Module:
    if mixup is not None:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()  # label smoothing is folded into the mixed targets
    return nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)


def _tensor_args(cfg: ClassificationConfig, env: DistEnv) -> dict[str, Any]:
    return {"size": cfg.input_size, "channels": int(cfg.backbone_overrides.get("in_chans", 3)), "mean": fm.MEAN,
            "std": fm.STD, "device": env.device, "resize": cfg.resize}


def _loader_args(cfg: ClassificationConfig, env: DistEnv) -> dict[str, Any]:
    return {"num_workers": cfg.workers, "collate_fn": collate_skip_bad, "pin_memory": env.device.type == "cuda",
            "persistent_workers": cfg.workers > 0}


def _fashion_mnist(cfg: ClassificationConfig, env: DistEnv) -> ClassificationData:
    train = load_fashion_mnist("train", cfg.data_dir).subset(cfg.train_subset)
    test = load_fashion_mnist("test", cfg.data_dir).subset(cfg.val_subset)
    per_rank = max(cfg.batch_size // env.world_size, 256)
    val = TensorLoader(test, index_batches(shard(len(test), env.rank, env.world_size), per_rank),
                       **_tensor_args(cfg, env))
    side = cfg.resize or int(train.images.shape[-1])  # the item's side inside the padded input
    preprocess = {"kind": "fashion_mnist", "size": cfg.input_size, "image_size": side,
                  "channels": int(cfg.backbone_overrides.get("in_chans", 3)), "mean": [fm.MEAN], "std": [fm.STD]}
    return ClassificationData(f"Fashion-MNIST ({train.source})", train, val, list(train.classes), len(test),
                              _criterion(cfg, None), None, preprocess)


def _folder(cfg: ClassificationConfig, env: DistEnv) -> ClassificationData:
    root = Path(str(cfg.data_dir))
    train_ds = ImageFolder(root / "train", train_transform(cfg.input_size, cfg.aug), on_bad=cfg.on_bad_data)
    val_ds = ImageFolder(root / "val", eval_transform(cfg.input_size, cfg.crop_pct, cfg.aug.interpolation),
                         on_bad=cfg.on_bad_data, classes=train_ds.classes)
    train_set, val_set = _first(train_ds, cfg.train_subset), _first(val_ds, cfg.val_subset)
    val = torch.utils.data.DataLoader(val_set, batch_size=max(cfg.batch_size // env.world_size, 1),
                                      sampler=shard(len(val_set), env.rank, env.world_size), **_loader_args(cfg, env))
    mixup = mixup_fn(cfg.aug, len(train_ds.classes))
    preprocess = {"kind": "imagenet", "size": cfg.input_size, "crop_pct": cfg.crop_pct,
                  "interpolation": cfg.aug.interpolation}
    return ClassificationData(f"ImageFolder {root}", train_set, val, list(train_ds.classes), len(val_set),
                              _criterion(cfg, mixup), mixup, preprocess)


def _first(ds: Any, n: int | None) -> Any:
    if n is None or n >= len(ds):
        return ds
    return torch.utils.data.Subset(ds, range(n))
