"""One process per device under ``torchrun``: set-up from its environment variables, and the few collectives a
training loop needs.

How a task uses it::

    dist_env = init_distributed()              # reads RANK/WORLD_SIZE/LOCAL_RANK; single process without them
    model.to(dist_env.device)
    model = wrap_ddp(model, dist_env)            # DistributedDataParallel when world_size > 1, else unchanged
    ...
    loss_avg = reduce_mean(loss.detach())        # the same number on every rank
    if dist_env.is_main: write_files()           # only rank 0 writes
    barrier()
    cleanup()

Backend: NCCL when the device is CUDA, gloo on CPU. Multi-node runs use torchrun's rendezvous (``--nnodes``,
``--rdzv-endpoint``); nothing here depends on the node count.
"""

from __future__ import annotations

import datetime
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank among ``world_size`` processes and the device it drives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``None``/``"auto"``: this process's CUDA device if there is one, else CPU; ``"cuda"`` gets ``:local_rank``."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> DistEnv:
    """Initialise the process group from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; without them (plain ``python``/``pvtv2``) return a single-process :class:`DistEnv`.

    Args:
        device: ``"auto"`` (default), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; CUDA ranks use ``cuda:LOCAL_RANK``.
        timeout_s: collective timeout.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
        log.debug("rank %d/%d on %s (%s)", rank, world_size, dev, backend)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def wrap_ddp(model: nn.Module, env: DistEnv, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` when there are several processes, else ``model`` itself."""
    if not env.distributed:
        return model
    # Depth-wise conv weights (C, 1, 3, 3) get equivalent but differently-strided grads: harmless, silence it.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **kwargs)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the only one that writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_dist():
        dist.barrier()


def reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a copy on ``t``'s device; ``t`` itself is unchanged). NCCL reduces CUDA tensors
    only: a CPU tensor goes through the GPU there."""
    out = t.detach().clone()
    if is_dist():
        nccl_cpu = dist.get_backend() == "nccl" and out.device.type != "cuda"
        work = out.cuda() if nccl_cpu else out
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        out = work.to(t.device) if nccl_cpu else work
    return out


def reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks."""
    return reduce_sum(t) / get_world_size()


def reduce_dict(values: dict[str, float], device: torch.device | None = None, average: bool = True) -> dict[str, float]:
    """Reduce a dict of scalars over ranks in one collective (mean, or sum with ``average=False``)."""
    if not is_dist():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    t = reduce_mean(t) if average else reduce_sum(t)
    return dict(zip(keys, t.tolist()))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. the run directory name chosen by rank 0)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (e.g. per-rank predictions for evaluation)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if is_dist():
        dist.destroy_process_group()
