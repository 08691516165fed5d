"""The feed-forward network of a block: plain (PVT v1) or convolutional (PVT v2)."""

from __future__ import annotations

import torch
from torch import nn

from . import fused


class ConvFFN(nn.Module):
    """Feed-forward network with an optional 3x3 depth-wise convolution between the two linear layers.

    ``fc1 -> [ReLU] -> [dwconv 3x3] -> GELU -> dropout -> fc2 -> dropout``. The depth-wise convolution (v2's
    "convolutional FFN") lets zero padding encode position, which is why v2 needs no position embedding. The extra
    ReLU belongs to the linear-SRA variant (B2-Li) in the released code.

    Args:
        dim: channels in and out.
        hidden_dim: channels of the hidden layer (``dim * mlp_ratio``).
        conv: insert the depth-wise convolution (v2) or not (v1 plain FFN).
        extra_relu: ReLU after fc1 (linear-SRA models).
        drop: dropout rate after the activation and after fc2.
    """

    def __init__(self, dim: int, hidden_dim: int, conv: bool = True, extra_relu: bool = False, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim) if conv else None
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; ``residual`` is added to the output (inside fc2 on the fused path)."""
        if fused.use_fused(x, self):
            return self._forward_fused(x, residual)
        x = fused.any_linear(x, self.fc1, self._fc1_act)  # (B, H, W, C) -> (B, H, W, E)
        if self.dwconv is not None:
            # (B, H, W, E) -> NCHW view in channels_last layout -> conv -> back to (B, H, W, E), no copies
            x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop(self.act(x))
        x = self.drop(fused.any_linear(x, self.fc2))  # (B, H, W, E) -> (B, H, W, C)
        return x if residual is None else residual + x

    @property
    def _fc1_act(self) -> str:
        return "relu" if isinstance(self.relu, nn.ReLU) else "none"

    def _forward_fused(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """Inference on CPU: fc1(+ReLU), dwconv+GELU and fc2(+residual) as three oneDNN kernels."""
        x = fused.linear(x, self.fc1, self._fc1_act)  # (B, H, W, E)
        if self.dwconv is not None and isinstance(self.act, nn.GELU) and self.act.approximate == "none":
            x = fused.conv_gelu(x.permute(0, 3, 1, 2), self.dwconv).permute(0, 2, 3, 1)  # channels_last view
        else:
            x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) if self.dwconv is not None else x
            x = self.act(x)
        return fused.linear(x, self.fc2, residual=residual)  # (B, H, W, E) -> (B, H, W, C), + residual
