"""Hooks: what happens around the trainer's steps, as objects (detectron2's ``HookBase``).

The trainer calls every hook of a run, in order, at five points; the run directory's own writers are hooks too
(:class:`MetricsFiles`: ``metrics.jsonl`` / ``.csv`` and ``curves.png``; :class:`ReportLog`: the log line of each
report; :class:`SummaryFile`: ``summary.json``). A writer of your own (TensorBoard, a JSON sink, a profiler) is a
hook passed to :func:`~.trainer.train`, with no change to the trainer::

    class PrintLoss(Hook):
        def after_step(self, run, loss, losses):
            if run.state.step % 100 == 0:
                print(run.state.step, float(loss))

    train(task, hooks=[PrintLoss()])

Every hook method runs on every process; write files only where ``run.env.is_main``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .metrics import MetricsLogger

if TYPE_CHECKING:
    from .checkpoint import TrainState
    from .distributed import DistEnv
    from .metrics import RunDir
    from .task import Task


class RunView(Protocol):
    """What a hook may read of the run (the trainer's own object; treat it as read-only)."""

    task: Task
    cfg: Any
    env: DistEnv
    run_dir: RunDir
    model: torch.nn.Module  # unwrapped (not DDP)
    optimizer: torch.optim.Optimizer
    state: TrainState  # step, epoch, best
    total: int  # steps in the run
    steps_per_epoch: int
    resumed_from: Path | None


class Hook:
    """Override the points you need; each does nothing by default."""

    def before_train(self, run: RunView) -> None:
        """Once, before the first step (also on resume)."""

    def after_step(self, run: RunView, loss: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        """After each optimizer step (``run.state.step`` is the number of steps done)."""

    def after_report(self, run: RunView, record: dict[str, Any], metrics: dict[str, float]) -> None:
        """After each report (an epoch end or an evaluation): ``record`` is the metrics record (train losses, lr,
        evaluation, counters, seconds); ``metrics`` the evaluation alone (``{}`` at a report without one)."""

    def on_checkpoint(self, run: RunView, path: Path, best: bool) -> None:
        """After ``last.pth`` (``best`` False) or ``best.pth`` (``best`` True) was written."""

    def after_train(self, run: RunView, summary: dict[str, Any]) -> None:
        """Once, after the last step or a ``stop_after`` stop (not after Ctrl-C or an error)."""


class MetricsFiles(Hook):
    """``metrics.jsonl`` / ``metrics.csv`` (one record per report; a resumed run keeps its earlier records) and
    ``curves.png`` (train losses and the task's own panels)."""

    def __init__(self) -> None:
        self.logger: MetricsLogger | None = None

    def before_train(self, run: RunView) -> None:
        self.logger = MetricsLogger(run.run_dir, resume=run.resumed_from is not None, x="epoch")

    def after_report(self, run: RunView, record: dict[str, Any], metrics: dict[str, float]) -> None:
        assert self.logger is not None
        self.logger.log(record)
        losses = ["train_loss", *(k for k in record if k.endswith("_loss") and k != "train_loss")]
        self.logger.plot({"loss": losses, **{t: list(keys) for t, keys in run.task.curves.items()}},
                         title=run.task.describe())


class ReportLog(Hook):
    """One log line per report: epoch, step, train loss, the task's metrics, time."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def after_report(self, run: RunView, record: dict[str, Any], metrics: dict[str, float]) -> None:
        if not run.env.is_main:
            return
        epochs = math.ceil(run.total / run.steps_per_epoch)
        shown = run.task.format_metrics(metrics) if metrics else "no evaluation"
        self.log.info("epoch %.4g/%d (step %d/%d): train loss %.4f | %s | %.0fs (%.1f min so far)",
                      record["epoch"], epochs, record["step"], run.total, record.get("train_loss", float("nan")),
                      shown, record["seconds"], record["run_minutes"])


class SummaryFile(Hook):
    """``summary.json``: the last evaluation, the best metric, steps, time, the checkpoint."""

    def after_train(self, run: RunView, summary: dict[str, Any]) -> None:
        run.run_dir.write_json("summary.json", summary)


def default_hooks(log: Any) -> list[Hook]:
    """The run directory's writers, in the order the trainer runs them before any hook of the caller's."""
    return [MetricsFiles(), ReportLog(log), SummaryFile()]
