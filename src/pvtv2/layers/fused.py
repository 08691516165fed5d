"""Fused CPU inference kernels: bias, activation and residual add done inside oneDNN's matmul and convolution.

On CPU, PVT's small-channel layers are memory-bound: a plain ``x + fc2(h)`` writes the bias into the output, runs the
matmul, then reads two tensors again for the residual add; ``gelu(dwconv(h))`` reads and writes the widest tensor of
the block twice. oneDNN's post-ops (the kernels ``torch.compile`` uses on CPU) do the same arithmetic in one pass.

The fused path runs only where it cannot change behaviour: CPU float32, autograd off (``torch.no_grad`` /
``torch.inference_mode``), module in eval mode, not while a graph is being traced or compiled (the exporters and
inductor see the plain ops). Results equal the plain path up to float rounding (summation order). Switch it off with
``PVTV2_FUSED=0`` or ``with fused_kernels(False):``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_ENABLED = os.environ.get("PVTV2_FUSED", "1") != "0"
_CHUNK_BYTES = int(os.environ.get("PVTV2_CHUNK_BYTES", 8 << 20))
_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def tracing() -> bool:
    """True while torch.compile / torch.export / the ONNX exporter / jit tracing captures the graph."""
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


@contextmanager
def fused_kernels(enabled: bool = True) -> Iterator[None]:
    """Turn the fused CPU inference kernels on or off inside a ``with`` block (to compare or debug)."""
    global _ENABLED
    before, _ENABLED = _ENABLED, enabled
    try:
        yield
    finally:
        _ENABLED = before


def use_fused(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether ``module`` may run its fused inference kernels on ``x``."""
    return (
        _ENABLED
        and _MKLDNN
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not module.training
        and not torch.is_grad_enabled()
        and not tracing()
    )


def linear(x: torch.Tensor, layer: nn.Linear, act: str = "none", residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(layer(x))`` (act: ``"none"`` or ``"relu"``), or ``residual + layer(x)``, in one oneDNN matmul."""
    x = x.contiguous()
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise(x, residual.contiguous(), layer.weight, layer.bias, "add")
    return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, act, [], "")


def conv_gelu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``gelu(conv(x))`` (exact erf GELU) in one oneDNN convolution; keeps ``x``'s channels_last layout."""
    if isinstance(conv.padding, str):  # "same"/"valid": let PyTorch resolve the padding
        return F.gelu(conv(x))
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        "gelu", [], "none",
    )


def batch_chunk(x: torch.Tensor, width: int) -> int:
    """Images per chunk so that one chunk's widest activation (``width`` channels on ``x``'s grid) fits in cache.

    The blocks are memory-bound at large batches: running them on a few images at a time keeps the FFN's hidden
    tensor in the last-level cache between fc1, the depth-wise conv and fc2. Each image goes through the same
    arithmetic as in one big batch (results equal up to rounding: a matmul may block fewer rows differently).
    """
    per_image = x[0].numel() // x.shape[-1] * width * x.element_size()  # (H, W, width) bytes
    return max(1, _CHUNK_BYTES // max(per_image, 1))
