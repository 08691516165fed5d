"""The task protocol: what classification, detection and segmentation tell the one trainer.

The trainer (:mod:`.trainer`) owns everything a run has whatever it learns: processes, the optimizer and its
schedule, precision, EMA, the step loop with its progress bar, exact resume, Ctrl-C, the NaN guard, checkpoints,
the run directory, metrics and curves. A task owns its data, its model, its loss and its metric::

    class MyTask(Task):
        name, metric = "cls", "top1"
        curves = {"loss": ("train_loss", "val_loss"), "accuracy (%)": ("val_top1",)}

        def setup(self, env):            return len(self.train_set)          # read the data once
        def build_model(self, env):      return create_model(...)
        def train_loader(self, sampler, env): return DataLoader(SeededDataset(self.train_set), batch_sampler=sampler)
        def losses(self, model, batch, env):  return {"loss": F.cross_entropy(model(x), y)}
        def evaluate(self, model, env):  return {"val_top1": ...}          # the same numbers on every rank

How to add a task: a package beside ``classification/`` with a config (a :class:`~.config.TrainConfig` subclass
with its recipes), a :class:`Task` subclass, and a command in ``cli/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .config import TrainConfig
from .distributed import DistEnv
from .sampling import StepSampler


class Task(ABC):
    """One kind of training. Subclasses set the class attributes and implement the abstract methods.

    Attributes:
        name: short name: the run folder ``runs/<name>/<time>`` and the log prefix (``cls``, ``det``, ``seg``).
        metric: the evaluation result that picks ``best.pth``, e.g. ``test_top1``, ``bbox_AP``.
        higher_is_better: whether a larger ``metric`` is better (False for a loss or an error rate).
        curves: the panels of ``curves.png``: title -> metric keys.
        cfg: the run's configuration.
        progress: whether the task may draw progress bars of its own (e.g. generating its data); the trainer sets
            it from its ``progress`` argument before :meth:`setup`.
    """

    progress: bool = True
    name: ClassVar[str] = "task"
    metric: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    curves: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    # --- data and model ---
    @abstractmethod
    def setup(self, env: DistEnv) -> int:
        """Read (and check) the training and evaluation data; return the number of training samples."""

    @abstractmethod
    def build_model(self, env: DistEnv) -> nn.Module:
        """The model to train, with any starting weights loaded (the trainer moves it to ``env.device``)."""

    @abstractmethod
    def train_loader(self, sampler: StepSampler, env: DistEnv) -> Iterable[Any]:
        """Batches for the sampler's batches of ``(index, seed)`` (endless: the trainer counts the steps)."""

    @abstractmethod
    def losses(self, model: nn.Module, batch: Any, env: DistEnv) -> dict[str, torch.Tensor]:
        """The scalar losses of one batch (the trainer sums them); runs under the run's autocast. ``model`` may be
        wrapped in DistributedDataParallel: call it, don't reach inside."""

    @abstractmethod
    def evaluate(self, model: nn.Module, env: DistEnv) -> dict[str, float]:
        """Scores on the evaluation data, the same on every rank (each rank may score a shard); ``{}`` when the run
        has no evaluation data. ``model`` is unwrapped (or the EMA copy)."""

    # --- optional hooks ---
    def default_base_lr(self) -> float:
        """The learning rate for ``cfg.base_batch`` images when the config gives none."""
        raise NotImplementedError(f"{type(self).__name__} has no default learning rate: set base_lr or lr")

    def build_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer | None:
        """The task's own optimizer at peak learning rate ``lr`` (the trainer's warm-up and schedule then scale each
        group's initial ``lr``); None, the default: AdamW as the released recipes use it
        (:func:`~.optim.create_optimizer` with the config's weight decay and no-decay rules)."""
        return None

    def sampler_repeats(self) -> int:
        """How many times each sample is repeated within an epoch (DeiT's repeated augmentation: 3); 1 by default."""
        return 1

    def images_in(self, batch: Any) -> int:
        """Images in a batch of this process (for the images/s figure)."""
        return self.cfg.batch_size

    def state(self) -> dict[str, Any]:
        """Plain data stored in every checkpoint to use the model without the config (classes, preprocessing, the
        model's description)."""
        return {}

    def check_resume(self, saved: dict[str, Any]) -> None:
        """Raise one line when a checkpoint's :meth:`state` does not fit this run."""

    def parts(self, model: nn.Module) -> dict[str, nn.Module | list[nn.Module]]:
        """The model's parts whose time :func:`~.breakdown.step_breakdown` reports (none contains another); none by
        default (the step is then reported as forward, backward and optimizer only)."""
        return {}

    def rest_of_step(self, model: nn.Module) -> str:
        """What the forward and backward do outside :meth:`parts` (a few words for the breakdown's last row)."""
        return "losses and the rest"

    def stats(self, env: DistEnv) -> dict[str, float]:
        """Counters for the metrics record of each report (e.g. skipped images), summed over ranks."""
        return {}

    def describe(self) -> str:
        """One line for the start of the log: model and data."""
        return type(self).__name__

    def format_metrics(self, metrics: dict[str, float]) -> str:
        """One line for the log from :meth:`evaluate`'s results."""
        return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())

    def finish(self, model: nn.Module, run_dir: Path, env: DistEnv) -> dict[str, Any]:
        """After the last step (rank 0 writes): extra outputs such as pictures; returns entries for summary.json."""
        return {}
