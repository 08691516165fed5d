"""One optimizer step, the same for every task: scaled backward, optional clipping, step, schedule, EMA.

How a task uses it::

    stepper = Stepper(model, opt, sched, precision=amp, clip_grad=1.0, ema=ema)
    with InterruptGuard() as guard:
        for i, batch in enumerate(loader):
            with amp.autocast():
                loss = loss_fn(model, batch)
            if guard.check(loss, where=f"epoch {e} step {i}").stop:   # raises on NaN/inf
                ...save and raise Interrupted
            stepper.step(loss)                                        # backward + update; returns grad norm or None
"""

from __future__ import annotations

import torch
from torch import nn

from .amp import Precision
from .distributed import unwrap_model


class Stepper:
    """Backward pass and parameter update with the run's precision, clipping, schedule and EMA.

    Args:
        model: the (possibly DDP-wrapped) model being trained.
        optimizer: its optimizer.
        scheduler: stepped after every optimizer step (or ``None``).
        precision: the resolved :class:`Precision`; fp16 uses its GradScaler (``self.scaler``; checkpoint it).
        clip_grad: max global gradient norm (``None``: no clipping).
        ema: an EMA model updated after each step (or ``None``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        precision: Precision,
        clip_grad: float | None = None,
        ema: nn.Module | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = precision.grad_scaler()
        self.clip_grad = clip_grad
        self.ema = ema

    def step(self, loss: torch.Tensor) -> float | None:
        """``loss.backward()`` then one update; returns the gradient norm before clipping if clipping is on."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        norm = None
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(unwrap_model(self.model))
        return norm

    @property
    def lr(self) -> float:
        """Current lr of the first (largest) group."""
        return max(g["lr"] for g in self.optimizer.param_groups)
