"""The transformer encoder block of PVT."""

from __future__ import annotations

import torch
from torch import nn

from . import fused
from .attention import AttnMode, SpatialReductionAttention
from .drop_path import DropPath
from .ffn import ConvFFN


class Block(nn.Module):
    """Pre-norm block: ``x + drop_path(attn(norm1(x)))`` then ``x + drop_path(ffn(norm2(x)))``.

    Args:
        dim: channels C.
        num_heads: attention heads.
        mlp_ratio: FFN hidden channels / C.
        sr_ratio: spatial reduction R of SRA.
        attn_mode: ``"sra"`` or ``"linear"``.
        conv_ffn: depth-wise conv in the FFN (v2) or plain FFN (v1).
        qkv_bias: bias on q and kv.
        drop_path: stochastic-depth rate of this block.
        drop: dropout after attention/FFN projections.
        attn_drop: dropout on attention weights.
        norm_eps: epsilon of norm1/norm2 (1e-6 in the released code).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        attn_mode: AttnMode = "sra",
        conv_ffn: bool = True,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SpatialReductionAttention(
            dim, num_heads, sr_ratio, attn_mode, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), conv=conv_ffn, extra_relu=attn_mode == "linear", drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        if fused.use_fused(x, self):  # inference on CPU: the residual adds happen inside proj and fc2
            x = self.attn(self.norm1(x), residual=x)
            return self.mlp(self.norm2(x), residual=x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
