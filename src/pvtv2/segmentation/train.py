"""Iteration-based Semantic FPN training (the released ADE20K recipe) on the shared engine: torchrun/DDP,
resumable atomic checkpoints, NaN and Ctrl-C guards, metrics JSONL/CSV and curves."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine import (
    InterruptGuard,
    Interrupted,
    LRSchedule,
    MetricsLogger,
    Precision,
    RunDir,
    Stepper,
    TrainState,
    barrier,
    broadcast_object,
    checkpoint_config,
    init_distributed,
    load_checkpoint,
    reduce_mean,
    save_checkpoint,
    wrap_ddp,
)
from ..errors import DataError, TrainingError
from .checkpoint import segmentor_record
from .datasets import ResampleOnError, collate_segmentation, next_batch
from .layouts import build_dataset, evaluation_split
from .evaluate import evaluate
from .model import semantic_fpn
from .sampler import InfiniteBatchSampler
from .transforms import train_transforms

log = logging.getLogger(__name__)


@dataclass
class SegTrainConfig:
    """Everything a Semantic FPN run depends on (defaults: the released ADE20K 40k recipe)."""

    data: str = ""  # dataset root (layout auto-detected: ADE20K, VOC, or an image folder with `masks`)
    layout: str = "auto"  # auto | ade20k | voc | folder
    train_split: str | None = None  # ADE20K: training (default); VOC: an ImageSets split (default: every mask)
    val_data: str | None = None  # validation root (default: `data` with `val_split`)
    val_split: str | None = None  # ADE20K: validation; None with no val_data: no validation
    masks: str | None = None  # mask folder of the folder layout
    num_classes: int | None = None  # folder layout only
    reduce_zero_label: bool = False  # folder layout: label 0 means ignore
    model: str = "pvt_v2_b0"  # backbone name
    backbone_weights: str | None = None  # "official", a checkpoint path, or None (random init)
    iterations: int = 40_000  # optimizer steps (paper: 40k at batch 16)
    batch_size: int = 16  # total over all processes (8 GPUs x 2 in the release)
    lr: float = 2e-4  # AdamW lr (released configs; the paper text says 1e-4)
    weight_decay: float = 1e-4  # on every parameter, as in the released config
    power: float = 0.9  # poly decay exponent, down to min_lr
    min_lr: float = 0.0
    warmup_iters: int = 0
    clip_grad: float | None = None  # max gradient norm (None: no clipping, as released)
    crop_size: int = 512  # training crop
    scale: tuple[int, int] = (2048, 512)  # keep-ratio resize bound (long, short) before the random ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    test_scale: tuple[int, int] = (2048, 512)  # evaluation: shorter side 512, longer <= 2048
    eval_mode: str = "whole"  # whole | slide
    eval_interval: int = 4000  # iterations between validations (and at the end)
    ckpt_interval: int = 4000  # iterations between checkpoints (and at the end, and on Ctrl-C)
    log_interval: int = 50
    workers: int = 4  # DataLoader workers per process
    seed: int = 0
    precision: str = "auto"  # auto (bf16/fp16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"
    on_error: str = "skip"  # bad samples: skip (logged and counted) or raise
    out: str | None = None  # run directory (default runs/<timestamp>)
    resume: str | None = None  # a last.pth to continue exactly
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored with the run


# Settings a resumed run must share with the checkpoint for the continuation to be exact.
_RESUME_KEYS = ("model", "iterations", "batch_size", "lr", "weight_decay", "power", "min_lr", "warmup_iters",
                "crop_size", "scale", "ratio_range", "cat_max_ratio", "seed")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: SegTrainConfig) -> dict[str, Any]:
    """Train Semantic FPN; returns ``{"run_dir", "checkpoint", "losses", "metrics", "skipped", "seconds"}``.

    Launch with ``torchrun --nproc-per-node N`` for DDP (the total batch split across processes; the head's
    BatchNorm becomes SyncBatchNorm on GPUs, as released; on CPU, gloo, each process keeps its own statistics);
    a single process otherwise.
    """
    env = init_distributed(cfg.device)
    if cfg.batch_size % env.world_size:
        raise TrainingError(f"--batch-size {cfg.batch_size} must be divisible by the {env.world_size} processes")
    if cfg.resume:  # a resumed run continues exactly: the recipe must be the checkpoint's
        saved = checkpoint_config(cfg.resume)
        diff = [k for k in _RESUME_KEYS if k in saved and _norm(saved[k]) != _norm(getattr(cfg, k))]
        if diff:
            raise TrainingError(
                f"--resume {cfg.resume} was trained with different {', '.join(diff)} "
                f"({', '.join(f'{k}={saved[k]}' for k in diff)}); pass the same settings to continue it"
            )
    _seed_all(cfg.seed + env.rank)
    on_error = "raise" if cfg.on_error == "raise" else "skip"
    common = dict(layout=cfg.layout, masks=cfg.masks, num_classes=cfg.num_classes,
                  reduce_zero_label=cfg.reduce_zero_label, on_error=on_error)
    train_ds = build_dataset(cfg.data, split=cfg.train_split, **common,
                             transforms=train_transforms(cfg.crop_size, tuple(cfg.scale), tuple(cfg.ratio_range),
                                                         cfg.cat_max_ratio))
    meta = train_ds.meta
    val_ds = None
    if cfg.val_data or cfg.val_split:
        val_root = cfg.val_data or cfg.data
        val_ds = build_dataset(val_root, split=evaluation_split(val_root, cfg.val_split), **common)
        if val_ds.meta.num_classes != meta.num_classes:
            raise DataError(f"validation set has {val_ds.meta.num_classes} classes, training set {meta.num_classes}")

    model = semantic_fpn(backbone=cfg.model, num_classes=meta.num_classes, backbone_weights=cfg.backbone_weights)
    if env.distributed and env.device.type == "cuda":  # SyncBN as released (PyTorch has it on GPUs only)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(env.device)
    ddp = wrap_ddp(model, env)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = LRSchedule(optimizer, cfg.iterations, warmup_steps=cfg.warmup_iters, min_lr=cfg.min_lr,
                           kind="poly", power=cfg.power)
    precision = Precision.resolve(cfg.precision, env.device)
    stepper = Stepper(ddp, optimizer, scheduler, precision, clip_grad=cfg.clip_grad)
    scaler = stepper.scaler
    state = TrainState(extra=segmentor_record(model, meta))
    if cfg.resume:
        state = load_checkpoint(cfg.resume, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        state.extra = segmentor_record(model, meta)
        log.info("resumed from %s at iteration %d", cfg.resume, state.step)
    run_path = cfg.out or (str(Path(cfg.resume).parent) if cfg.resume else None)
    run = RunDir(broadcast_object(str(RunDir.create(run_path, main=False).path)), main=env.is_main)  # rank 0's name
    config = {**asdict(cfg), "world_size": env.world_size, "num_classes": meta.num_classes}
    run.write_config(config)
    metrics = MetricsLogger(run, resume=bool(cfg.resume), x="step")

    sampler = InfiniteBatchSampler(len(train_ds), cfg.batch_size // env.world_size, cfg.seed, env.rank,
                                   env.world_size, start_iter=state.step)
    loader = torch.utils.data.DataLoader(
        ResampleOnError(train_ds), batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate_segmentation,
        pin_memory=env.device.type == "cuda", generator=torch.Generator(),  # keep the global RNG untouched
        persistent_workers=cfg.workers > 0,
    )
    ckpt_path = run / "last.pth"
    losses: list[float] = []
    skipped: set[str] = set()
    window: list[float] = []
    result: dict[str, Any] = {}
    start = tick = time.perf_counter()
    ddp.train()

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        state=TrainState(0, step, step, state.best, state.extra), config=config)
        guard.last_checkpoint = ckpt_path

    batches = iter(loader)
    with InterruptGuard(last_checkpoint=ckpt_path if cfg.resume else None) as guard:
        for step in range(state.step, cfg.iterations):
            batch = next_batch(batches)
            skipped.update(batch["skipped_paths"])
            x = batch["image"].to(env.device, non_blocking=True)
            y = batch["mask"].to(env.device, non_blocking=True)
            with precision.autocast():
                logits = ddp(x)  # (B, K, H, W)
            loss = F.cross_entropy(logits.float(), y, ignore_index=meta.ignore_index)
            status = guard.check(loss, where=f"iteration {step + 1}")  # raises on NaN/inf, before the update
            stepper.step(loss)
            value = float(reduce_mean(loss.detach()))
            losses.append(value)
            window.append(value)
            done = step + 1
            if status.stop:  # Ctrl-C / SIGTERM: this step is finished, so the checkpoint resumes exactly
                save(done)
                raise Interrupted(f"interrupted after iteration {done}; continue with --resume {ckpt_path}")
            record: dict[str, Any] = {}
            if done % cfg.log_interval == 0 or done == cfg.iterations:
                secs = (time.perf_counter() - tick) / len(window)
                record = {"step": done, "train_loss": sum(window) / len(window),
                          "lr": optimizer.param_groups[0]["lr"], "sec_per_iter": secs}
                if env.is_main:
                    log.info("iter %d/%d  loss %.4f  lr %.3g  %.2f s/it  eta %.0f min", done, cfg.iterations,
                             record["train_loss"], record["lr"], secs, secs * (cfg.iterations - done) / 60)
                window, tick = [], time.perf_counter()
            if val_ds is not None and (done % cfg.eval_interval == 0 or done == cfg.iterations):
                _sync_buffers(model, env.distributed)  # every rank scores with rank 0's (= the saved) BN statistics
                result = evaluate(model, val_ds, scale=tuple(cfg.test_scale), mode=cfg.eval_mode,  # type: ignore[arg-type]
                                  amp=precision.name != "fp32")
                record.update(step=done, val_miou=result["miou"], val_pixel_acc=result["pixel_acc"])
                if env.is_main:
                    log.info("iter %d  val mIoU %.2f  pixel acc %.2f", done, 100 * result["miou"],
                             100 * result["pixel_acc"])
                state.best = max(result["miou"], state.best or 0.0)
                ddp.train()
                tick = time.perf_counter()
            if record:
                metrics.log(record)
            if done % cfg.ckpt_interval == 0 or done == cfg.iterations:
                save(done)
    metrics.plot({"loss": ["train_loss"], "validation": ["val_miou", "val_pixel_acc"]},
                 title=f"Semantic FPN {cfg.model}")
    if skipped and env.is_main:
        log.warning("%d bad sample(s) were skipped during training", len(skipped))
    barrier()
    return {"run_dir": str(run.path), "checkpoint": str(ckpt_path), "losses": losses, "metrics": result,
            "skipped": len(skipped), "seconds": time.perf_counter() - start, "model": model, "meta": meta}


def _sync_buffers(model: nn.Module, distributed: bool) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, which each CPU process updates on its own) to all."""
    if distributed:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v
