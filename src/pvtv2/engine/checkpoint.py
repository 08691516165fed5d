"""Training checkpoints that survive faults and resume exactly.

A checkpoint is one ``torch.save`` file of plain containers and tensors (it loads with
``torch.load(weights_only=True)``)::

    {"format": "pvtv2-train", "version": 1,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "ema": ...,
     "rng": [per-rank {"python", "numpy", "torch", "cuda"}],
     "epoch": E, "epoch_step": S, "step": G,      # resume at batch S of epoch E (G optimizer steps so far)
     "config": {...},  "extra": {...}}

``pvtv2.load_weights(model, "last.pth")`` reads the ``model`` entry, so a training checkpoint is also a weights file.

How a task uses it (call on EVERY rank: the RNG states are gathered from all ranks, and only rank 0 writes)::

    state = TrainState()
    if args.resume:
        state = load_checkpoint(args.resume, model=model, optimizer=opt, scheduler=sched, scaler=scaler, ema=ema)
    for epoch in range(state.epoch, epochs):
        ...  # skip the first state.epoch_step batches of a resumed epoch
        save_checkpoint(run / "last.pth", model=model, ..., state=TrainState(epoch + 1, 0, step), config=cfg)

Writes are atomic (temporary file then rename): a kill at any moment leaves the previous file intact.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_write
from ..errors import CheckpointError, TrainingError
from ..weights import read_checkpoint
from .config import plain
from .distributed import all_gather_object, get_rank, get_world_size, is_main_process, unwrap_model

log = logging.getLogger(__name__)

FORMAT = "pvtv2-train"
VERSION = 1


@dataclass
class TrainState:
    """Where a run is: resume at batch ``epoch_step`` of ``epoch`` after ``step`` optimizer steps in all."""

    epoch: int = 0
    epoch_step: int = 0
    step: int = 0
    best: float | None = None  # best validation metric so far (for the ``best`` checkpoint)
    run_seconds: float = 0.0  # wall time of the run so far, over every resumed part
    cpu_seconds: float = 0.0  # CPU time of the training process so far (all its threads; not data-loader workers)
    extra: dict[str, Any] = field(default_factory=dict)  # task data: class names, metric name, ...


# --- RNG states -------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA generator states, as weights-only-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        # ('MT19937', uint32[624], pos, has_gauss, cached_gaussian): the array becomes an int64 tensor
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_py, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _to_lists(v: Any) -> Any:
    return [_to_lists(x) for x in v] if isinstance(v, tuple) else v


def _to_tuples(v: Any) -> Any:
    return tuple(_to_tuples(x) for x in v) if isinstance(v, list) else v


# --- save / load ------------------------------------------------------------------------------------------------
def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    state: TrainState,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: nn.Module | None = None,
    config: dict[str, Any] | None = None,
) -> Path | None:
    """Write a resumable checkpoint atomically. Call on every rank; rank 0 writes and returns the path.

    Args:
        path: destination file (parents are created).
        model: the model (DDP / compiled wrappers are unwrapped).
        state: epoch, step and task data to resume from.
        optimizer, scheduler, scaler, ema: anything with ``state_dict()``; ``None`` is stored as ``None``.
        config: the run's resolved configuration (plain JSON-like values).
    """
    rng = all_gather_object(capture_rng_state())  # collective: every rank must call
    if not is_main_process():
        return None
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng,
        **{k: v for k, v in asdict(state).items()},
        "config": plain(config or {}),
    }
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp), size_hint=_tensor_bytes(ckpt))


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested container: about the size of its ``torch.save`` file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def read_train_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint (weights only) and check that it is one."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a weights file, not a pvtv2 training checkpoint (no optimizer/epoch state); "
            "to start from its weights use --weights instead of --resume"
        )
    return ckpt


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: nn.Module | None = None,
    restore_rng: bool = True,
) -> TrainState:
    """Restore everything :func:`save_checkpoint` wrote into the given objects; return the :class:`TrainState`.

    Each rank restores its own RNG state when the number of processes is the same as when the checkpoint was
    written (otherwise the generators keep their seeded state and a warning says the run is not bit-exact).
    """
    ckpt = read_train_checkpoint(path)
    try:
        unwrap_model(model).load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit this model ({first}); resume with the run's own --model") from None
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler), ("ema", ema)):
        if obj is None:
            continue
        if ckpt.get(name) is None:
            if name == "ema":
                log.warning("%s has no EMA weights; the EMA starts again from the model", path)
                continue
            raise CheckpointError(f"{path} holds no {name} state; it cannot be resumed exactly")
        try:
            obj.load_state_dict(ckpt[name])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainingError(f"{path}: the {name} state does not match this run ({e}); resume with the same config")
    rng = ckpt.get("rng") or []
    if restore_rng:
        if len(rng) == get_world_size():
            restore_rng_state(rng[get_rank()])
        else:
            log.warning("%s was written by %d processes, this run has %d: RNG streams are re-seeded, "
                        "so the resumed run is not bit-identical", path, len(rng), get_world_size())
    return TrainState(
        epoch=int(ckpt["epoch"]),
        epoch_step=int(ckpt["epoch_step"]),
        step=int(ckpt["step"]),
        best=ckpt.get("best"),
        run_seconds=float(ckpt.get("run_seconds") or 0.0),  # absent in checkpoints written before 2026-12-04
        cpu_seconds=float(ckpt.get("cpu_seconds") or 0.0),
        extra=dict(ckpt.get("extra") or {}),
    )


def checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The resolved configuration a training checkpoint was written with."""
    return dict(read_train_checkpoint(path).get("config") or {})
