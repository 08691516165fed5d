"""The task-agnostic training engine: one trainer and the pieces it is made of, for every task.

- :mod:`.trainer`: :func:`train` runs any :class:`~.task.Task` (classification, detection, segmentation).
- :mod:`.task`: the task protocol; :mod:`.config`: :class:`TrainConfig`, the fields every run shares.
- :mod:`.sampling`: which samples each step reads, per rank, with which augmentation seed (exact resume).

Pieces (each module's docstring shows how it is used):

- :mod:`.distributed`: torchrun set-up (gloo on CPU, NCCL on CUDA), rank/device, DDP wrapping, reductions.
- :mod:`.checkpoint`: atomic, weights-only-loadable training checkpoints with RNG states; exact resume.
- :mod:`.guards`: NaN/inf loss stops the run keeping the last good checkpoint; Ctrl-C/SIGTERM -> resumable save.
- :mod:`.metrics`: run directory, config.json, metrics.jsonl/.csv, curves.png.
- :mod:`.hooks`: what runs around the steps (the run directory's writers, and any of the caller's).
- :mod:`.run_guard`: one run per run directory (no clobbering, a lock while training).
- :mod:`.optim`: AdamW without decay on norms/biases/embeddings, lr scaling by total batch, warm-up + cosine/poly/step.
- :mod:`.amp`, :mod:`.ema`, :mod:`.loop`: precision, EMA, and the shared optimizer step.
"""

from .amp import Precision
from .config import BackboneConfig, TrainConfig, option
from .checkpoint import (
    TrainState,
    capture_rng_state,
    checkpoint_config,
    load_checkpoint,
    read_train_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .distributed import (
    DistEnv,
    all_gather_object,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    is_main_process,
    reduce_dict,
    reduce_mean,
    reduce_sum,
    unwrap_model,
    wrap_ddp,
)
from .ema import create_ema
from .guards import InterruptGuard, Interrupted, check_finite
from .hooks import Hook
from .loop import Stepper
from .metrics import MetricsLogger, RunDir, plot_curves
from .optim import LRSchedule, create_optimizer, param_groups, scale_lr
from .sampling import SeededDataset, StepSampler, seeded, shard
from .task import Task
from .trainer import TrainResult, resume_config, train

__all__ = [
    "DistEnv",
    "Hook",
    "InterruptGuard",
    "Interrupted",
    "LRSchedule",
    "MetricsLogger",
    "Precision",
    "RunDir",
    "SeededDataset",
    "StepSampler",
    "Stepper",
    "Task",
    "BackboneConfig",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "capture_rng_state",
    "check_finite",
    "checkpoint_config",
    "cleanup",
    "create_ema",
    "create_optimizer",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "option",
    "param_groups",
    "plot_curves",
    "read_train_checkpoint",
    "reduce_dict",
    "reduce_mean",
    "reduce_sum",
    "restore_rng_state",
    "resume_config",
    "save_checkpoint",
    "scale_lr",
    "seeded",
    "shard",
    "train",
    "unwrap_model",
    "wrap_ddp",
]
