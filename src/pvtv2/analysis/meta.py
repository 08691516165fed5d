"""Shape-only answers for the meta-device operators whose meta kernels are slow Python decompositions.

Counting runs the model on the ``meta`` device, where every operator only has to produce an output of the right
shape, dtype and layout. Most meta kernels are C++; a few common ones (LayerNorm, BatchNorm, softmax, GELU, the
matrix products, element-wise arithmetic) are Python reference decompositions that cost milliseconds each: without
this, they were two thirds of the time of a count.
:class:`MetaShortcuts` answers those directly with empty tensors laid out as the CPU kernels lay them out. It only
ever sees operators that reach the meta device (every tensor argument on meta); nothing real runs through it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
_CONTIGUOUS = torch.contiguous_format

ELEMENTWISE = {  # unary, output laid out like the input (TensorIterator)
    aten.gelu.default, aten.silu.default, aten.sigmoid.default, aten.tanh.default, aten.hardswish.default,
    aten.hardsigmoid.default, aten.mish.default,
}  # fmt: skip


BINARY = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.add.Scalar, aten.mul.Scalar}
BINARY_INPLACE = {aten.add_.Tensor, aten.mul_.Tensor, aten.add_.Scalar, aten.mul_.Scalar}


def _like(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | None:
    return torch.empty_like(x) if x.is_floating_point() else None  # integer inputs may promote: not ours


def _binary(a: torch.Tensor, b: Any, *args: Any, **kwargs: Any) -> torch.Tensor | None:
    """``a (op) b`` when the result is plainly laid out like ``a``: same shape, dtype and strides, or a float scalar."""
    if not a.is_floating_point():  # integer division and promotion: leave to the real meta kernel
        return None
    if isinstance(b, torch.Tensor):
        same = b.shape == a.shape and b.dtype == a.dtype and b.stride() == a.stride()
    else:
        same = isinstance(b, (int, float))
    return torch.empty_like(a) if same else None


def _binary_(a: torch.Tensor, b: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """In-place ``a (op)= b`` (``b`` broadcast to ``a``): the result is ``a`` itself."""
    return a


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _layer_norm(x: torch.Tensor, normalized_shape: list[int], *args: Any) -> tuple[torch.Tensor, ...]:
    stat_shape = tuple(x.shape[: x.dim() - len(normalized_shape)]) + (1,) * len(normalized_shape)
    stat = x.new_empty(stat_shape, dtype=_stats_dtype(x))
    return torch.empty_like(x, memory_format=_CONTIGUOUS), stat, torch.empty_like(stat)


def _batch_norm(x: torch.Tensor, weight: Any, bias: Any, *args: Any) -> tuple[torch.Tensor, ...]:
    training = next((a for a in args if isinstance(a, bool)), False)
    saved = x.new_empty((x.shape[1] if training else 0,), dtype=_stats_dtype(x))
    return torch.empty_like(x), saved, torch.empty_like(saved)


def _softmax(x: torch.Tensor, dim: int, half_to_float: bool = False) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.float32 if half_to_float else x.dtype, memory_format=_CONTIGUOUS)


def _safe_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty_like(x, dtype=dtype or x.dtype, memory_format=_CONTIGUOUS)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (M, K) @ (K, N) -> (M, N)
    return a.new_empty((a.shape[0], b.shape[1]))


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (B, M, K) @ (B, K, N) -> (B, M, N)
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]))


SHORTCUTS: dict[Any, Any] = {
    aten.native_layer_norm.default: _layer_norm,
    aten.native_batch_norm.default: _batch_norm,
    aten._native_batch_norm_legit_no_training.default: _batch_norm,
    aten._native_batch_norm_legit.default: _batch_norm,
    aten._softmax.default: _softmax,
    aten.mm.default: _mm,
    aten.addmm.default: lambda bias, a, b, **kw: _mm(a, b),
    aten.bmm.default: _bmm,
    aten.baddbmm.default: lambda bias, a, b, **kw: _bmm(a, b),
} | {op: _like for op in ELEMENTWISE} | {op: _binary for op in BINARY} | {op: _binary_ for op in BINARY_INPLACE}
if hasattr(aten, "_safe_softmax"):  # torch >= 2.5 (scaled_dot_product_attention's decomposition)
    SHORTCUTS[aten._safe_softmax.default] = _safe_softmax


class MetaShortcuts(TorchDispatchMode):
    """Answer slow meta kernels by shape; enter it *before* the counting mode so the counter still sees every op."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        fast = SHORTCUTS.get(func)
        if fast is not None and _all_meta(args, kwargs):
            out = fast(*args, **kwargs)
            if out is not None:  # None: not a plain case, let the real meta kernel decide
                return out
        return func(*args, **kwargs)


def _all_meta(args: tuple, kwargs: dict) -> bool:
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    return bool(tensors) and all(t.is_meta for t in tensors)
