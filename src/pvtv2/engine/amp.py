"""Mixed precision: fp16 (with a GradScaler) or bf16 autocast on CUDA, bf16 autocast on CPU, or plain fp32.

How a task uses it::

    amp = Precision.resolve(args.precision, device)   # "auto": bf16 if the GPU supports it, else fp16; CPU: fp32
    scaler = amp.grad_scaler()                         # active only for fp16; save/load it in checkpoints
    with amp.autocast():
        loss = criterion(model(x), y)
    scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from ..errors import TrainingError
from ..precision import native

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision for one device."""

    name: str  # "fp32", "fp16" or "bf16"
    device: torch.device

    @classmethod
    def resolve(cls, name: str, device: torch.device | str) -> Precision:
        """``"auto"``: bf16 on CUDA GPUs that support it, else fp16 on CUDA; fp32 on CPU (bf16 only when asked).
        ``"native"``: as ``"auto"`` on CUDA; on a CPU bf16 where it has native bf16 (avx512_bf16 / amx_bf16), else fp32.

        Raises:
            TrainingError: fp16 asked for on CPU (no fp16 autocast training there), or an unknown name.
        """
        device = torch.device(device)
        if name in ("auto", "native"):
            if device.type == "cuda":
                name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                name = "bf16" if name == "native" and native("bf16", device) else "fp32"
        if name not in _DTYPES:
            raise TrainingError(f"unknown precision {name!r}; use auto, native, fp32, bf16 or fp16")
        if name == "fp16" and device.type != "cuda":
            raise TrainingError("fp16 mixed precision needs a CUDA device; on CPU use --precision bf16 or fp32")
        if name == "bf16" and device.type == "cpu" and not native("bf16", device):
            log.warning("this CPU has no native bf16 (avx512_bf16 / amx_bf16): bf16 autocast is emulated and "
                        "usually slower than fp32 here")
        return cls(name, device)

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """``torch.autocast`` for this device and dtype (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is enabled for fp16 only (its state_dict is empty otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")
