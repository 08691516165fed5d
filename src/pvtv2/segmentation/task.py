"""Semantic segmentation (Semantic FPN) as a task of the one trainer: what ``pvtv2 seg train`` runs.

>>> from pvtv2.segmentation import SegmentationTask, get_recipe
>>> from pvtv2.engine import train
>>> train(SegmentationTask(get_recipe("ade20k_40k").replace(data="ADEChallengeData2016", val_split="validation")))

Under torchrun the head's BatchNorm becomes SyncBatchNorm on GPUs, as released; on CPU (gloo) each process keeps
its own statistics and rank 0's are copied to every rank before an evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import save_image_grid
from ..data.scenes import evaluation_data, resolve
from ..engine.amp import Precision
from ..engine.distributed import DistEnv, reduce_sum
from ..engine.sampling import StepSampler, step_loader
from ..engine.task import Task
from ..errors import DataError
from .checkpoint import segmentor_record
from .datasets import ResampleOnError, SegmentationDataset, collate_segmentation, next_batch
from .evaluate import evaluate
from .layouts import build_dataset, evaluation_split
from .model import semantic_fpn
from .recipes import SegmentationConfig
from .transforms import train_transforms
from .visualize import prediction_rows


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """The released recipes' loss (mmseg 0.14's ``CrossEntropyLoss``): cross-entropy per pixel in float32, 0 on
    ignored pixels, averaged over *all* pixels of the batch. (``F.cross_entropy``'s mean divides by the pixels not
    ignored, as mmseg >= 0.23's ``avg_non_ignore=True`` does; on ADE20K, whose "other" pixels are ignored, that
    weighs each batch differently.) ``logits`` (B, K, H, W), ``labels`` (B, H, W)."""
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return per_pixel / labels.numel()


class _Batches:
    """A DataLoader's batches with a worker's DataError turned back into its one line (see :func:`next_batch`)."""

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        batches = iter(self.loader)
        while True:
            yield next_batch(batches)


class SegmentationTask(Task):
    """Images -> a class per pixel: cross-entropy (ignore index), mIoU / pixel accuracy on the evaluation set.

    Args:
        cfg: the run's configuration.
    """

    name = "seg"
    metric = "val_miou"
    curves = {"validation": ("val_miou", "val_pixel_acc")}

    def __init__(self, cfg: SegmentationConfig) -> None:
        super().__init__(cfg)
        self.cfg: SegmentationConfig
        self.val_set: SegmentationDataset | None = None
        self.skipped: set[str] = set()

    def setup(self, env: DistEnv) -> int:
        cfg = self.cfg
        common = dict(layout=cfg.layout, masks=cfg.masks, num_classes=cfg.num_classes,
                      reduce_zero_label=cfg.reduce_zero_label, on_error="raise" if cfg.on_bad_data == "error" else "skip")
        transforms = train_transforms(cfg.crop_size, tuple(cfg.scale), tuple(cfg.ratio_range), cfg.cat_max_ratio)
        data = resolve(cfg.data, cfg.scenes, progress=env.is_main and self.progress)
        self.train_set = build_dataset(str(data), split=cfg.train_split, transforms=transforms, **common)
        self.meta = self.train_set.meta
        val_data = evaluation_data(cfg.data, cfg.val_data)
        if val_data or cfg.val_split:  # no --val-data: another split of the training data
            root = str(resolve(val_data, cfg.scenes, progress=env.is_main and self.progress) or data)
            self.val_set = build_dataset(root, split=evaluation_split(root, cfg.val_split), **common)
            if self.val_set.meta.num_classes != self.meta.num_classes:
                raise DataError(f"the evaluation set has {self.val_set.meta.num_classes} classes, the training set "
                                f"{self.meta.num_classes}")
        return len(self.train_set)

    def build_model(self, env: DistEnv) -> nn.Module:
        cfg = self.cfg
        model: nn.Module = semantic_fpn(num_classes=self.meta.num_classes, **cfg.backbone_args(),
                                        fpn_channels=cfg.fpn_channels, head_channels=cfg.head_channels,
                                        norm=cfg.head_norm, dropout=cfg.head_dropout)
        self.record = segmentor_record(model, self.meta)  # type: ignore[arg-type]
        if env.distributed and env.device.type == "cuda":  # SyncBN as released (PyTorch has it on GPUs only)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def train_loader(self, sampler: StepSampler, env: DistEnv) -> Any:
        return _Batches(step_loader(ResampleOnError(self.train_set), sampler, collate_fn=collate_segmentation,
                                    workers=self.cfg.workers, pin_memory=env.device.type == "cuda"))

    def losses(self, model: nn.Module, batch: Any, env: DistEnv) -> dict[str, torch.Tensor]:
        self.skipped.update(batch["skipped_paths"])
        x = batch["image"].to(env.device, non_blocking=True)
        y = batch["mask"].to(env.device, non_blocking=True)
        return {"loss": pixel_cross_entropy(model(x), y, self.meta.ignore_index)}  # logits (B, K, H, W)

    def parts(self, model: nn.Module) -> dict[str, nn.Module | list[nn.Module]]:
        return {"backbone": model.backbone, "neck (FPN)": model.neck, "decode head": model.decode_head}

    def rest_of_step(self, model: nn.Module) -> str:
        return "the loss"

    def images_in(self, batch: Any) -> int:
        return len(batch["image"])

    def evaluate(self, model: nn.Module, env: DistEnv) -> dict[str, float]:
        if self.val_set is None:
            return {}
        if env.distributed:  # every rank scores with rank 0's (= the saved) BatchNorm statistics
            import torch.distributed as dist

            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        amp = Precision.resolve(self.cfg.precision, env.device).name != "fp32"
        r = evaluate(model, self.val_set, scale=tuple(self.cfg.test_scale), mode=self.cfg.eval_mode,  # type: ignore[arg-type]
                     amp=amp)
        return {"val_miou": r["miou"], "val_pixel_acc": r["pixel_acc"], "val_macc": r["macc"]}

    def stats(self, env: DistEnv) -> dict[str, float]:
        n = int(reduce_sum(torch.tensor(float(len(self.skipped)), device=env.device)).item())
        return {"skipped_samples": n} if n else {}

    def state(self) -> dict[str, Any]:
        return self.record

    def check_resume(self, saved: dict[str, Any]) -> None:
        if saved.get("seg_model") and saved["seg_model"] != self.record["seg_model"]:
            raise DataError("the checkpoint holds another model (backbone, classes or head); resume with the run's "
                            "own settings, or alone: --resume CKPT")

    def describe(self) -> str:
        return (f"Semantic FPN {self.cfg.backbone} on {self.train_set.name} ({len(self.train_set)} images, "
                f"{self.meta.num_classes} classes)")

    def format_metrics(self, m: dict[str, float]) -> str:
        return f"val mIoU {100 * m['val_miou']:.2f}, pixel acc {100 * m['val_pixel_acc']:.2f}"

    def finish(self, model: nn.Module, run_dir: Path, env: DistEnv) -> dict[str, Any]:
        """``predictions.png``: evaluation images, their ground truth and the prediction."""
        if not env.is_main or self.val_set is None:
            return {}
        rows = prediction_rows(model, self.val_set, self.meta.class_names, scale=tuple(self.cfg.test_scale))
        path = save_image_grid(rows, run_dir / "predictions.png", title=f"Semantic FPN {self.cfg.backbone}")
        return {"predictions": str(path)}
