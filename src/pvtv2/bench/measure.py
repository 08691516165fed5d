"""Measuring tools of the benchmark: interleaved timing, the machine's matmul roofline, peak memory, FLOPs."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..precision import native
from ..runtime import release_free_memory, tune_cpu_allocator


@dataclass
class Timing:
    """Seconds per call of one path over the interleaved rounds."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> tuple[float, float]:
        """(min, max) seconds."""
        return min(self.seconds), max(self.seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device, prime: bool = True
) -> dict[str, Timing]:
    """Time every call once per round, round after round, so that all paths see the same machine load.

    Args:
        calls: name -> zero-argument function doing one unit of work (a batch).
        repeats: timed rounds; report medians over them.
        warmup: untimed rounds first (allocator, caches, lazy initialisation, JIT).
        device: synchronised around each call on CUDA.
        prime: run each call once, untimed, right before its timed call, so that it finds its own weights in
            cache as it would in a serving loop rather than the previous path's (matters at batch 1).
    """
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    out = {name: Timing() for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            if prime:
                fn()
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            out[name].seconds.append(time.perf_counter() - t)
    return out


def gemm_calls(n: int = 2048, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> dict[str, tuple[Callable[[], object], float]]:
    """Square matmuls in ``dtype`` to time beside the models, with their FLOPs (``2 n^3``): the machine's roofline.

    Both BLAS back-ends PyTorch has on CPU are measured (``torch.mm`` goes to MKL/OpenBLAS in float32 and to oneDNN
    in bf16, ``mkldnn`` to oneDNN directly, which can be much faster, e.g. than MKL on AMD CPUs); the roofline is the
    faster of the two. Names: ``sgemm``/``sgemm-onednn`` in float32, ``bf16gemm``/``bf16gemm-onednn`` in bf16.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    prefix = {torch.float32: "sgemm", torch.bfloat16: "bf16gemm", torch.float16: "hgemm"}[dtype]
    calls: dict[str, tuple[Callable[[], object], float]] = {prefix: ((lambda: torch.mm(a, b)), 2.0 * n**3)}
    if torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available():
        bt = b.t().contiguous()
        onednn = torch.ops.mkldnn._linear_pointwise.default
        calls[f"{prefix}-onednn"] = ((lambda: onednn(a, bt, None, "none", [], "")), 2.0 * n**3)
    return calls


# --- peak memory ---------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def exact_rss_accounting() -> bool:
    """Make freed memory leave the process at once (glibc: fixed 128 KiB mmap threshold, no trim threshold), so that
    the resident set measures live tensors. Call after the timings: it costs page faults on every large allocation."""
    return tune_cpu_allocator(mmap_threshold=128 * 1024, trim_threshold=0)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Memory one call of ``fn`` needs on top of what is already allocated, in MB (None if unmeasurable).

    CUDA: ``torch.cuda.max_memory_allocated`` over the call. CPU: the rise of the process's peak resident set over
    the call (Linux; exact after :func:`exact_rss_accounting`), which also sees memory outside PyTorch's allocator,
    except what an allocator keeps between calls (onnxruntime's arena is counted only where it grows).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    release_free_memory()  # memory freed by earlier calls would otherwise be re-used unseen
    before = _status_kib("VmRSS")
    if before is None or not _reset_peak_rss():
        return None
    fn()
    peak = _status_kib("VmHWM")
    return None if peak is None else max(0.0, (peak - before) / 1024)


# --- work per image ------------------------------------------------------------------------------------------
def gmacs(model: nn.Module, size: tuple[int, int]) -> float:
    """Multiply-accumulates (G) of one image, in the paper's convention when :mod:`pvtv2.analysis` is present."""
    try:
        from ..analysis import complexity

        return complexity(model, size).gflops
    except ImportError:
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, 3, *size, device=next(model.parameters()).device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(x)
        return counter.get_total_flops() / 2e9


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": native("bf16", "cpu"),  # else our bf16 paths run fp32 (pvtv2.precision)
        "force_reduced": os.environ.get("PVTV2_FORCE_REDUCED") == "1",
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    for mod in ("timm", "transformers", "onnxruntime", "openvino"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info
