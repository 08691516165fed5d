"""Spatial-reduction attention (SRA, PVT v1) and its linear variant (linear SRA, PVT v2-Li)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .fused import tracing

AttnMode = Literal["sra", "linear"]


def _pool_matrix(n: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """``(out, n)`` averaging weights of adaptive pooling: row i averages ``[floor(i n / out), ceil((i+1) n / out))``."""
    i = torch.arange(out, device=like.device)
    start = (i * n) // out
    end = ((i + 1) * n + out - 1) // out
    j = torch.arange(n, device=like.device)
    inside = (j >= start[:, None]) & (j < end[:, None])  # (out, n)
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool_tokens(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` on ``(B, H, W, C)`` tokens as two small matmuls: ``(B, size, size, C)``.

    Equal to adaptive average pooling up to float rounding, but the pooling matrices are built from the run-time
    H and W, so the graph traces and exports (ONNX, torch.compile with dynamic shapes) at any input size, including
    sizes that are not multiples of ``size``.
    """
    B, H, W, C = x.shape
    y = torch.matmul(_pool_matrix(W, size, x), x)  # (size, W) @ (B, H, W, C) -> (B, H, size, C)
    y = torch.matmul(_pool_matrix(H, size, x), y.reshape(B, H, size * C))  # (size, H) @ ... -> (B, size, size*C)
    return y.reshape(B, size, size, C)


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced copy of the input.

    * ``mode="sra"``: keys/values from ``Conv2d(C, C, R, stride=R)`` + LayerNorm (no reduction when R == 1), so
      the cost is ``N * N / R^2``.
    * ``mode="linear"``: keys/values from ``AdaptiveAvgPool2d(7)`` + 1x1 conv + LayerNorm + GELU, a fixed 49 keys
      whatever the input size, so the cost is linear in N.

    Args:
        dim: channels C.
        num_heads: attention heads (head dim = C / heads).
        sr_ratio: reduction R of ``sra`` mode (ignored by ``linear``).
        mode: ``"sra"`` or ``"linear"``.
        qkv_bias: bias on the q and kv projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        pool_size: grid of the linear mode's pooled keys (7 in the paper).
        norm_eps: epsilon of the reduction's LayerNorm (1e-5 in the released code).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        mode: AttnMode = "sra",
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pool_size: int = 7,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if mode not in ("sra", "linear"):
            raise ValueError(f"attention mode must be 'sra' or 'linear', got {mode!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.mode = mode
        self.pool_size = pool_size
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool: nn.Module | None = None
        self.sr: nn.Conv2d | None = None
        self.norm: nn.LayerNorm | None = None
        self.act: nn.Module | None = None
        if mode == "linear":
            self.pool = nn.AdaptiveAvgPool2d(pool_size)
            self.sr = nn.Conv2d(dim, dim, kernel_size=1)
            self.norm = nn.LayerNorm(dim, eps=norm_eps)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The tokens keys and values are computed from: ``(B, H, W, C) -> (B, Nk, C)``."""
        B, C = x.shape[0], x.shape[-1]
        if self.sr is None:
            return x.reshape(B, -1, C)  # (B, N, C): full attention (stage 4 of SRA models)
        if self.pool is not None and tracing():
            x = adaptive_avg_pool_tokens(x, self.pool_size)  # (B, H, W, C) -> (B, 7, 7, C)
        y = x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W) view, channels_last
        if self.pool is not None and not tracing():
            y = self.pool(y)  # -> (B, C, 7, 7)
        y = self.sr(y).permute(0, 2, 3, 1).reshape(B, -1, C)  # -> (B, h*w, C)
        y = self.norm(y)
        return self.act(y) if self.act is not None else y

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B, H, W, C)`` tokens on their grid (or ``(B, N, C)`` when there is no reduction).

        ``residual`` (same shape as ``x``) is added to the output, inside the projection on the fused CPU path.
        """
        B = x.shape[0]
        heads, d = self.num_heads, self.head_dim
        fast = fused.use_fused(x, self)
        q = fused.any_linear(x, self.q).reshape(B, -1, heads, d).transpose(1, 2)  # (B, ..., C) -> (B, heads, N, d)
        kv = fused.any_linear(self.reduce(x), self.kv)
        kv = kv.reshape(B, -1, 2, heads, d)  # (B, Nk, 2C) -> (B, Nk, 2, heads, d)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # -> 2 x (B, heads, Nk, d)
        drop = self.attn_drop if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, heads, N, d)
        o = o.transpose(1, 2).reshape(x.shape)  # -> (B, N, heads, d) -> x's shape
        if fast:
            return fused.linear(o, self.proj, residual=residual)
        o = self.proj_drop(fused.any_linear(o, self.proj))
        return o if residual is None else residual + o
