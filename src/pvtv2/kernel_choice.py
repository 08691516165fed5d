"""CPU inference kernels chosen by measurement on the machine at hand, per model and input shape.

The fused kernels of :mod:`pvtv2.layers.fused` (oneDNN post-ops, the batch run a few images at a time) were tuned on
one CPU; on another the plain path or the whole batch at once can be as fast or faster. :class:`MeasuredKernels`
times the candidates on the first batch of each new shape (one warm-up, then rounds alternating between them; the
median of each), runs the fastest from then on (plain unless a fused one is 5% faster), and keeps the choice on disk
(``<cache>/kernels/<machine>.json``, :func:`pvtv2._io.cache_root`), keyed by the CPU model and flags, the thread
count and the torch version, so a later process on the same machine does not measure again. The candidates compute
the same function (results equal up to float rounding), so the choice changes speed only.

``PVTV2_FUSED=0`` (or ``with fused_kernels(False):``) still means plain everywhere, unmeasured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_write_text, cache_root
from .layers import fused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelSetting:
    """One way to run the blocks on CPU: fused kernels or not, and the batch chunk's cache budget (None: default)."""

    fused: bool
    chunk_bytes: int | None = None

    def active(self) -> Any:
        return fused.fused_kernels(self.fused, self.chunk_bytes)


CANDIDATES: dict[str, KernelSetting] = {
    "fused": KernelSetting(True),  # oneDNN post-ops, a few images at a time (the cache budget of batch_chunk)
    "fused-whole-batch": KernelSetting(True, fused.WHOLE_BATCH),  # oneDNN post-ops on the whole batch
    "plain": KernelSetting(False),  # PyTorch's own ops
}
ROUNDS = 3  # timed runs of each candidate (after one warm-up each)
# a fused candidate must beat plain by this much to be chosen: three first-use rounds of candidates within a few
# percent of each other pick at random, and the plain path is the reference one
MARGIN = 0.05
MAX_SHAPES = 8  # shapes measured per runner; later new shapes run the default "fused" unmeasured


def _cpu() -> dict[str, str]:
    """The CPU's model name and flags (Linux /proc/cpuinfo; elsewhere the platform's processor string)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": ""}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {"model": fields.get("model name", platform.machine()), "flags": fields.get("flags", "")}


def machine_key() -> dict[str, Any]:
    """What a measured choice depends on besides the model and shape."""
    cpu = _cpu()
    return {"cpu": cpu["model"], "flags_sha1": hashlib.sha1(cpu["flags"].encode()).hexdigest()[:12],
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def _cache_file() -> Path:
    digest = hashlib.sha1(json.dumps(machine_key(), sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "kernels" / f"{digest}.json"


def _model_key(module: nn.Module) -> str:
    """The module's architecture as the shapes and types of its parameters (equal models share measurements)."""
    desc = [type(module).__name__] + [f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in module.named_parameters()]
    desc += [f"{n}:{tuple(b.shape)}:{b.dtype}" for n, b in module.named_buffers()]
    return hashlib.sha1("\n".join(desc).encode()).hexdigest()[:16]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("choices", {}) if isinstance(data, dict) else {}


def _remember(path: Path, key: str, record: dict[str, Any]) -> None:
    """Add one choice to the machine's file (read again first: another process may have added its own)."""
    choices = _read(path)
    choices[key] = record
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"machine": machine_key(), "choices": choices}, indent=1, sort_keys=True))
    except OSError as e:  # a read-only cache costs a measurement per process, nothing else
        log.debug("kernel choice not kept (%s)", e)


def measure(module: nn.Module, x: torch.Tensor, rounds: int = ROUNDS) -> dict[str, float]:
    """Median milliseconds of ``module(x)`` under each candidate setting (autograd off)."""
    times: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    with torch.inference_mode():
        for setting in CANDIDATES.values():  # warm-up: first-call allocations and oneDNN primitive creation
            with setting.active():
                module(x)
        for _ in range(rounds):  # alternating, so that a slow moment of the machine hits every candidate alike
            for name, setting in CANDIDATES.items():
                with setting.active():
                    t = time.perf_counter()
                    module(x)
                    times[name].append((time.perf_counter() - t) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def pick(ms: dict[str, float]) -> str:
    """The fastest candidate of the measured milliseconds ``ms``, or plain unless one is :data:`MARGIN` faster."""
    fastest = min(ms, key=ms.__getitem__)
    return fastest if ms[fastest] <= (1 - MARGIN) * ms["plain"] else "plain"


class MeasuredKernels(nn.Module):
    """``module`` run on CPU with the kernel setting measured fastest for each input shape (see the module doc).

    Args:
        module: the model (in eval mode; called without autograd).
        cache: keep and reuse choices on disk (False: measure in each process).
    """

    def __init__(self, module: nn.Module, cache: bool = True) -> None:
        super().__init__()
        self.module = module
        self.cache = cache
        self.choices: dict[tuple[Any, ...], str] = {}  # (shape, dtype) -> candidate name
        self._model = _model_key(module)

    def choice(self, x: torch.Tensor) -> str:
        """The candidate for ``x``'s shape: remembered, read from disk, or measured now."""
        shape = (tuple(x.shape), str(x.dtype))
        if shape in self.choices:
            return self.choices[shape]
        if len(self.choices) >= MAX_SHAPES:
            return "fused"
        key = f"{self._model}:{'x'.join(map(str, x.shape))}:{x.dtype}"
        path = _cache_file()
        record = _read(path).get(key) if self.cache else None
        if not record or record.get("choice") not in CANDIDATES:
            ms = measure(self.module, x)
            record = {"choice": pick(ms), "ms": {k: round(v, 3) for k, v in ms.items()}}
            log.info("kernels for %s: %s (%s ms)", key, record["choice"], record["ms"])
            if self.cache:
                _remember(path, key, record)
        self.choices[shape] = record["choice"]
        return record["choice"]

    def forward(self, x: torch.Tensor) -> Any:
        if x.device.type != "cpu" or not fused.enabled() or torch.is_grad_enabled():
            return self.module(x)
        with CANDIDATES[self.choice(x)].active():
            return self.module(x)
