"""Training a detector on the shared engine: torchrun/DDP, atomic checkpoints with exact resume, NaN and Ctrl-C
guards, metrics JSONL/CSV and curves, step schedule with mmdet's linear warm-up, COCO evaluation.

Exact resume: the batch order of each epoch comes from a generator seeded by (seed, epoch), the augmentation of
each image from (seed, epoch, image id), and the engine restores every other RNG; a run stopped at any step and
resumed gives the same weights as one that was never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..engine import (
    DistEnv,
    InterruptGuard,
    Interrupted,
    LRSchedule,
    MetricsLogger,
    Precision,
    RunDir,
    Stepper,
    TrainState,
    broadcast_object,
    capture_rng_state,
    checkpoint_config,
    cleanup,
    init_distributed,
    load_checkpoint,
    reduce_dict,
    restore_rng_state,
    save_checkpoint,
    wrap_ddp,
)
from ..errors import DataError, TrainingError
from .data import open_dataset
from .dataset import DetectionDataset, collate
from .evaluate import evaluate
from .inference import detector_meta
from .registry import build_detector, get_detector
from .recipes import eval_transforms, get_recipe, train_transforms

log = logging.getLogger(__name__)


@dataclass
class DetTrainConfig:
    """Everything a detection run depends on (written to ``config.json`` and into every checkpoint)."""

    data: str  # training set: COCO .json, COCO root (with split) or VOC folder
    arch: str = "retinanet"  # retinanet | mask_rcnn | fcos
    backbone: str = "pvt_v2_b0"  # registered PVT name
    backbone_weights: str | None = None  # "official" or a checkpoint in any format (None: random init)
    val_data: str | None = None  # evaluation set (same layouts); None: no evaluation
    split: str | None = None  # COCO root / VOC ImageSets split of `data`
    val_split: str | None = None
    images: str | None = None  # image folder of a COCO .json (default: the JSON's folder)
    val_images: str | None = None
    recipe: str = "1x"  # 1x | 3x (SPEC section 4)
    epochs: int | None = None  # default: the recipe's
    max_iters: int | None = None  # run (and schedule) this many steps instead of whole epochs
    batch_size: int = 2  # images per process (released: 8 GPUs x 2)
    lr: float | None = None  # default: the recipe's, scaled to the total batch
    weight_decay: float | None = None  # default: the recipe's
    train_sizes: tuple[int, ...] | None = None  # shorter side(s) in training (default: the recipe's)
    max_size: int | None = None  # longer side at most (default: the recipe's)
    test_size: int | None = None  # shorter side at evaluation (default: the recipe's)
    warmup_iters: int | None = None  # default: the recipe's 500, at most a fifth of the run
    clip_grad: float | None = None  # max gradient norm (the released configs: none)
    trainable_stages: int | None = None  # last stages trained (None: all 4)
    norm_eval: bool = False  # freeze the backbone's LayerNorms
    backbone_overrides: dict[str, Any] = field(default_factory=dict)  # PVTConfig fields, e.g. {"depths": (1,1,1,1)}
    detector_options: dict[str, Any] = field(default_factory=dict)  # torchvision constructor arguments, e.g.
    # {"box_batch_size_per_image": 128} (kept in the checkpoint, so inference rebuilds the same detector)
    out: str | None = None  # run directory (default: runs/det/<timestamp>)
    resume: str | None = None  # a last.pth to continue from
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    workers: int = 2  # DataLoader processes
    threads: int | None = None  # torch CPU threads per process (None: torch's default; 1 is fastest on busy CPUs)
    seed: int = 0
    eval_every: int = 1  # epochs between evaluations (0: only after the last)
    save_every: int = 0  # write last.pth every this many steps instead of at each epoch end (0: epoch ends)
    strict_data: bool = False  # raise on the first bad annotation instead of skipping and counting
    log_every: int = 20  # steps between progress lines
    score_thresh: float = 0.05  # detections kept for evaluation (torchvision's default)
    stop_after: int | None = None  # stop as if interrupted after this many steps (tests, time-boxed jobs)


def config_from_checkpoint(path: str, **changes: Any) -> DetTrainConfig:
    """The configuration a detection checkpoint was trained with, set to resume from it (``changes`` applied:
    runtime options such as ``device``, ``workers``, ``threads``)."""
    saved = checkpoint_config(path)
    known = {f.name for f in fields(DetTrainConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    if "data" not in values:
        raise TrainingError(f"{path} holds no detection training configuration; pass --data and the run's options")
    if values.get("train_sizes") is not None:
        values["train_sizes"] = tuple(values["train_sizes"])
    values["backbone_overrides"] = {k: tuple(v) if isinstance(v, list) else v
                                    for k, v in (values.get("backbone_overrides") or {}).items()}
    values.update(resume=str(path), stop_after=None, out=None)
    values.update({k: v for k, v in changes.items() if v is not None})
    return DetTrainConfig(**values)


class _SeededTransforms:
    """The augmentation of an image depends only on (seed, epoch, image id): exact resume and any worker count."""

    def __init__(self, transforms: Any, seed: int) -> None:
        self.transforms, self.seed, self.epoch = transforms, seed, 0

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000 + self.epoch) * 10_000_019 + int(target["image_id"])) % 2**63)
            return self.transforms(image, target)


def _epoch_batches(n: int, batch_size: int, epoch: int, seed: int, env: DistEnv) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded permutation, padded to a multiple of the world size, sharded."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    per_rank = math.ceil(n / env.world_size)
    perm = (perm * env.world_size)[: per_rank * env.world_size]  # pad by repeating, as DistributedSampler does
    mine = perm[env.rank :: env.world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def _to_device(images: list[Any], targets: list[dict[str, Any]], device: torch.device) -> tuple[list, list]:
    images = [im.as_subclass(torch.Tensor).to(device, non_blocking=True) for im in images]
    targets = [{k: v.as_subclass(torch.Tensor).to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def train(cfg: DetTrainConfig) -> dict[str, Any]:
    """Train (or resume) a detector as ``cfg`` says; returns the final summary (paths, steps, metrics).

    Launch under ``torchrun --nproc-per-node N`` for DDP; a single process otherwise.

    Raises:
        DataError: unusable data (one line). TrainingError: NaN loss, mismatched resume.
        Interrupted: Ctrl-C/SIGTERM after a resumable checkpoint was written.
    """
    get_detector(cfg.arch)  # an unknown name fails here, listing the known ones
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = init_distributed(cfg.device)
    try:
        return _train(cfg, env)
    finally:
        cleanup()


def _train(cfg: DetTrainConfig, env: DistEnv) -> dict[str, Any]:
    changes = {k: v for k, v in (("train_sizes", cfg.train_sizes), ("max_size", cfg.max_size),
                                 ("test_size", cfg.test_size)) if v is not None}
    recipe = get_recipe(cfg.recipe, **changes)
    torch.manual_seed(cfg.seed + env.rank)

    data = open_dataset(cfg.data, split=cfg.split, images=cfg.images, strict=cfg.strict_data)
    log.info("train: %s", data.summary())
    seeded = _SeededTransforms(train_transforms(recipe), cfg.seed)
    train_set = DetectionDataset(data, seeded, with_masks=get_detector(cfg.arch).masks, drop_empty=True)
    val_set = None
    if cfg.val_data:
        val = open_dataset(cfg.val_data, split=cfg.val_split, images=cfg.val_images, strict=cfg.strict_data)
        log.info("val: %s", val.summary())
        if val.class_names != data.class_names:
            raise DataError(f"{cfg.val_data} has classes {val.class_names[1:6]}... but {cfg.data} has "
                            f"{data.class_names[1:6]}...: both sets need the same categories")
        val_set = DetectionDataset(val, eval_transforms())

    meta = detector_meta(cfg.arch, backbone=cfg.backbone, class_names=data.class_names, min_size=recipe.test_size,
                         max_size=recipe.max_size, backbone_overrides=cfg.backbone_overrides,
                         options=cfg.detector_options)
    options = {"score_thresh": cfg.score_thresh, **cfg.detector_options}
    model = build_detector(
        cfg.arch, backbone=cfg.backbone, num_classes=data.num_classes, backbone_weights=cfg.backbone_weights,
        trainable_stages=cfg.trainable_stages, norm_eval=cfg.norm_eval, backbone_overrides=cfg.backbone_overrides,
        min_size=recipe.test_size, max_size=recipe.max_size, **options,
    )
    model.transform._skip_resize = True  # the data pipeline resized (multi-scale) already; eval resizes itself
    model.to(env.device)

    steps_per_epoch = len(_epoch_batches(len(train_set), cfg.batch_size, 0, cfg.seed, env))
    epochs = cfg.epochs or recipe.epochs
    total = cfg.max_iters or epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    milestones = [round(m / recipe.epochs * total) for m in recipe.milestones]
    warmup = cfg.warmup_iters if cfg.warmup_iters is not None else min(recipe.warmup_iters, total // 5)
    lr = cfg.lr or get_detector(cfg.arch).lr * cfg.batch_size * env.world_size / recipe.batch_size
    wd = cfg.weight_decay if cfg.weight_decay is not None else recipe.weight_decay
    # The released mmdet configs decay every parameter (no paramwise_cfg), unlike the ImageNet recipe.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd, eps=1e-8)
    schedule = LRSchedule(optimizer, total, warmup_steps=warmup, warmup_lr=lr * recipe.warmup_ratio, kind="step",
                          milestones=milestones)
    precision = Precision.resolve(cfg.precision, env.device)
    ddp = wrap_ddp(model, env)
    stepper = Stepper(ddp, optimizer, schedule, precision, clip_grad=cfg.clip_grad or recipe.clip_grad)

    state = TrainState(extra={"detector": meta})
    if cfg.resume:
        state = load_checkpoint(cfg.resume, model=model, optimizer=optimizer, scheduler=schedule,
                                scaler=stepper.scaler)
        if state.extra.get("detector") != meta:
            raise TrainingError(f"{cfg.resume} was trained as {state.extra.get('detector', {}).get('arch')} on other "
                                "classes or backbone; resume with the run's own --arch/--backbone/--data")
    out = cfg.out or (str(Path(cfg.resume).parent) if cfg.resume else None)  # a resumed run continues its directory
    run = RunDir(broadcast_object(str(RunDir.create(out, root="runs/det", main=False).path)), main=env.is_main)
    resolved = {"lr": lr, "weight_decay": wd, "total_steps": total, "epochs": epochs, "warmup_steps": warmup,
                "milestones": milestones, "world_size": env.world_size, "precision": precision.name,
                "recipe": asdict(recipe)}
    run.write_config({**asdict(cfg), "resolved": resolved})
    metrics = MetricsLogger(run, resume=bool(cfg.resume))
    log.info("%s/%s: %d images, %d steps (%d epochs x %d), lr %.2e, wd %.0e, %s, run dir %s", cfg.arch, cfg.backbone,
             len(train_set), total, epochs, steps_per_epoch, lr, wd, precision.name, run.path)

    last = run / "last.pth"
    step, results = state.step, {}
    with InterruptGuard(last_checkpoint=cfg.resume) as guard:
        for epoch in range(state.epoch, epochs):
            seeded.epoch = epoch
            batches = _epoch_batches(len(train_set), cfg.batch_size, epoch, cfg.seed, env)
            skip = state.epoch_step if epoch == state.epoch else 0
            loader = torch.utils.data.DataLoader(  # its own generator: the global RNG stays untouched
                train_set, batch_sampler=batches[skip:], collate_fn=collate, num_workers=cfg.workers,
                generator=torch.Generator().manual_seed(cfg.seed + epoch))
            ddp.train()
            sums: dict[str, float] = {}
            count, tic = 0, time.perf_counter()
            for i, (images, targets) in enumerate(loader, start=skip):
                if step >= total:
                    break
                images, targets = _to_device(images, targets, env.device)
                rng = capture_rng_state()  # a stop below saves the state from before this step's forward pass
                with precision.autocast():
                    losses = ddp(images, targets)
                loss = sum(losses.values())
                stop = guard.check(loss, where=f"epoch {epoch + 1} step {i + 1}").stop
                if stop or (cfg.stop_after is not None and step >= cfg.stop_after):
                    restore_rng_state(rng)
                    save_checkpoint(last, model=model, state=TrainState(epoch, i, step, extra=state.extra),
                                    optimizer=optimizer, scheduler=schedule, scaler=stepper.scaler,
                                    config=asdict(cfg))
                    if stop:
                        raise Interrupted(f"stopped at step {step}; resume with --resume {last}")
                    log.info("stopped after %d steps as asked; resume with --resume %s", step, last)
                    return {"run_dir": str(run.path), "checkpoint": str(last), "steps": step, "metrics": {}}
                stepper.step(loss)
                step += 1
                count += 1
                for k, v in {"loss": loss, **losses}.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                if env.is_main and (step % cfg.log_every == 0 or step == total):
                    parts = ", ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
                    log.info("epoch %d step %d/%d  loss %.3f (%s)  lr %.2e  %.2f s/step", epoch + 1, step, total,
                             loss.item(), parts, stepper.lr, (time.perf_counter() - tic) / count)
                if cfg.save_every and step % cfg.save_every == 0:
                    save_checkpoint(last, model=model, state=TrainState(epoch, i + 1, step, extra=state.extra),
                                    optimizer=optimizer, scheduler=schedule, scaler=stepper.scaler,
                                    config=asdict(cfg))
            state = TrainState(epoch + 1, 0, step, extra=state.extra)
            final = epoch + 1 == epochs
            if not cfg.save_every or final:
                save_checkpoint(last, model=model, state=state, optimizer=optimizer, scheduler=schedule,
                                scaler=stepper.scaler, config=asdict(cfg))
                guard.last_checkpoint = last
            record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": stepper.lr}
            if count:
                record.update({f"train_{k}": v / count for k, v in reduce_dict(sums).items()})
            evaluated = val_set is not None and (final or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0))
            if evaluated:
                results = evaluate(model, val_set, batch_size=cfg.batch_size, device=env.device,
                                   results_path=run / "results.json" if env.is_main else None)
                for kind, vals in results.items():
                    record.update({f"{kind}_{k}": v for k, v in vals.items()})
                if env.is_main:
                    log.info("epoch %d: %s", epoch + 1, _format_metrics(results))
            metrics.log(record)
            if evaluated or final:
                metrics.plot({"loss": ["train_loss"], "COCO AP": ["bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"]})
    summary = {"run_dir": str(run.path), "checkpoint": str(last), "steps": step, "metrics": results}
    run.write_json("summary.json", summary)
    return summary


def _format_metrics(results: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{kind} " + " ".join(f"{k} {v:.3f}" for k, v in vals.items()) for kind, vals in results.items())
