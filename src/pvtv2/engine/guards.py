"""Stop a run cleanly: on a NaN/inf loss (keeping the last good checkpoint) and on Ctrl-C / SIGTERM (after
writing a resumable checkpoint).

How a task uses it::

    with InterruptGuard() as guard:
        for batch in loader:
            loss = compute_loss(batch)
            status = guard.check(loss, where=f"epoch {epoch} step {i}")   # one tiny all-reduce under DDP
            if status.stop:                                                # Ctrl-C on any rank
                save_checkpoint(..., state=TrainState(epoch, i, step))     # resumable at this batch
                raise Interrupted(f"... resume with --resume {path}")
            loss.backward(); ...

``check`` raises :class:`~pvtv2.errors.TrainingError` (one line) on a non-finite loss on any rank, before the
backward pass, so no checkpoint is ever written from poisoned weights; the last one written stays the good one.
A second Ctrl-C while the checkpoint is being written aborts at once (plain ``KeyboardInterrupt``); a different
signal right after the first (torchrun sends SIGTERM to workers that already got the terminal's SIGINT) is ignored.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from ..errors import TrainingError
from .distributed import is_dist

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Raised after a resumable checkpoint was written on Ctrl-C / SIGTERM (the CLI exits with 130)."""


@dataclass(frozen=True)
class StepStatus:
    stop: bool  # an interrupt was requested on some rank: save and leave


class InterruptGuard:
    """Context manager turning the first SIGINT/SIGTERM into a flag the loop polls between steps.

    Args:
        signals: which signals to catch (SIGTERM is what SLURM and torchrun send before killing).
        last_checkpoint: the most recent good checkpoint, named in the NaN message (update it as you save).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), last_checkpoint: Any = None):
        self.signals = signals
        self.requested = False
        self.last_checkpoint = last_checkpoint
        self._first: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            if signum == self._first:  # the same signal twice (Ctrl-C Ctrl-C): give up immediately
                raise KeyboardInterrupt
            return  # e.g. torchrun's SIGTERM right after the terminal's SIGINT: already stopping
        self.requested = True
        self._first = signum
        log.warning("\n%s received: finishing this step and writing a resumable checkpoint "
                    "(press Ctrl-C again to abort at once)", signal.Signals(signum).name)

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def check(self, loss: torch.Tensor, where: str = "") -> StepStatus:
        """Raise on a non-finite loss (on any rank); report whether an interrupt was requested (on any rank)."""
        flags = torch.tensor(
            [0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0, 1.0 if self.requested else 0.0],
            device=loss.device,
        )
        if is_dist():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] > 0:
            raise TrainingError(non_finite_message(loss, where, self.last_checkpoint))
        return StepStatus(stop=bool(flags[1] > 0))


def non_finite_message(loss: torch.Tensor, where: str, last_checkpoint: Any) -> str:
    value = loss.detach().float().flatten()[0].item() if loss.numel() else float("nan")
    kept = (f"the last good checkpoint is {last_checkpoint} (resume from it with --resume, e.g. with a lower --lr "
            "or --clip-grad)") if last_checkpoint else "no checkpoint was written yet; lower --lr or set --clip-grad"
    at = f" at {where}" if where else ""
    return f"loss became {value}{at}; training stopped and nothing was saved from this step: {kept}"


def check_finite(loss: torch.Tensor, where: str = "", last_checkpoint: Any = None) -> None:
    """Raise :class:`TrainingError` if ``loss`` is NaN or inf (no collective; see :meth:`InterruptGuard.check`)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise TrainingError(non_finite_message(loss, where, last_checkpoint))
