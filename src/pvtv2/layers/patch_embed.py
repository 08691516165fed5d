"""Patch embedding: the convolution that starts every stage."""

from __future__ import annotations

import torch
from torch import nn

from .conv import padding_safe_conv


class OverlapPatchEmbed(nn.Module):
    """Strided convolution + LayerNorm that turns an image or feature map into tokens.

    PVT v2 overlaps neighbouring patches: kernel ``2S - 1``, stride ``S``, padding ``S - 1`` (7/4/3 in stage 1,
    3/2/1 later), so an ``H x W`` input gives a ``ceil(H / S) x ceil(W / S)`` grid. PVT v1 (``overlap=False``) cuts
    disjoint ``S x S`` patches instead.

    Args:
        in_chans: channels of the input map.
        embed_dim: channels of the tokens.
        stride: down-sampling factor S of this stage.
        overlap: overlapping (v2) or disjoint (v1) patches.
        norm_eps: LayerNorm epsilon (1e-5 in the released code).
    """

    def __init__(self, in_chans: int, embed_dim: int, stride: int, overlap: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        kernel, padding = (2 * stride - 1, stride - 1) if overlap else (stride, 0)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last in, channels_last out: the permute below is then free (no-op for stages 2-4, whose input
        # already is a channels_last view; for the image it is a cheap 3-channel copy that saves a C-channel one)
        x = padding_safe_conv(self.proj, x.contiguous(memory_format=torch.channels_last))  # (B,Cin,H,W) -> (B,C,h,w)
        return self.norm(x.permute(0, 2, 3, 1))  # -> (B, h, w, C); free when x is channels_last
