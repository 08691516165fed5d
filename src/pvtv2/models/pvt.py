"""PyramidVisionTransformer: the single backbone behind classification, detection and segmentation."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import Block, OverlapPatchEmbed, fused
from .config import PVTConfig


class PVTStage(nn.Module):
    """Patch embedding -> [position embedding] -> blocks -> [norm], on ``(B, H, W, C)`` tokens.

    Args:
        cfg: the model configuration.
        index: stage index 0..3.
        in_chans: channels entering the stage.
        drop_path: stochastic-depth rate of each block of this stage.
    """

    def __init__(self, cfg: PVTConfig, index: int, in_chans: int, drop_path: list[float]) -> None:
        super().__init__()
        dim = cfg.embed_dims[index]
        last = index == 3
        self.patch_embed = OverlapPatchEmbed(in_chans, dim, cfg.strides[index], overlap=cfg.overlap_patch_embed)
        self.grid = cfg.pretrain_size // cfg.reductions[index]  # position-embedding grid at the pretrain size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.cls_token and last else None
        extra = 1 if self.cls_token is not None else 0
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + extra, dim)) if cfg.pos_embed else None
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(
            Block(
                dim,
                cfg.num_heads[index],
                cfg.mlp_ratios[index],
                cfg.sr_ratios[index],
                cfg.attn_mode,
                conv_ffn=cfg.conv_ffn,
                qkv_bias=cfg.qkv_bias,
                drop_path=rate,
                drop=cfg.drop_rate,
                attn_drop=cfg.attn_drop_rate,
            )
            for rate in drop_path
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6) if cfg.stage_norms or last else nn.Identity()
        self.grad_checkpointing = False

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Spatial position embedding resized (bilinear) to an ``h x w`` grid: ``(1, h, w, C)``."""
        assert self.pos_embed is not None
        pos = self.pos_embed[:, -self.grid**2 :].reshape(1, self.grid, self.grid, -1)
        if (h, w) != (self.grid, self.grid):
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
        return pos

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, Cin, H, W) -> ((B, h, w, C) tokens, (B, C) class token or None)``."""
        x = self.patch_embed(x)  # (B, h, w, C)
        B, h, w, C = x.shape
        if self.pos_embed is not None:
            x = x + self._pos_embed(h, w)
        if self.cls_token is not None:
            cls = self.cls_token.expand(B, -1, -1)
            if self.pos_embed is not None:
                cls = cls + self.pos_embed[:, :1]
            x = torch.cat([cls, x.reshape(B, h * w, C)], dim=1)  # (B, 1 + h*w, C)
        x = self.pos_drop(x)
        chunk = B
        if len(self.blocks) and fused.use_fused(x, self):  # CPU inference: a few images at a time, so that the
            chunk = fused.batch_chunk(x, self.blocks[0].mlp.fc1.out_features)  # FFN's hidden tensor stays in cache
        x = torch.cat([self._run_blocks(c) for c in x.split(chunk)]) if chunk < B else self._run_blocks(x)
        x = self.norm(x)
        if self.cls_token is None:
            return x, None
        return x[:, 1:].reshape(B, h, w, C), x[:, 0]


class PyramidVisionTransformer(nn.Module):
    """Pyramid Vision Transformer (v1 and v2): four stages of strides 4, 8, 16 and 32, and a linear head.

    ``model(x)`` gives logits; ``forward_features(x)`` the four stage outputs as NCHW maps (stored channels-last,
    zero-copy; call ``.contiguous()`` if you need the default layout); ``forward_head(features)`` the logits from
    them. Any input of at least 32 px works: maps are ``ceil(H / stride)`` on each side.

    Args:
        cfg: architecture (see :class:`PVTConfig`; variants are registered in :mod:`pvtv2.models.registry`).
        num_classes: size of the head; 0 gives a headless backbone whose ``forward`` returns pooled features.
    """

    def __init__(self, cfg: PVTConfig | None = None, num_classes: int = 1000) -> None:
        super().__init__()
        cfg = cfg or PVTConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        n = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear 0 -> drop_path_rate
        stages, in_chans, start = [], cfg.in_chans, 0
        for i, depth in enumerate(cfg.depths):
            stages.append(PVTStage(cfg, i, in_chans, rates[start : start + depth]))
            in_chans, start = cfg.embed_dims[i], start + depth
        self.stages = nn.ModuleList(stages)
        self.num_features = cfg.embed_dims[-1]
        self.head: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info: list[dict[str, Any]] = [
            {"num_chs": c, "reduction": r, "module": f"stages.{i}"}
            for i, (c, r) in enumerate(zip(cfg.embed_dims, cfg.reductions))
        ]
        self.apply(_init_weights)
        for stage in self.stages:
            for p in (stage.pos_embed, stage.cls_token):
                if p is not None:
                    nn.init.trunc_normal_(p, std=0.02)

    # --- dense-prediction API -------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(
                f"expected images of shape (B, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"input must be at least 32x32 pixels (total stride 32), got {tuple(x.shape[-2:])}")

    def forward_tokens(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Stage outputs as ``(B, h, w, C)`` tokens, and v1's class token (``None`` for v2)."""
        self._check_input(x)
        feats: list[torch.Tensor] = []
        cls = None
        for stage in self.stages:
            tokens, cls = stage(x)
            feats.append(tokens)
            x = tokens.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w), channels_last view
        return feats, cls

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> four maps ``(B, C_i, ceil(H / s_i), ceil(W / s_i))`` for strides 4, 8, 16, 32."""
        return [t.permute(0, 3, 1, 2) for t in self.forward_tokens(x)[0]]

    def forward_head(
        self, features: list[torch.Tensor], cls_token: torch.Tensor | None = None, pre_logits: bool = False
    ) -> torch.Tensor:
        """Logits from ``forward_features``' output (v2: mean of the last map; v1: its class token)."""
        if self.cfg.cls_token:
            if cls_token is None:
                raise ValueError("this model classifies from its class token: pass forward_tokens(x)[1] as cls_token")
            pooled = cls_token
        else:
            pooled = features[-1].mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, cls = self.forward_tokens(x)
        # (B, h, w, C) -> (B, C), summed in float32 also when the maps are bf16/fp16 (pvtv2.precision.to_reduced)
        pooled = cls if cls is not None else feats[-1].mean(dim=(1, 2), dtype=torch.float32)
        if isinstance(self.head, nn.Linear):
            pooled = pooled.to(self.head.weight.dtype)  # a reduced-precision copy keeps its head in float32
        return self.head(pooled)

    # --- utilities ------------------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def no_weight_decay(self) -> set[str]:
        """Parameters the released recipe exempts from weight decay by name (biases and norms by shape)."""
        return {n for n, _ in self.named_parameters() if n.endswith(("pos_embed", "cls_token"))}


def _init_weights(m: nn.Module) -> None:
    """The released initialisation: trunc-normal Linear, unit LayerNorm, He-normal Conv2d (fan-out)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
