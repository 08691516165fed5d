"""Classification training: the loop behind ``pvtv2 train`` (one process, or one per device under torchrun).

>>> from pvtv2.engine.classification import train
>>> from pvtv2.engine.recipes import get_recipe
>>> result = train(get_recipe("fashion_mnist"), out="runs/fm")   # PVT v2-B0 on Fashion-MNIST
>>> result.best_top1

The run directory gets ``config.json``, ``metrics.jsonl``/``.csv``, ``curves.png``, ``last.pth`` (resumable, also
every ``ckpt_every`` steps) and ``best.pth`` (highest test top-1). ``resume=".../last.pth"`` continues exactly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataError, TrainingError
from .amp import Precision
from .checkpoint import TrainState, load_checkpoint, save_checkpoint
from .cls_data import ClassificationData, build_data
from .distributed import DistEnv, barrier, broadcast_object, cleanup, init_distributed, reduce_sum, wrap_ddp
from .ema import create_ema
from .evaluate import evaluate
from .guards import InterruptGuard, Interrupted
from .loop import Stepper
from .metrics import MetricsLogger, RunDir
from .optim import LRSchedule, create_optimizer
from .recipes import CLIP_GRAD, ClassificationConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    epochs: int
    steps: int
    last_top1: float
    best_top1: float
    seconds: float


def setup_process(cfg: ClassificationConfig) -> DistEnv:
    """torchrun set-up, CPU threads (cores shared between this node's processes), flush-to-zero, seed."""
    env = init_distributed(cfg.device)
    if not env.is_main:  # one voice: ranks > 0 only report problems
        logging.getLogger("pvtv2").setLevel(logging.WARNING)
    if env.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(cfg.threads or max(1, cores // local))
        torch.set_flush_denormal(True)  # denormal Adam moments make CPU steps several times slower
    torch.manual_seed(cfg.seed + env.rank)
    return env


def build_model(cfg: ClassificationConfig, num_classes: int) -> nn.Module:
    """The run's model, with fine-tuning weights loaded (a new head when the class count differs)."""
    from ..models import create_model, model_info
    from ..weights import convert, detect_format, load_weights, read_checkpoint, released_state_dict, unwrap_state_dict

    overrides = dict(cfg.model_overrides)
    if cfg.drop_path is not None:
        overrides.setdefault("drop_path_rate", cfg.drop_path)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    model = create_model(cfg.model, num_classes=num_classes, **overrides)
    if cfg.weights:
        model_info(cfg.model)  # unknown names fail before any download
        sd = released_state_dict(cfg.model) if cfg.weights == "official" else unwrap_state_dict(
            read_checkpoint(cfg.weights), where=cfg.weights)
        fmt = detect_format(sd)
        head = convert(sd, fmt, "pvtv2").get("head.weight") if fmt else None
        ignore = cfg.ignore_head
        if ignore is None:
            ignore = head is not None and head.shape[0] != num_classes
            if ignore:
                log.info("%s has a %d-class head, this run has %d classes: training a new head",
                         cfg.weights, head.shape[0], num_classes)
        report = load_weights(model, sd, ignore_head=bool(ignore))
        log.info("fine-tuning from %s (%s format, %d tensors)", cfg.weights, report.format, report.loaded)
    return model


def _clip_grad(cfg: ClassificationConfig) -> float | None:
    clip = cfg.clip_grad if cfg.clip_grad is not None else CLIP_GRAD.get(cfg.model)
    return clip or None


def train(cfg: ClassificationConfig, out: str | os.PathLike[str] | None = None,
          resume: str | os.PathLike[str] | None = None, progress: bool = True) -> TrainResult:
    """Train (or resume) a classifier as ``cfg`` says; returns the final and best test top-1.

    Args:
        cfg: the resolved configuration (see :mod:`pvtv2.engine.recipes`).
        out: run directory (default ``runs/<timestamp>``; on resume, the checkpoint's folder).
        resume: a ``last.pth``/``best.pth`` training checkpoint to continue from exactly.
        progress: show the tqdm bar (rank 0 only).

    Raises:
        TrainingError: NaN/inf loss (the last good checkpoint is kept) or an inconsistent set-up.
        Interrupted: after Ctrl-C/SIGTERM, once a resumable ``last.pth`` is written.
    """
    env = setup_process(cfg)
    try:
        return _train(cfg, env, out, resume, progress)
    finally:
        cleanup()


def _train(cfg: ClassificationConfig, env: DistEnv, out: Any, resume: Any, progress: bool) -> TrainResult:
    t_start = time.perf_counter()
    if cfg.batch_size % env.world_size:
        raise TrainingError(f"--batch-size {cfg.batch_size} (global) is not divisible by {env.world_size} processes")
    data = build_data(cfg, env)
    model = build_model(cfg, len(data.classes)).to(env.device)
    if env.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ddp = wrap_ddp(model, env)
    precision = Precision.resolve(cfg.precision, env.device)
    total_steps = cfg.epochs * data.steps_per_epoch
    lr = cfg.peak_lr
    optimizer = create_optimizer(model, lr=lr, weight_decay=cfg.weight_decay)
    warmup_steps = round(cfg.warmup_epochs * data.steps_per_epoch)
    scheduler = LRSchedule(optimizer, total_steps=total_steps, warmup_steps=warmup_steps,
                           warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, kind="cosine")
    ema = create_ema(model, cfg.ema_decay) if cfg.ema else None
    stepper = Stepper(ddp, optimizer, scheduler, precision, clip_grad=_clip_grad(cfg), ema=ema)
    criterion = data.criterion.to(env.device)

    state = TrainState(extra={"classes": list(data.classes), "preprocess": data.preprocess})
    if resume:
        state = load_checkpoint(resume, model=model, optimizer=optimizer, scheduler=scheduler, scaler=stepper.scaler,
                                ema=ema)
        if scheduler.total_steps != total_steps:  # --epochs changed on resume: the cosine follows the new length
            log.info("schedule length changed from %d to %d steps", scheduler.total_steps, total_steps)
            scheduler.total_steps = total_steps
        state.extra.setdefault("classes", list(data.classes))
        state.extra.setdefault("preprocess", data.preprocess)
    run_path = out or (Path(resume).parent if resume else _new_run_name())
    run = RunDir(broadcast_object(str(run_path)), main=env.is_main)  # rank 0's timestamp on every rank
    config = {**cfg.to_dict(), "world_size": env.world_size, "device": str(env.device), "peak_lr": lr,
              "total_steps": total_steps, "steps_per_epoch": data.steps_per_epoch, "precision": precision.name,
              "clip_grad": _clip_grad(cfg), "num_classes": len(data.classes)}
    run.write_config(config)
    metrics = MetricsLogger(run, resume=bool(resume))
    last, best_path = run / "last.pth", run / "best.pth"
    if env.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info("%s (%.2f M params) on %s: %d train / %d test images, %d classes, %d epochs x %d steps, "
                 "global batch %d on %d process(es), lr %.2e, %s -> %s", cfg.model, n_params / 1e6, data.name,
                 data.n_train, data.n_val, len(data.classes), cfg.epochs, data.steps_per_epoch, cfg.batch_size,
                 env.world_size, lr, precision.name, run.path)

    def save(path: Path, st: TrainState) -> None:
        save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=stepper.scaler, ema=ema,
                        state=st, config=config)

    result_top1 = float("nan")
    stopped_mid_epoch = False
    with InterruptGuard(last_checkpoint=last if resume else None) as guard:
        for epoch in range(state.epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            train_stats = _train_epoch(cfg, env, data, ddp, criterion, precision, stepper, state, epoch, guard,
                                       save, last, progress)
            if train_stats is None:  # max_steps reached inside the epoch
                stopped_mid_epoch = True
                break
            val = evaluate(model, data.val, env.device, precision, num_classes=len(data.classes))
            val_ema = evaluate(ema.module, data.val, env.device, precision, len(data.classes)) if ema else None
            result_top1 = val["top1"]
            improved = state.best is None or val["top1"] > state.best
            state = TrainState(epoch=epoch + 1, epoch_step=0, step=state.step,
                               best=max(val["top1"], state.best or -1.0), extra=state.extra)
            save(last, state)
            if improved:
                save(best_path, state)
            guard.last_checkpoint = last
            record = {"epoch": epoch + 1, "step": state.step, **train_stats, "test_loss": val["loss"],
                      "test_top1": val["top1"], "test_top5": val["top5"],
                      "epoch_seconds": time.perf_counter() - t_epoch,
                      "elapsed_seconds": time.perf_counter() - t_start}
            if val_ema:
                record.update(test_top1_ema=val_ema["top1"], test_top5_ema=val_ema["top5"])
            skipped = int(reduce_sum(torch.tensor(float(data.skipped_train), device=env.device)).item())  # all ranks
            if skipped or val["skipped"]:
                record.update(skipped_images_train=skipped, skipped_images_test=val["skipped"])
            metrics.log(record)
            metrics.plot({"loss": ["train_loss", "test_loss"], "test accuracy (%)": ["test_top1", "test_top5"]},
                         title=f"{cfg.model} on {data.name}")
            if env.is_main:
                log.info("epoch %d/%d: train loss %.4f | test loss %.4f, top-1 %.2f%%, top-5 %.2f%%%s | %.0fs "
                         "(%.1f min so far)%s", epoch + 1, cfg.epochs, train_stats["train_loss"], val["loss"],
                         val["top1"], val["top5"], f", EMA top-1 {val_ema['top1']:.2f}%" if val_ema else "",
                         record["epoch_seconds"], record["elapsed_seconds"] / 60, _skipped_note(skipped, val))
            if cfg.max_steps is not None and state.step >= cfg.max_steps:
                break
    if stopped_mid_epoch or math.isnan(result_top1):  # max_steps inside an epoch (or nothing left): evaluate
        val = evaluate(model, data.val, env.device, precision, num_classes=len(data.classes))
        result_top1 = val["top1"]
        save(last, state)
        metrics.log({"epoch": state.epoch + state.epoch_step / data.steps_per_epoch, "step": state.step,
                     "test_loss": val["loss"], "test_top1": val["top1"], "test_top5": val["top5"],
                     "elapsed_seconds": time.perf_counter() - t_start})
    seconds = time.perf_counter() - t_start
    summary = {"final_top1": result_top1, "best_top1": state.best if state.best is not None else result_top1,
               "epochs": state.epoch, "steps": state.step, "seconds": seconds, "checkpoint": str(last)}
    run.write_json("summary.json", summary)
    barrier()
    if env.is_main:
        log.info("done in %.1f min: test top-1 %.2f%% (best %.2f%%); run directory %s", seconds / 60, result_top1,
                 summary["best_top1"], run.path)
    return TrainResult(run.path, state.epoch, state.step, result_top1, float(summary["best_top1"]), seconds)


def _new_run_name() -> str:
    return str(RunDir.create(None, main=False).path)


def _skipped_note(skipped_train: int, val: dict[str, Any]) -> str:
    n = skipped_train + int(val["skipped"])
    return f" | {n} unreadable image(s) skipped" if n else ""


def _train_epoch(cfg: ClassificationConfig, env: DistEnv, data: ClassificationData, ddp: nn.Module,
                 criterion: nn.Module, precision: Precision, stepper: Stepper, state: TrainState, epoch: int,
                 guard: InterruptGuard, save: Any, last: Path, progress: bool) -> dict[str, float] | None:
    """One epoch (or its remainder after a resume). Updates ``state`` in place; ``None`` when max_steps hit."""
    from tqdm import tqdm

    ddp.train()
    start = state.epoch_step
    data.train_sampler.set_epoch(epoch, start_batch=start)
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    seen = 0
    bar = tqdm(total=data.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               disable=not (progress and env.is_main), dynamic_ncols=True, leave=False)
    t_last, imgs_since = time.perf_counter(), 0
    i = start
    for i, batch in enumerate(data.train, start=start):
        images, targets, skipped = _unpack(batch)
        data.skipped_train += skipped
        if images.numel() == 0:
            continue
        images = images.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        if data.mixup is not None:
            if len(images) % 2:  # timm's batch mixup needs an even batch (odd after a skipped image)
                images, targets = images[:-1], targets[:-1]
            images, targets = data.mixup(images, targets)
        with precision.autocast():
            loss = criterion(ddp(images), targets)
        status = guard.check(loss, where=f"epoch {epoch + 1} step {i + 1}")
        stepper.step(loss)
        state.step += 1
        state.epoch_step = i + 1
        loss_sum += loss.detach().double() * len(images)
        seen += len(images)
        imgs_since += len(images)
        if status.stop:
            save(last, state)
            msg = f"interrupted at epoch {epoch + 1} step {i + 1}; resumable checkpoint {last}: continue with " \
                  f"'pvtv2 train --resume {last}'"
            if env.is_main:
                bar.close()
                log.warning(msg)
            raise Interrupted(msg)
        if cfg.ckpt_every and state.step % cfg.ckpt_every == 0:
            save(last, state)
            guard.last_checkpoint = last
        if (i + 1) % cfg.log_every == 0 or i + 1 == data.steps_per_epoch:
            now = time.perf_counter()
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{stepper.lr:.2e}",
                            img_s=f"{imgs_since * env.world_size / max(now - t_last, 1e-9):.0f}", refresh=False)
            t_last, imgs_since = now, 0
        bar.update(1)
        if cfg.max_steps is not None and state.step >= cfg.max_steps:
            bar.close()
            return None
    bar.close()
    totals = reduce_sum(torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=env.device)]))
    if state.epoch_step < data.steps_per_epoch and start < data.steps_per_epoch and totals[1] == 0:
        raise DataError("the training loader produced no batch: every image in it was unreadable?")
    return {"train_loss": float(totals[0] / totals[1].clamp(min=1)), "lr": stepper.lr}


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    if len(batch) == 3:
        return batch[0], batch[1], int(batch[2])
    return batch[0], batch[1], 0
