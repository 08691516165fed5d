"""Classification as a task of the one trainer: what ``pvtv2 train`` runs.

>>> from pvtv2.classification import ClassificationTask, get_recipe
>>> from pvtv2.engine import train
>>> result = train(ClassificationTask(get_recipe("fashion_mnist")), out="runs/fm")   # PVT v2-B0 on Fashion-MNIST
>>> result.best                                                                       # best test top-1 (%)
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..engine.amp import Precision
from ..engine.distributed import DistEnv, reduce_sum
from ..engine.sampling import StepSampler
from ..engine.task import Task
from ..errors import DataError
from .data import ClassificationData, build_data, train_loader
from .evaluate import evaluate
from .recipes import ClassificationConfig

log = logging.getLogger(__name__)


def build_model(cfg: ClassificationConfig, num_classes: int) -> nn.Module:
    """The run's model, with fine-tuning weights loaded (a new head when the class count differs)."""
    from ..models import create_model, model_info
    from ..weights import load_weights, weights_state_dict

    overrides = dict(cfg.backbone_overrides)
    if cfg.drop_path is not None:
        overrides.setdefault("drop_path_rate", cfg.drop_path)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    model = create_model(cfg.backbone, num_classes=num_classes, **overrides)
    if cfg.backbone_weights:
        model_info(cfg.backbone)  # unknown names fail before any download
        report = load_weights(model, weights_state_dict(cfg.backbone_weights, cfg.backbone), ignore_head=cfg.ignore_head)
        if report.dropped_head and cfg.ignore_head is None:
            log.info("%s has a %s-class head, this run has %d classes: training a new head", cfg.backbone_weights,
                     report.checkpoint_classes, num_classes)
        log.info("fine-tuning from %s (%s format, %d tensors)", cfg.backbone_weights, report.format, report.loaded)
    return model


class ClassificationTask(Task):
    """Images -> one label: cross-entropy (or soft-target with mixup), top-1/top-5 on the evaluation split.

    Args:
        cfg: the run's configuration (per-variant defaults are filled in).
    """

    name = "cls"
    metric = "test_top1"
    curves = {"test accuracy (%)": ("test_top1", "test_top5")}

    def __init__(self, cfg: ClassificationConfig) -> None:
        super().__init__(cfg.resolved())
        self.cfg: ClassificationConfig
        self.data: ClassificationData
        self.skipped = 0  # unreadable training images this process skipped since the last report

    def sampler_repeats(self) -> int:
        return self.cfg.repeated_aug  # DeiT's repeated augmentation (3 in the ImageNet recipe)

    def setup(self, env: DistEnv) -> int:
        self.data = build_data(self.cfg, env)
        self.precision = Precision.resolve(self.cfg.precision, env.device)
        self.criterion = self.data.criterion.to(env.device)
        return len(self.data.train)

    def build_model(self, env: DistEnv) -> nn.Module:
        model = build_model(self.cfg, len(self.data.classes))
        return model.to(memory_format=torch.channels_last) if env.device.type == "cuda" else model

    def train_loader(self, sampler: StepSampler, env: DistEnv) -> Any:
        return train_loader(self.cfg, self.data, sampler, env)

    def losses(self, model: nn.Module, batch: Any, env: DistEnv) -> dict[str, torch.Tensor]:
        images, targets = batch[0], batch[1]
        if len(batch) > 2:
            self.skipped += int(batch[2])
        if images.numel() == 0:
            return {}  # every image of this batch was unreadable
        images = images.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        if self.data.mixup is not None:
            if len(images) % 2:  # timm's batch mixup needs an even batch (odd after a skipped image)
                images, targets = images[:-1], targets[:-1]
            images, targets = self.data.mixup(images, targets)
        return {"loss": self.criterion(model(images).float(), targets)}

    def images_in(self, batch: Any) -> int:
        return len(batch[0])

    def evaluate(self, model: nn.Module, env: DistEnv) -> dict[str, float]:
        r = evaluate(model, self.data.val, env.device, self.precision, num_classes=len(self.data.classes))
        out = {"test_loss": r["loss"], "test_top1": r["top1"], "test_top5": r["top5"]}
        if r["skipped"]:
            out["skipped_images_test"] = r["skipped"]
        return out

    def stats(self, env: DistEnv) -> dict[str, float]:
        skipped = int(reduce_sum(torch.tensor(float(self.skipped), device=env.device)).item())
        self.skipped = 0
        return {"skipped_images_train": skipped} if skipped else {}

    def state(self) -> dict[str, Any]:
        return {"classes": list(self.data.classes), "preprocess": self.data.preprocess}

    def check_resume(self, saved: dict[str, Any]) -> None:
        if saved.get("classes") and list(saved["classes"]) != list(self.data.classes):
            raise DataError(f"the checkpoint was trained on classes {saved['classes'][:5]}..., this data has "
                            f"{self.data.classes[:5]}...: resume on the run's own data")

    def describe(self) -> str:
        return (f"{self.cfg.backbone} on {self.data.name}: {len(self.data.train)} train / {self.data.n_val} test "
                f"images, {len(self.data.classes)} classes")

    def format_metrics(self, m: dict[str, float]) -> str:
        text = f"test loss {m['test_loss']:.4f}, top-1 {m['test_top1']:.2f}%, top-5 {m['test_top5']:.2f}%"
        if "test_top1_ema" in m:
            text += f", EMA top-1 {m['test_top1_ema']:.2f}%"
        return text
