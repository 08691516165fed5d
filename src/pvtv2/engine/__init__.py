"""The task-agnostic training engine shared by classification, detection and segmentation.

Pieces (each module's docstring shows how a task uses it):

- :mod:`.distributed`: torchrun set-up (gloo on CPU, NCCL on CUDA), rank/device, DDP wrapping, reductions.
- :mod:`.checkpoint`: atomic, weights-only-loadable training checkpoints with RNG states; exact resume.
- :mod:`.guards`: NaN/inf loss stops the run keeping the last good checkpoint; Ctrl-C/SIGTERM -> resumable save.
- :mod:`.metrics`: run directory, config.json, metrics.jsonl/.csv, curves.png.
- :mod:`.optim`: AdamW without decay on norms/biases/embeddings, lr scaling by total batch, warm-up + cosine/poly/step.
- :mod:`.amp`, :mod:`.ema`, :mod:`.loop`: precision, EMA, and the shared optimizer step.
"""

from .amp import Precision
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
from .loop import Stepper
from .metrics import MetricsLogger, RunDir, plot_curves
from .optim import LRSchedule, create_optimizer, param_groups, scale_lr

__all__ = [
    "DistEnv",
    "InterruptGuard",
    "Interrupted",
    "LRSchedule",
    "MetricsLogger",
    "Precision",
    "RunDir",
    "Stepper",
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
    "param_groups",
    "plot_curves",
    "read_train_checkpoint",
    "reduce_dict",
    "reduce_mean",
    "reduce_sum",
    "restore_rng_state",
    "save_checkpoint",
    "scale_lr",
    "unwrap_model",
    "wrap_ddp",
]
