"""The one training loop of the package, for every :class:`~.task.Task`.

>>> from pvtv2.classification import ClassificationTask, get_recipe
>>> result = train(ClassificationTask(get_recipe("fashion_mnist")))      # what `pvtv2 train` runs
>>> result.best, result.run_dir

A run is a sequence of optimizer steps (:mod:`.sampling` says which samples each step reads). After each step
it may evaluate (``eval_every``, else at each epoch end, and always at the end), report (one metrics record and log
line per epoch end or evaluation), and write ``last.pth`` (at each report and every ``ckpt_every`` steps);
``best.pth`` is a copy of the ``last.pth`` with the best ``task.metric``. The run directory gets ``config.json``,
``metrics.jsonl``/``.csv``, ``curves.png``, the checkpoints and ``summary.json``.

Promises, tested once for every task: a run stopped at any step (SIGKILL, Ctrl-C, ``stop_after``) and resumed
with ``resume=".../last.pth"`` ends with bit-identical weights; Ctrl-C / SIGTERM finish the step and write a
resumable checkpoint; a NaN/inf loss stops the run before it touches the weights and names the last good
checkpoint; N processes under torchrun (gloo on CPU, NCCL on CUDA) equal one process with the same global batch;
a full disk stops with one line and leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import OutOfSpace, atomic_copy
from ..errors import CheckpointError, PVTError, TrainingError
from .amp import Precision
from .checkpoint import TrainState, checkpoint_config, load_checkpoint, save_checkpoint
from .distributed import DistEnv, barrier, broadcast_object, cleanup, init_distributed, wrap_ddp
from .ema import create_ema
from .guards import InterruptGuard, Interrupted
from .hooks import Hook, default_hooks
from .loop import Stepper
from .metrics import RunDir
from .optim import create_optimizer, schedule_from_config
from .run_guard import claim_run_dir
from .sampling import StepSampler
from .task import Task

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports; ``summary.json`` holds the same."""

    run_dir: Path
    checkpoint: Path
    steps: int
    epochs: float
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    best: float | None = None  # the best value of the task's metric
    seconds: float = 0.0
    stopped: bool = False  # ended by stop_after, resumable


def setup_process(cfg: Any) -> DistEnv:
    """torchrun set-up, CPU threads (this node's cores shared between its processes), flush-to-zero, seeds."""
    import random

    import numpy as np

    env = init_distributed(cfg.device)
    if not env.is_main:  # one voice: ranks > 0 only report problems
        logging.getLogger("pvtv2").setLevel(logging.WARNING)
    if env.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(cfg.threads or max(1, cores // local))
        torch.set_flush_denormal(True)  # denormal Adam moments make CPU steps several times slower
    random.seed(cfg.seed + env.rank)
    np.random.seed((cfg.seed + env.rank) % 2**32)
    torch.manual_seed(cfg.seed + env.rank)
    return env


def resume_config(path: str | os.PathLike[str], cls: type, **changes: Any) -> Any:
    """The configuration of the run that wrote ``path``, with the changes a resume allows (run length, periods,
    processes); any other change is refused in one line, since the continuation would no longer be exact."""
    fixed = sorted(k for k, v in changes.items() if v is not None and k not in cls.RESUMABLE)
    if fixed:
        raise PVTError(f"--resume continues the run as it was configured; these cannot change: {', '.join(fixed)}")
    saved = checkpoint_config(path)
    if not saved:
        raise CheckpointError(f"{path} holds no training configuration; it cannot be resumed")
    return cls.from_dict(saved, **{k: v for k, v in changes.items() if v is not None})


def train(task: Task, *, out: str | os.PathLike[str] | None = None, resume: str | os.PathLike[str] | None = None,
          progress: bool = True, overwrite: bool = False, hooks: Sequence[Hook] = ()) -> TrainResult:
    """Train (or resume) ``task`` as its config says.

    Args:
        task: what to learn (classification, detection, segmentation, ...).
        out: run directory (default ``runs/<task>/<timestamp>``; on resume, the checkpoint's folder).
        resume: a ``last.pth`` (or ``best.pth``) to continue from exactly.
        progress: show tqdm bars (rank 0).
        overwrite: a new run may replace the run already in ``out`` (else that is refused).
        hooks: called around the steps after the run directory's own writers (:mod:`.hooks`).

    Raises:
        TrainingError: NaN/inf loss (the last good checkpoint is kept), an inconsistent set-up, ``out`` holding a
            run (without ``resume`` / ``overwrite``) or in use by another process.
        CheckpointError: a resume that does not fit, a full disk.
        Interrupted: after Ctrl-C / SIGTERM, once a resumable ``last.pth`` is written.
    """
    task.cfg.check()
    env = setup_process(task.cfg)
    try:
        path = out or (Path(resume).parent if resume else RunDir.create(None, root=f"runs/{task.name}",
                                                                        main=False).path)
        path = broadcast_object(str(path))  # rank 0's name on every rank
        with claim_run_dir(path, resume=bool(resume), overwrite=overwrite, main=env.is_main):
            return _Run(task, env, path, resume, progress, hooks).run()
    finally:
        cleanup()


def peak_lr(task: Task) -> float:
    """The run's peak learning rate: the config's ``lr``, else the linear scaling rule from the recipe's (or the
    task's) learning rate for ``base_batch`` images."""
    cfg = task.cfg
    if cfg.lr is not None:
        return cfg.lr
    base_lr = cfg.base_lr if cfg.base_lr is not None else task.default_base_lr()
    return base_lr * cfg.batch_size / cfg.base_batch


def run_optimizer(task: Task, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The task's own optimizer if it brings one, else AdamW as the released recipes use it."""
    cfg = task.cfg
    return task.build_optimizer(model, lr) or create_optimizer(
        model, lr=lr, weight_decay=cfg.weight_decay, decay_norms=cfg.decay_norms, no_decay_keys=cfg.no_decay_keys)


class _Run:
    """The state of one run (built once, then :meth:`run`)."""

    def __init__(self, task: Task, env: DistEnv, out: Any, resume: Any, progress: bool, hooks: Sequence[Hook]) -> None:
        self.task, self.cfg, self.env, self.progress = task, task.cfg, env, progress
        self.t_start = time.perf_counter()
        cfg = self.cfg
        if cfg.batch_size % env.world_size:
            raise TrainingError(f"--batch-size {cfg.batch_size} (global) is not divisible by {env.world_size} "
                                "processes")
        task.progress = progress  # the task's own bars (e.g. generating its data) follow the run's
        n = task.setup(env)
        self.sampler_args = dict(n=n, batch_size=cfg.batch_size, rank=env.rank, world_size=env.world_size,
                                 seed=cfg.seed, repeats=task.sampler_repeats())
        self.steps_per_epoch = StepSampler(**self.sampler_args).steps_per_epoch
        self.total = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * self.steps_per_epoch))

        self.model = task.build_model(env).to(env.device)
        self.ddp = wrap_ddp(self.model, env)
        self.precision = Precision.resolve(cfg.precision, env.device)
        self.lr = peak_lr(task)
        self.optimizer = run_optimizer(task, self.model, self.lr)
        self.schedule = schedule_from_config(cfg, self.optimizer, self.lr, self.total, self.steps_per_epoch)
        self.warmup = self.schedule.warmup_steps
        self.ema = create_ema(self.model, cfg.ema_decay) if cfg.ema else None
        self.stepper = Stepper(self.ddp, self.optimizer, self.schedule, self.precision,
                               clip_grad=cfg.clip_grad or None, ema=self.ema)

        self.state = TrainState(extra=task.state())
        if resume:
            self.state = load_checkpoint(resume, model=self.model, optimizer=self.optimizer, scheduler=self.schedule,
                                         scaler=self.stepper.scaler, ema=self.ema)
            task.check_resume(self.state.extra)
            if self.schedule.total_steps != self.total:  # the run length changed on resume: follow the new one
                log.info("schedule length changed from %d to %d steps", self.schedule.total_steps, self.total)
                self.schedule.total_steps, self.schedule.milestones = self.total, self._milestones()
            self.state.extra = {**self.state.extra, **task.state()}
        self.run_dir = RunDir(out, main=env.is_main)  # claimed by train() for this run
        self.resolved = {"world_size": env.world_size, "device": str(env.device), "precision": self.precision.name,
                         "lr": self.lr, "total_steps": self.total, "steps_per_epoch": self.steps_per_epoch,
                         "warmup_steps": self.warmup, "train_samples": n}
        self.config = {**cfg.to_dict(), "resolved": self.resolved}
        self.run_dir.write_config(self.config)
        self.hooks = [*default_hooks(log), *hooks]
        self.last, self.best_path = self.run_dir / "last.pth", self.run_dir / "best.pth"
        self.resumed_from = Path(resume) if resume else None
        self.saved_step = self.state.step if resume else -1
        # the clocks of the earlier parts of a resumed run, and where this part started
        self.clock_base = (self.state.run_seconds, self.state.cpu_seconds, self.t_start, time.process_time())

    def _milestones(self) -> list[int]:
        return [round(m * self.total) for m in self.cfg.milestones]

    def _clock(self, now: float | None = None) -> None:
        """The run's wall and CPU seconds so far (earlier parts of a resumed run included) into its state."""
        wall0, cpu0, t0, c0 = self.clock_base
        now = time.perf_counter() if now is None else now
        self.state.run_seconds, self.state.cpu_seconds = wall0 + now - t0, cpu0 + time.process_time() - c0

    # --- checkpoints ---
    def _save(self, state: TrainState) -> None:
        self._clock()
        bad = next((n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:  # an update with a finite loss but non-finite gradients: never save poisoned weights
            good = self.last if self.saved_step >= 0 else None
            kept = f"the last good checkpoint is {good} (resume from it with --resume, e.g. with a lower --lr or " \
                   f"--clip-grad)" if good else "no checkpoint was written yet; lower --lr or set --clip-grad"
            raise TrainingError(f"weights became non-finite ({bad}) by step {state.step}; training stopped and "
                                f"nothing was saved from it: {kept}")
        try:
            save_checkpoint(self.last, model=self.model, optimizer=self.optimizer, scheduler=self.schedule,
                            scaler=self.stepper.scaler, ema=self.ema, state=state, config=self.config)
        except OutOfSpace as e:
            raise CheckpointError(f"{e}; {self._resume_hint()}") from None
        self.saved_step = state.step
        for hook in self.hooks:
            hook.on_checkpoint(self, self.last, False)

    def _save_best(self) -> None:
        if self.env.is_main:
            try:
                atomic_copy(self.last, self.best_path)
            except OutOfSpace as e:
                raise CheckpointError(f"{e}; {self._resume_hint()}") from None
        for hook in self.hooks:
            hook.on_checkpoint(self, self.best_path, True)

    def _resume_hint(self) -> str:
        good = self.last if self.last.exists() else self.resumed_from
        if good is None:
            return "no checkpoint of this run was written yet: free some space and start it again"
        return f"the last good checkpoint {good} is intact: free some space and continue with --resume {good}"

    # --- the loop ---
    def run(self) -> TrainResult:
        task, env, cfg = self.task, self.env, self.cfg
        if env.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info("%s (%.2f M params): %d steps (%.4g epochs x %d) of global batch %d on %d process(es), "
                     "lr %.2e, %s -> %s", task.describe(), n_params / 1e6, self.total, self.total / self.steps_per_epoch,
                     self.steps_per_epoch, cfg.batch_size, env.world_size, self.lr, self.precision.name,
                     self.run_dir.path)
        for hook in self.hooks:
            hook.before_train(self)
        sampler = StepSampler(**self.sampler_args, start=self.state.step)
        batches = iter(task.train_loader(sampler, env))
        end = self.total if cfg.stop_after is None else min(self.total, cfg.stop_after)
        last_metrics: dict[str, float] = {}
        sums: dict[str, torch.Tensor] = {}
        count, images, t_report = 0, 0, time.perf_counter()
        bar = None
        self.ddp.train()
        with InterruptGuard(last_checkpoint=self.resumed_from) as guard:
            try:
                for step in range(self.state.step, end):
                    bar = bar or self._bar(step)
                    batch = next(batches)
                    loss, losses, stop = self._step(batch, guard, step)
                    done = self.state.step
                    if not stop:
                        for hook in self.hooks:
                            hook.after_step(self, loss, losses)
                    for k, v in (("loss", loss), *(losses.items() if len(losses) > 1 else ())):  # total, parts
                        sums[k] = sums.get(k, 0.0) + v.detach().double()
                    count += 1
                    images += task.images_in(batch)
                    if stop:
                        self._save(self.state)
                        msg = f"interrupted after step {done}; resumable checkpoint {self.last}: resume with " \
                              f"--resume {self.last}"
                        if env.is_main:
                            log.warning(msg)
                        raise Interrupted(msg)
                    bar.update(1)
                    if done % cfg.log_every == 0 or done == end:
                        speed = images * env.world_size / max(time.perf_counter() - t_report, 1e-9)
                        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.stepper.lr:.2e}", img_s=f"{speed:.1f}",
                                        refresh=False)
                    epoch_end = done % self.steps_per_epoch == 0
                    evaluate = (cfg.eval_every and done % cfg.eval_every == 0) or (not cfg.eval_every and epoch_end) \
                        or done == self.total
                    if epoch_end or evaluate or done == end:
                        bar.close()
                        bar = None
                    if epoch_end or evaluate:
                        last_metrics = self._report(done, sums, count, images, t_report, evaluate) or last_metrics
                        sums, count, images, t_report = {}, 0, 0, time.perf_counter()
                        guard.last_checkpoint = self.last
                    elif cfg.ckpt_every and done % cfg.ckpt_every == 0:
                        self._save(self.state)
                        guard.last_checkpoint = self.last
            finally:
                if bar is not None:
                    bar.close()
        stopped = self.state.step < self.total
        if stopped and self.saved_step != self.state.step:
            self._save(self.state)  # stop_after: resumable at exactly this step
        return self._finish(last_metrics, stopped)

    def _step(self, batch: Any, guard: InterruptGuard, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], bool]:
        """One optimizer step: losses (under autocast), the NaN / interrupt check, the update; advances the state."""
        with self.precision.autocast():
            losses = self.task.losses(self.ddp, batch, self.env)
        loss = sum(losses.values()) if losses else torch.zeros((), device=self.env.device)
        status = guard.check(loss, where=f"step {step + 1} (epoch {step // self.steps_per_epoch + 1})")
        if losses:
            self.stepper.step(loss)
        else:  # nothing to learn from this batch (every sample unreadable): keep the lr in step
            self.schedule.step()
        self.state.step = step + 1
        self.state.epoch, self.state.epoch_step = divmod(step + 1, self.steps_per_epoch)
        return loss, losses, status.stop

    def _bar(self, step: int) -> Any:
        from tqdm import tqdm

        epoch = step // self.steps_per_epoch
        epochs = math.ceil(self.total / self.steps_per_epoch)
        in_epoch = min(self.steps_per_epoch, self.total - epoch * self.steps_per_epoch)
        return tqdm(total=in_epoch, initial=step - epoch * self.steps_per_epoch, unit="step", leave=False,
                    desc=f"epoch {epoch + 1}/{epochs}", dynamic_ncols=True,
                    disable=None if self.progress and self.env.is_main else True)  # None: on a terminal only

    def _report(self, done: int, sums: dict[str, torch.Tensor], count: int, images: int, t_report: float,
                evaluate: bool) -> dict[str, float]:
        """One metrics record (train losses since the last report, evaluation, counters), last.pth, best.pth."""
        from .distributed import reduce_dict

        task, env = self.task, self.env
        train_seconds = time.perf_counter() - t_report
        train = reduce_dict({f"train_{k}": float(v) / max(count, 1) for k, v in sums.items()}, env.device)
        record: dict[str, Any] = {"epoch": done / self.steps_per_epoch, "step": done, "lr": self.stepper.lr, **train,
                                  "train_seconds": train_seconds,
                                  "train_img_s": images * env.world_size / max(train_seconds, 1e-9)}
        metrics: dict[str, float] = {}
        if evaluate:
            metrics = task.evaluate(self.model, env)
            if self.ema is not None:
                metrics.update({f"{k}_ema": v for k, v in task.evaluate(self.ema.module, env).items()})
            record.update(metrics)
            self.ddp.train()
        record.update(task.stats(env))
        now = time.perf_counter()
        record.update(seconds=now - t_report, elapsed_seconds=now - self.t_start)
        self._clock(now)
        record.update(run_minutes=self.state.run_seconds / 60, cpu_minutes=self.state.cpu_seconds / 60)
        better = (lambda new, old: new > old) if task.higher_is_better else (lambda new, old: new < old)
        improved = bool(metrics) and task.metric in metrics and (
            self.state.best is None or better(metrics[task.metric], self.state.best))
        if improved:
            self.state.best = metrics[task.metric]
        self._save(self.state)
        if improved:
            self._save_best()
        for hook in self.hooks:
            hook.after_report(self, record, metrics)
        return metrics

    def _finish(self, metrics: dict[str, float], stopped: bool) -> TrainResult:
        task, env = self.task, self.env
        extra = {} if stopped else task.finish(self.model, self.run_dir.path, env)
        seconds = time.perf_counter() - self.t_start
        state = self.state
        summary = {"task": task.name, "metric": task.metric, "metrics": metrics, "best": state.best,
                   "steps": state.step, "epochs": state.step / self.steps_per_epoch, "seconds": seconds,
                   "checkpoint": str(self.last), "stopped": stopped, **extra}
        for hook in self.hooks:
            hook.after_train(self, summary)
        barrier()
        if env.is_main:
            if stopped:
                log.info("stopped after %d steps as asked; continue with --resume %s", state.step, self.last)
            else:
                log.info("done in %.1f min: %s; run directory %s", seconds / 60,
                         task.format_metrics(metrics) if metrics else "no evaluation data", self.run_dir.path)
        return TrainResult(self.run_dir.path, self.last, state.step, state.step / self.steps_per_epoch, metrics,
                           state.best, seconds, stopped)
