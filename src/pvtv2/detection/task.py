"""Detection (and instance segmentation) as a task of the one trainer: what ``pvtv2 det train`` runs.

>>> from pvtv2.detection import DetectionTask, get_recipe
>>> from pvtv2.engine import train
>>> cfg = get_recipe("1x").replace(data="coco/annotations/instances_train2017.json", arch="mask_rcnn")
>>> train(DetectionTask(cfg))

Any registered detector trains here: its registry record gives the builder, the released learning rate and
whether the targets carry instance masks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_text, save_image_grid
from ..data.scenes import default_split, evaluation_data, resolve
from ..engine.distributed import DistEnv
from ..engine.sampling import StepSampler, step_loader
from ..engine.task import Task
from ..errors import DataError, TrainingError
from .data.annotations import DetectionData, open_dataset
from .data.dataset import DetectionDataset, collate
from .evaluation.coco_eval import evaluate
from .inference import detector_meta
from .recipes import DetectionConfig, eval_transforms, train_transforms
from .registry import get_detector
from .visualize import prediction_rows

log = logging.getLogger(__name__)


def to_device(images: list[Any], targets: list[dict[str, Any]], device: torch.device) -> tuple[list, list]:
    """Plain tensors on ``device`` (tv_tensors unwrapped)."""
    images = [im.as_subclass(torch.Tensor).to(device, non_blocking=True) for im in images]
    targets = [{k: v.as_subclass(torch.Tensor).to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets


class DetectionTask(Task):
    """Images -> boxes (and masks): the detector's own losses, COCO AP (pycocotools) on the evaluation set.

    Args:
        cfg: the run's configuration.
    """

    name = "det"
    metric = "bbox_AP"
    curves = {"COCO AP": ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")}

    def __init__(self, cfg: DetectionConfig) -> None:
        super().__init__(cfg)
        self.cfg: DetectionConfig
        self.spec = get_detector(cfg.arch)  # an unknown name fails here, listing the known ones
        self.val_set: DetectionDataset | None = None
        self.results: list[dict[str, Any]] | None = None  # the last evaluation's COCO results entries

    def _open(self, path: str, split: str | None, images: str | None) -> DetectionData:
        return open_dataset(path, split=split, images=images, strict=self.cfg.on_bad_data == "error")

    def setup(self, env: DistEnv) -> int:
        cfg, bars = self.cfg, env.is_main and self.progress
        data = resolve(cfg.data, cfg.scenes, progress=bars)
        self.data = self._open(str(data), default_split(str(data), cfg.split, held_out=False), cfg.images)
        log.info("train: %s", self.data.summary())
        self.train_set = DetectionDataset(self.data, train_transforms(cfg), with_masks=self.spec.masks,
                                          drop_empty=True)
        val_data = evaluation_data(cfg.data, cfg.val_data)
        if val_data:
            val_root = str(resolve(val_data, cfg.scenes, progress=bars))
            val = self._open(val_root, default_split(val_root, cfg.val_split, held_out=True), cfg.val_images)
            log.info("val: %s", val.summary())
            if val.class_names != self.data.class_names:
                raise DataError(f"{val_data} has classes {val.class_names[1:6]}... but {cfg.data} has "
                                f"{self.data.class_names[1:6]}...: both sets need the same categories")
            self.val_set = DetectionDataset(val, eval_transforms())
        self.meta = detector_meta(cfg.arch, backbone=cfg.backbone, class_names=self.data.class_names,
                                  min_size=cfg.test_size, max_size=cfg.max_size,
                                  backbone_overrides=cfg.backbone_overrides, options=cfg.builder_options())
        return len(self.train_set)

    def build_model(self, env: DistEnv) -> nn.Module:
        cfg = self.cfg
        options = {"min_size": cfg.test_size, "max_size": cfg.max_size, **cfg.builder_options()}
        if cfg.score_thresh is not None:
            options["score_thresh"] = cfg.score_thresh
        model = self.spec.build(num_classes=self.data.num_classes, **cfg.backbone_args(), **options)
        model.transform._skip_resize = True  # the data pipeline resized (multi-scale) already; eval resizes itself
        return model

    def train_loader(self, sampler: StepSampler, env: DistEnv) -> Any:
        return step_loader(self.train_set, sampler, collate_fn=collate, workers=self.cfg.workers,
                           pin_memory=env.device.type == "cuda")

    def losses(self, model: nn.Module, batch: Any, env: DistEnv) -> dict[str, torch.Tensor]:
        images, targets = to_device(*batch, env.device)
        return {k: v.float() for k, v in model(images, targets).items()}

    def parts(self, model: nn.Module) -> dict[str, nn.Module | list[nn.Module]]:
        parts: dict[str, nn.Module | list[nn.Module]] = {"backbone": model.backbone.body,
                                                         "neck (FPN)": model.backbone.fpn}
        if hasattr(model, "roi_heads"):  # two-stage: the RPN (or learned proposals), then the RoI heads
            parts["proposals (RPN: head, anchors, NMS, its losses)"] = model.rpn
            parts["RoI heads (sampling, pooling, box / mask heads, their losses)"] = model.roi_heads
        else:
            parts["head (convolutions)"] = model.head
        return parts

    def rest_of_step(self, model: nn.Module) -> str:
        return "normalising and batching" if hasattr(model, "roi_heads") else "anchors, assignment, losses, normalising"

    def images_in(self, batch: Any) -> int:
        return len(batch[0])

    def default_base_lr(self) -> float:
        return self.spec.lr

    def evaluate(self, model: nn.Module, env: DistEnv) -> dict[str, float]:
        if self.val_set is None:
            return {}
        per_rank = max(self.cfg.batch_size // env.world_size, 1)
        self.results = []
        results = evaluate(model, self.val_set, batch_size=per_rank, device=env.device, keep_results=self.results)
        return {f"{kind}_{k}": v for kind, vals in results.items() for k, v in vals.items()}

    def state(self) -> dict[str, Any]:
        return {"detector": self.meta}

    def check_resume(self, saved: dict[str, Any]) -> None:
        if saved.get("detector") != self.meta:
            raise TrainingError("the checkpoint was trained as another detector (architecture, classes or backbone); "
                                "resume with the run's own --arch/--backbone/--data, or alone: --resume CKPT")

    def describe(self) -> str:
        return f"{self.cfg.arch}/{self.cfg.backbone} on {self.data.source} ({len(self.train_set)} images)"

    def format_metrics(self, m: dict[str, float]) -> str:
        kinds = sorted({k.split("_", 1)[0] for k in m}, key=("bbox", "segm").index)
        return "; ".join(f"{kind} " + " ".join(f"{k.split('_', 1)[1]} {v:.3f}" for k, v in m.items()
                                                if k.startswith(kind + "_")) for kind in kinds)

    def finish(self, model: nn.Module, run_dir: Path, env: DistEnv) -> dict[str, Any]:
        """``results.json`` (the last evaluation's COCO detections) and ``predictions.png`` (evaluation images: the
        ground truth beside the detections)."""
        if not env.is_main or self.val_set is None:
            return {}
        out: dict[str, Any] = {}
        if self.results is not None:
            out["results"] = str(atomic_write_text(run_dir / "results.json", json.dumps(self.results)))
        rows = prediction_rows(model, self.val_set, self.data.class_names)
        title = f"{self.cfg.arch}/{self.cfg.backbone}: evaluation images"
        out["predictions"] = str(save_image_grid(rows, run_dir / "predictions.png", title=title))
        return out
