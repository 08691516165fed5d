"""Optimizer and learning-rate schedule of the released recipes.

How a task uses it::

    lr = scale_lr(5e-4, total_batch=world_size * batch_per_process)            # 5e-4 x total / 512 (DeiT rule)
    opt = create_optimizer(model, lr=lr, weight_decay=0.05)                    # AdamW, no decay on norms/biases
    sched = LRSchedule(opt, total_steps=epochs * steps_per_epoch, warmup_steps=5 * steps_per_epoch,
                       warmup_lr=1e-6, min_lr=1e-5, kind="cosine")             # step it after every opt.step()

Detection: ``kind="step", milestones=[8 * n, 11 * n]``; segmentation: ``kind="poly", power=0.9, min_lr=0``.
The schedule is a closed-form function of the step, so ``state_dict()`` holds just numbers and resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler


def scale_lr(base_lr: float, total_batch: int, base_batch: int = 512) -> float:
    """Linear scaling rule of the released recipe: ``base_lr * total_batch / base_batch`` (5e-4 at 512)."""
    return base_lr * total_batch / base_batch


def param_groups(
    model: nn.Module,
    weight_decay: float,
    skip: Iterable[str] = (),
    lr_scale: dict[str, float] | None = None,
    decay_norms: bool = False,
    no_decay_keys: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Two parameter groups: decayed weights, and the rest (1-D tensors = biases and norm weights, plus the names
    in ``skip`` and ``model.no_weight_decay()``: position embeddings and class tokens).

    Args:
        model: any module (DDP unwrapped by the caller, or not: names may carry ``module.``).
        weight_decay: decay of the first group.
        skip: extra parameter names (or name suffixes) without decay.
        lr_scale: optional ``{name prefix: factor}`` giving some parameters a scaled lr (e.g. ``{"backbone.": 0.1}``);
            each distinct factor becomes its own pair of groups with an ``lr_scale`` entry.
        decay_norms: decay every parameter (the released mmdet and mmseg configs, which set no ``paramwise_cfg``).
        no_decay_keys: when given, exactly the parameters whose name contains one of these go without decay
            (mmdet's ``paramwise_cfg=dict(custom_keys={key: dict(decay_mult=0.0)})``), instead of the rule above.
    """
    skip = set(skip)
    nwd = getattr(model, "no_weight_decay", None)
    if callable(nwd):
        skip |= set(nwd())
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if no_decay_keys:
            no_decay = any(k in name for k in no_decay_keys)
        else:
            no_decay = not decay_norms and (
                p.ndim <= 1 or name.endswith(".bias") or any(name == s or name.endswith("." + s) for s in skip))
        scale = 1.0
        for prefix, f in (lr_scale or {}).items():
            if name.startswith(prefix):
                scale = f
        groups.setdefault((no_decay, scale), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
        for (no_decay, scale), ps in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


def create_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    eps: float = 1e-8,
    betas: tuple[float, float] = (0.9, 0.999),
    skip: Iterable[str] = (),
    lr_scale: dict[str, float] | None = None,
    decay_norms: bool = False,
    no_decay_keys: Iterable[str] = (),
) -> torch.optim.AdamW:
    """AdamW as in the released recipes (eps 1e-8, decay 0.05; no decay on biases, norms, pos_embed, cls_token
    unless ``decay_norms``; or exactly the names containing ``no_decay_keys``)."""
    groups = param_groups(model, weight_decay, skip, lr_scale, decay_norms, tuple(no_decay_keys))
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    params = [p for g in groups for p in g["params"]]
    # The fused kernel (CUDA and CPU) is ~3x faster than the for-each one; other devices keep the default.
    fused = bool(params) and all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, eps=eps, betas=betas, fused=fused or None)


def schedule_from_config(cfg: Any, optimizer: torch.optim.Optimizer, lr: float, total_steps: int,
                         steps_per_epoch: int) -> LRSchedule:
    """The run's :class:`LRSchedule` from a :class:`~pvtv2.engine.config.TrainConfig`: warm-up of ``warmup_steps``
    (else ``warmup_epochs``; at most a fifth of a short run) from ``warmup_ratio`` x ``lr``, then the ``schedule``
    down to ``min_lr_ratio`` x ``lr``; ``milestones`` are fractions of the run. The released mmcv ``lr_config`` settings
    map onto it: ``step=[8, 11]`` of 12 epochs is ``milestones=(8/12, 11/12)``, ``warmup='linear',
    warmup_iters=500, warmup_ratio=0.001`` is ``warmup_steps=500, warmup_ratio=1e-3``, ``poly`` with ``power=0.9,
    min_lr=0, by_epoch=False`` is ``schedule="poly"`` (tests/test_oracle_schedule.py runs mmcv's hooks beside it)."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * steps_per_epoch)
    return LRSchedule(optimizer, total_steps, warmup_steps=min(warmup, total_steps // 5),
                      warmup_lr=lr * cfg.warmup_ratio, min_lr=lr * cfg.min_lr_ratio, kind=cfg.schedule,
                      power=cfg.power, milestones=[round(m * total_steps) for m in cfg.milestones])


class LRSchedule(LRScheduler):
    """Per-step schedule: linear warm-up from ``warmup_lr``, then ``"cosine"`` down to ``min_lr``, ``"poly"``
    (``(1 - t) ** power`` towards ``min_lr``), ``"step"`` (times ``gamma`` at each milestone) or ``"constant"``.

    Each group follows the same curve relative to its own initial lr; ``warmup_lr`` and ``min_lr`` are given for
    the group with the largest lr and scaled for the others. Call ``step()`` after every optimizer step.

    Args:
        optimizer: the optimizer (its groups' current ``lr`` are the peaks).
        total_steps: optimizer steps of the whole run.
        warmup_steps: linear warm-up steps (0: none).
        warmup_lr: lr at step 0 of the warm-up.
        min_lr: final lr of ``cosine``/``poly``.
        kind: ``"cosine"``, ``"poly"``, ``"step"`` or ``"constant"``.
        power: exponent of ``poly``.
        milestones: steps at which ``step`` multiplies by ``gamma``.
        gamma: factor of ``step``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_lr: float = 1e-6,
        min_lr: float = 0.0,
        kind: str = "cosine",
        power: float = 0.9,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if kind not in ("cosine", "poly", "step", "constant"):
            raise ValueError(f"unknown lr schedule {kind!r}; use cosine, poly, step or constant")
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        self.kind = kind
        self.power = power
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The lr at ``step`` divided by the peak lr (of the largest group)."""
        peak = max(self.base_lrs) or 1.0
        start, floor = self.warmup_lr / peak, self.min_lr / peak
        if step < self.warmup_steps:
            return start + (1.0 - start) * step / self.warmup_steps
        t = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        if self.kind == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        if self.kind == "poly":
            return floor + (1.0 - floor) * (1.0 - t) ** self.power
        if self.kind == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        return 1.0

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
