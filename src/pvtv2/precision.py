"""Reduced-precision inference: which precisions a device runs natively, and a model prepared for one.

>>> precision.resolve("bf16", "cpu")        # "bf16" on a CPU with native bf16, else "fp32" (one log line)
>>> fast = precision.to_reduced(model, torch.bfloat16)   # a converted copy for the fused CPU kernels
>>> with precision.autocast("bf16", device):             # any model (detectors, segmentors): autocast
...     out = detector(images)
>>> detector.backbone = precision.autocast_module(detector.backbone, "bf16", device)  # a part only

On CPU, bf16 pays off only where the CPU multiplies bf16 natively: x86 ``avx512_bf16`` (AMD Zen 4 and later, Intel
Cooper Lake) or ``amx_bf16`` (Intel Sapphire Rapids and later), Arm's ``bf16`` extension. Elsewhere oneDNN emulates
it through fp32 and is 2-5x *slower* than fp32 (measured on an AVX-512 Xeon without them, oneDNN matmuls of PVT
v2-B0/B2 shapes, 1 thread), so :func:`resolve` falls back to fp32 and says so once. fp16 on CPU needs
``avx512_fp16``/``amx_fp16`` (x86) or ``asimdhp`` (Arm). On CUDA, bf16 needs compute capability 8.0+, fp16 runs
everywhere. ``PVTV2_FORCE_REDUCED=1`` treats every precision as native (to test or time the emulated kernels).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
from typing import Any

import torch
from torch import nn

from .errors import PVTError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU feature flags (Linux /proc/cpuinfo, x86 "flags" or Arm "Features") that give native arithmetic
_CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16", "bf16"), "fp16": ("avx512_fp16", "amx_fp16", "asimdhp")}
log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where ``/proc/cpuinfo`` is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def _onednn_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN can run ``dtype`` kernels at all here (natively or emulated)."""
    if not torch.backends.mkldnn.is_available():
        return False
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    return bool(getattr(torch.ops.mkldnn, check)())


def native(precision: str, device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes in ``precision`` natively (fast), not by emulation.

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: ``"cpu"``, ``"cuda"``, ...
    """
    check(precision)
    dev = torch.device(device)
    if precision == "fp32":
        return True
    if os.environ.get("PVTV2_FORCE_REDUCED", "0") == "1":
        return dev.type != "cpu" or _onednn_supports(DTYPES[precision])
    if dev.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return bool(cpu_flags() & set(_CPU_FLAGS[precision])) and _onednn_supports(DTYPES[precision])
    return False


def check(precision: str) -> str:
    """``precision`` if it is known, else a :class:`PVTError` naming the choices."""
    if precision not in PRECISIONS:
        raise PVTError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def resolve(precision: str, device: str | torch.device = "cpu") -> str:
    """The precision to run: ``precision`` where ``device`` has it natively, else ``"fp32"`` (logged once)."""
    dev = torch.device(device)
    if native(precision, dev):
        return precision
    key = (precision, dev.type)
    if key not in _warned:
        _warned.add(key)
        what = "this CPU has no native bf16 (avx512_bf16/amx_bf16)" if dev.type == "cpu" and precision == "bf16" \
            else f"{dev.type} has no native {precision}"
        log.warning("%s: running fp32 instead (PVTV2_FORCE_REDUCED=1 runs the emulated kernels anyway)", what)
    return "fp32"


def autocast(precision: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in ``precision`` on ``device`` after :func:`resolve` (a no-op for fp32).

    For models without a converted path (detectors, segmentors): matmuls and convolutions run in the reduced type,
    reductions (LayerNorm, softmax, losses) in fp32, as autocast's op lists decide.
    """
    dev = torch.device(device)
    name = resolve(check(precision), dev)
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=DTYPES[name])


def _float_outputs(out: Any) -> Any:
    """Every floating tensor in ``out`` (a tensor, or a list/tuple/dict of them) as float32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return type(out)((k, _float_outputs(v)) for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return type(out)(_float_outputs(o) for o in out)
    return out


def autocast_module(module: nn.Module, precision: str, device: str | torch.device = "cpu") -> nn.Module:
    """``module`` (any part of a model: a detector's backbone and FPN, a whole segmentor) run under autocast in
    ``precision`` with float32 outputs, or ``module`` itself where that resolves to fp32 (:func:`resolve`).

    For inference: the wrapper's state-dict keys gain a ``module.`` prefix. Box decoding and other coordinate
    arithmetic should stay outside it (bf16 spaces values near 1000 px 8 px apart).
    """
    dev = torch.device(device)
    name = resolve(check(precision), dev)
    return module if name == "fp32" else Autocast(module, dev.type, DTYPES[name])


class Autocast(nn.Module):
    """``module`` run under ``torch.autocast(device_type, dtype)``; float32 in, float32 out.

    Args:
        module: any module returning tensors (alone, or in lists, tuples or dicts).
        device_type: ``"cuda"`` or ``"cpu"``.
        dtype: ``torch.float16`` or ``torch.bfloat16``.
    """

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, x: torch.Tensor) -> Any:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            out = self.module(x)
        return _float_outputs(out)


class Converted(nn.Module):
    """A model whose weights are stored in a reduced type: casts the float32 images in and the outputs back.

    Args:
        module: the converted model (see :func:`to_reduced`).
        dtype: its compute type.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x: torch.Tensor) -> Any:
        return _float_outputs(self.module(x.to(self.dtype)))


def to_reduced(model: nn.Module, dtype: torch.dtype, *, pack: bool = True, norms_fp32: bool = True) -> nn.Module:
    """A copy of a PVT model for inference in ``dtype`` (``model`` itself is left as it is).

    Matmul and convolution weights (and v1's position embeddings and class token) are converted once; LayerNorm
    parameters and the classification head stay float32, so the LayerNorm statistics, the pooled mean and the
    logits are computed in float32 (the fused path keeps SDPA's softmax in float32 as well). On CPU the linear
    weights are also packed once into oneDNN's blocked layout (``pack``), which the fused kernels then use as is
    instead of re-ordering them on every call.

    Args:
        model: a PVT classifier or backbone (or any module: then everything but LayerNorms is converted).
        dtype: ``torch.bfloat16`` or ``torch.float16``.
        pack: pre-pack the linear weights for oneDNN (CPU only).
        norms_fp32: keep LayerNorm parameters in float32 (PyTorch's CPU and CUDA LayerNorm take a reduced input with
            float32 parameters; ONNX's wants one type, and keeps its statistics in float32 by itself).
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise PVTError(f"to_reduced converts to bfloat16 or float16, not {dtype}")
    reduced = copy.deepcopy(model).eval().to(dtype)
    for m in reduced.modules():
        if isinstance(m, nn.LayerNorm) and norms_fp32:
            m.float()
    head = getattr(reduced, "head", None)
    if isinstance(head, nn.Linear):
        head.float()
    p = next(reduced.parameters(), None)
    if pack and p is not None and p.device.type == "cpu" and _onednn_supports(dtype):
        for m in reduced.modules():
            if isinstance(m, nn.Linear) and m is not head:
                # (out, in) weight -> oneDNN's blocked layout for this CPU (opaque tensor, not in the state dict)
                m.packed_weight = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), None)
    return reduced
