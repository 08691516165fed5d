"""Fused CPU inference kernels: bias, activation and residual add done inside oneDNN's matmul and convolution.

On CPU, PVT's small-channel layers are memory-bound: a plain ``x + fc2(h)`` writes the bias into the output, runs the
matmul, then reads two tensors again for the residual add; ``gelu(dwconv(h))`` reads and writes the widest tensor of
the block twice. oneDNN's post-ops (the kernels ``torch.compile`` uses on CPU) do the same arithmetic in one pass.

The fused path runs only where it cannot change behaviour: CPU float32 (or bfloat16/float16 activations of a model
converted by :func:`pvtv2.precision.to_reduced`), autograd off (``torch.no_grad`` / ``torch.inference_mode``), module
in eval mode, no autocast (autocast picks the types of the plain ops), not while a graph is being traced or compiled
(the exporters and inductor see the plain ops). Results equal the plain path up to float rounding (summation order).
Switch it off with ``PVTV2_FUSED=0`` or ``with fused_kernels(False):``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_ENABLED = os.environ.get("PVTV2_FUSED", "1") != "0"
# cache budget of one chunk of images (bytes of the FFN's hidden tensor); default 4 MiB per thread
_CHUNK_BYTES = int(os.environ.get("PVTV2_CHUNK_BYTES", 0)) or None
WHOLE_BATCH = 1 << 62  # a chunk budget no batch reaches: the blocks see the whole batch at once
_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# The overloads themselves, not the packets: a packet tries its overloads in turn, and a failed try formats an error
# message with the repr of every argument (weights included), which cost 4% of B0's time at batch 16.
if _MKLDNN:
    _LINEAR = torch.ops.mkldnn._linear_pointwise.default  # (x, W, b, unary, scalars, algorithm)
    _LINEAR_ADD = torch.ops.mkldnn._linear_pointwise.binary  # (x, other, W, b, "add")
    _CONV = torch.ops.mkldnn._convolution_pointwise.default
# activation types the kernels take: float32 always, a reduced type where oneDNN has kernels for it (natively or not)
_DTYPES = {torch.float32} | {
    dt for dt, ok in ((torch.bfloat16, "_is_mkldnn_bf16_supported"), (torch.float16, "_is_mkldnn_fp16_supported"))
    if _MKLDNN and getattr(torch.ops.mkldnn, ok)()
}


def tracing() -> bool:
    """True while torch.compile / torch.export / the ONNX exporter / jit tracing captures the graph."""
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


@contextmanager
def fused_kernels(enabled: bool = True, chunk_bytes: int | None = None) -> Iterator[None]:
    """Turn the fused CPU inference kernels on or off inside a ``with`` block (to compare or debug).

    ``chunk_bytes``: the cache budget of :func:`batch_chunk` inside the block (``WHOLE_BATCH``: no chunking); None
    keeps the current one.
    """
    global _ENABLED, _CHUNK_BYTES
    before = _ENABLED, _CHUNK_BYTES
    _ENABLED = enabled
    if chunk_bytes is not None:
        _CHUNK_BYTES = chunk_bytes
    try:
        yield
    finally:
        _ENABLED, _CHUNK_BYTES = before


def enabled() -> bool:
    """Whether the fused kernels are on (``PVTV2_FUSED`` / :func:`fused_kernels`) and oneDNN has them."""
    return _ENABLED and _MKLDNN


def use_fused(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether ``module`` may run its fused inference kernels on ``x``."""
    return (
        _ENABLED
        and _MKLDNN
        and x.device.type == "cpu"
        and x.dtype in _DTYPES
        and not module.training
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not tracing()
    )


def use_onednn(x: torch.Tensor) -> bool:
    """Whether linear layers may run on oneDNN on ``x`` (training too): CPU float32 (a reduced type without autograd),
    no autocast, not tracing."""
    return (
        _ENABLED
        and _MKLDNN
        and x.device.type == "cpu"
        and (x.dtype == torch.float32 or (x.dtype in _DTYPES and not torch.is_grad_enabled()))
        and not torch.is_autocast_enabled("cpu")
        and not tracing()
    )


def linear(x: torch.Tensor, layer: nn.Linear, act: str = "none", residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(layer(x))`` (act: ``"none"`` or ``"relu"``), or ``residual + layer(x)``, in one oneDNN matmul.

    With autograd on, the backward pass is :class:`_OneDNNLinear`'s (``residual`` is then added outside). Without it,
    a weight pre-packed by :func:`pvtv2.precision.to_reduced` (``layer.packed_weight``) is used as is.
    """
    x = x.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad):
        y = _OneDNNLinear.apply(x, layer.weight, layer.bias, act == "relu")
        return y if residual is None else residual + y
    weight = layer.__dict__.get("packed_weight", layer.weight)
    if residual is not None:
        return _LINEAR_ADD(x, residual.contiguous(), weight, layer.bias, "add")
    return _LINEAR(x, weight, layer.bias, act, [], "")


def any_linear(x: torch.Tensor, layer: nn.Linear, act: str = "none") -> torch.Tensor:
    """``act(layer(x))`` (act: ``"none"`` or ``"relu"``), on oneDNN when :func:`use_onednn` allows it (training
    included).

    While a graph is traced (ONNX export, torch.compile) the tokens are flattened to 2-D first: an exported 2-D
    linear is one ``Gemm`` with its bias, where a 3-D/4-D one is ``MatMul`` + ``Add`` that onnxruntime does not fuse.
    """
    if use_onednn(x):
        return linear(x, layer, act)
    if x.dim() > 2 and tracing():
        y = layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], layer.out_features)  # (..., C) -> (..., E)
    else:
        y = layer(x)
    return F.relu(y) if act == "relu" else y


class _OneDNNLinear(torch.autograd.Function):
    """``[relu](x @ W^T + b)`` whose forward and input gradient run on oneDNN.

    PyTorch's CPU ``addmm`` first copies the bias into the output, then runs the matmul over it: for PVT's
    skinny layers (32-64 input channels, tens of thousands of tokens) that copy and MKL's handling of a small inner
    dimension cost as much as the arithmetic. oneDNN adds the bias (and the ReLU) while writing the output. The
    weight gradient stays ``g^T @ x`` (the same reduction as PyTorch's).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
        y = _LINEAR(x, weight, bias, "relu" if relu else "none", [], "")
        ctx.save_for_backward(x, weight, y if relu else None)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, y = ctx.saved_tensors
        if y is not None:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)  # ReLU: pass where the output is positive
        g = grad.reshape(-1, weight.shape[0]).contiguous()  # (..., N) -> (M, N)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # (M, N) @ (N, K) as a oneDNN "linear" with the (K, N) weight
            gx = _LINEAR(g, weight.t().contiguous(), None, "none", [], "").view(x.shape)
        if ctx.needs_input_grad[1]:
            gw = g.t().mm(x.reshape(-1, weight.shape[1]))  # (N, M) @ (M, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb, None


def conv_gelu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``gelu(conv(x))`` (exact erf GELU) in one oneDNN convolution; keeps ``x``'s channels_last layout."""
    if isinstance(conv.padding, str):  # "same"/"valid": let PyTorch resolve the padding
        return F.gelu(conv(x))
    return _CONV(
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
    # measured (1 and 2 threads, batch 16): 4 MiB/thread and at least 2 images is best for B0 (+4-5% over 8 MiB),
    # within 2% of the best for B1, B2, B2-Li
    budget = _CHUNK_BYTES or (4 << 20) * torch.get_num_threads()
    return max(2, budget // max(per_image, 1))
