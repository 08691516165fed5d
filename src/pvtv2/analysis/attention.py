"""Attention maps: what the last block of each stage attends to, for one query point or averaged over queries.

In a PVT block the ``h x w`` queries of a stage attend to a reduced set of keys: with SRA (v1, v2) the
``(h / R) x (w / R)`` cells of a stride-R convolution over the token grid (all ``h x w`` tokens when R = 1, stage
4 of B0-B5); with linear SRA (v2-Li) the ``7 x 7`` cells of an adaptive average pool, whatever the input size.
:func:`attention_maps` runs the model once and recomputes ``softmax(q k^T / sqrt(d))`` of those blocks from their
inputs, captured by forward hooks: the forward pass itself (including the fused CPU kernels, which never form the
attention matrix) is unchanged, and the hooks are removed before returning.

>>> maps = attention_maps(model, images, query=(112, 80))  # (y, x) in input pixels; None: mean over queries
>>> maps.stages[0].weights.shape                           # (B, heads, key rows, key cols), sums to 1 per head
>>> heat = maps.upsampled()                                # per stage (B, H, W): mean over heads, over the image
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import SpatialReductionAttention


def attention_probs(attn: SpatialReductionAttention, x: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` of ``attn`` on its input ``x`` (``(B, h, w, C)`` tokens or ``(B, N, C)``):
    ``(B, heads, N, Nk)``, each row summing to 1. Eager arithmetic, as the released code writes it."""
    B, heads, d = x.shape[0], attn.num_heads, attn.head_dim
    q = attn.q(x).reshape(B, -1, heads, d).transpose(1, 2)  # (B, ..., C) -> (B, heads, N, d)
    k = attn.kv(attn.reduce(x))[..., : heads * d]  # keys are the first C channels of kv: (B, Nk, C)
    k = k.reshape(B, -1, heads, d).transpose(1, 2)  # -> (B, heads, Nk, d)
    return torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)  # (B, heads, N, Nk)


@dataclass
class StageAttention:
    """The attention of one block.

    Attributes:
        stage: stage index 0..3.
        block: block index inside the stage.
        weights: ``(B, heads, kh, kw)`` attention paid to each key cell by the query (or the mean over queries).
        cls_weight: ``(B, heads)`` attention paid to PVT v1's class token (stage 4 of v1 only; ``weights`` plus
            this sum to 1), else ``None``.
        query_grid: ``(h, w)`` tokens of the stage.
        key_grid: ``(kh, kw)`` key cells.
        key_extent: ``(rows, cols)`` input pixels the key grid covers from the top-left corner (an SRA convolution
            drops the last ``h mod R`` rows of tokens).
        mode: ``"sra"`` (stride-R convolution), ``"linear"`` (7x7 pool) or ``"full"`` (no reduction).
        reduction: R of ``"sra"`` (1 for ``"full"``, 0 for ``"linear"``).
    """

    stage: int
    block: int
    weights: torch.Tensor
    cls_weight: torch.Tensor | None
    query_grid: tuple[int, int]
    key_grid: tuple[int, int]
    key_extent: tuple[int, int]
    mode: str
    reduction: int


@dataclass
class AttentionMaps:
    """:func:`attention_maps`' result: one :class:`StageAttention` per stage, for ``query`` on ``image_size``."""

    stages: list[StageAttention]
    image_size: tuple[int, int]
    query: tuple[float, float] | None

    def upsampled(self, head: int | None = None) -> list[torch.Tensor]:
        """Per stage ``(B, H, W)``: the key map (mean over heads, or one ``head``) bilinearly resized over the
        pixels its keys cover, zero outside them."""
        H, W = self.image_size
        out = []
        for s in self.stages:
            m = s.weights.mean(1) if head is None else s.weights[:, head]  # (B, kh, kw)
            ey, ex = s.key_extent
            m = F.interpolate(m[:, None], size=(ey, ex), mode="bilinear", align_corners=False)[:, 0]  # (B, ey, ex)
            canvas = m.new_zeros(m.shape[0], max(H, ey), max(W, ex))
            canvas[:, :ey, :ex] = m
            out.append(canvas[:, :H, :W])
        return out


def _key_layout(attn: SpatialReductionAttention, h: int, w: int, stride: int) -> tuple[str, int, tuple[int, int],
                                                                                      tuple[int, int]]:
    """(mode, R, key grid, pixels covered) of ``attn`` on an ``h x w`` grid of tokens ``stride`` pixels apart."""
    if attn.sr is None:
        return "full", 1, (h, w), (h * stride, w * stride)
    if attn.pool is not None:
        return "linear", 0, (attn.pool_size, attn.pool_size), (h * stride, w * stride)
    r = attn.sr.stride[0]
    return "sra", r, (h // r, w // r), (h // r * r * stride, w // r * r * stride)


def attention_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    query: tuple[float, float] | None = None,
    block: int = -1,
) -> AttentionMaps:
    """The attention each stage's block ``block`` (default: the last) pays to its keys.

    Args:
        model: a :class:`~pvtv2.models.PyramidVisionTransformer` (any variant, any weights).
        images: ``(B, 3, H, W)`` normalised input, any size the model accepts.
        query: ``(y, x)`` in input pixels: the attention of the token whose ``stride x stride`` cell holds it;
            ``None``: the mean over every query of the stage.
        block: which block of each stage.

    Raises:
        ValueError: a query outside the image.
    """
    H, W = images.shape[-2:]
    if query is not None and not (0 <= query[0] < H and 0 <= query[1] < W):
        raise ValueError(f"query (y, x) = {query} is outside the {H}x{W} input")
    stages = list(model.stages)  # type: ignore[arg-type]
    inputs: list[list[torch.Tensor]] = [[] for _ in stages]
    grids: list[tuple[int, int]] = [(0, 0)] * len(stages)
    hooks = []
    for i, stage in enumerate(stages):
        # the fused path may run a stage's blocks on a few images at a time: keep every chunk
        hooks.append(stage.blocks[block].attn.register_forward_hook(
            lambda mod, args, out, i=i: inputs[i].append(args[0].detach())))
        hooks.append(stage.register_forward_hook(
            lambda mod, args, out, i=i: grids.__setitem__(i, tuple(out[0].shape[1:3]))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model.forward_tokens(images)  # type: ignore[operator]
            result = [_stage_attention(i, stage.blocks[block], torch.cat(inputs[i]), grids[i],
                                       model.cfg.reductions[i], query,  # type: ignore[union-attr]
                                       block % len(stage.blocks))
                      for i, stage in enumerate(stages)]
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return AttentionMaps(result, (H, W), None if query is None else (float(query[0]), float(query[1])))


def _stage_attention(i: int, blk: nn.Module, x: torch.Tensor, grid: tuple[int, int], stride: int,
                     query: tuple[float, float] | None, block: int) -> StageAttention:
    h, w = grid
    attn: SpatialReductionAttention = blk.attn  # type: ignore[assignment]
    probs = attention_probs(attn, x)  # (B, heads, N, Nk)
    mode, r, (kh, kw), extent = _key_layout(attn, h, w, stride)
    cls = None
    if probs.shape[-2] == h * w + 1:  # PVT v1's last stage: the class token leads queries and keys
        cls, probs = probs[:, :, 1:, 0], probs[:, :, 1:, 1:]  # (B, heads, N), (B, heads, N, N)
    if query is None:
        row = probs.mean(2)  # (B, heads, Nk)
        cls = cls.mean(2) if cls is not None else None
    else:
        qy, qx = min(int(query[0] // stride), h - 1), min(int(query[1] // stride), w - 1)
        row = probs[:, :, qy * w + qx]  # (B, heads, Nk)
        cls = cls[:, :, qy * w + qx] if cls is not None else None
    weights = row.reshape(*row.shape[:2], kh, kw)  # (B, heads, Nk) -> (B, heads, kh, kw)
    return StageAttention(i, block, weights, cls, (h, w), (kh, kw), extent, mode, r)


_MODES = {"sra": "SRA, R={r}", "linear": "linear SRA, 7x7 pool", "full": "no reduction"}


def save_attention_figure(
    path: str | os.PathLike[str],
    image: torch.Tensor,
    maps: AttentionMaps,
    *,
    index: int = 0,
    head: int | None = None,
    title: str = "",
) -> Path:
    """A PNG (written atomically): the input, then one panel per stage with its attention map over the image.

    Args:
        path: output file.
        image: ``(3, H, W)`` or ``(1, H, W)`` model input (normalised; shown rescaled to [0, 1]).
        maps: :func:`attention_maps` of that input.
        index: which image of the batch.
        head: one attention head, or ``None`` for the mean over heads.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .._io import save_figure

    img = image.detach().float().cpu()
    lo, hi = img.amin((1, 2), keepdim=True), img.amax((1, 2), keepdim=True)
    img = ((img - lo) / (hi - lo).clamp_min(1e-12)).expand(3, -1, -1).permute(1, 2, 0).numpy()  # (H, W, 3)
    heats = maps.upsampled(head)
    fig, axes = plt.subplots(1, 1 + len(heats), figsize=(3.2 * (1 + len(heats)), 3.6 * img.shape[0] / img.shape[1]
                                                          + 0.9))
    axes[0].imshow(img)
    axes[0].set_title(f"input {img.shape[0]}x{img.shape[1]}\n" + (
        f"query (y, x) = ({maps.query[0]:.0f}, {maps.query[1]:.0f})" if maps.query else "mean over all queries"),
        fontsize=8)
    for ax, heat, s in zip(axes[1:], heats, maps.stages):
        ax.imshow(img.mean(2), cmap="gray", vmin=0, vmax=1)
        h = heat[index].numpy()
        covered = np.zeros_like(h, dtype=bool)
        covered[: s.key_extent[0], : s.key_extent[1]] = True
        w = s.weights[index].mean(0) if head is None else s.weights[index, head]  # (kh, kw)
        lo, hi = float(w.min()), float(w.max())  # colours span the map's own range: weights near uniform still show
        ax.imshow(np.ma.masked_where(~covered, h), cmap="inferno", alpha=0.6, vmin=lo, vmax=max(hi, lo + 1e-12))
        ax.set_title(f"stage {s.stage + 1}, block {s.block + 1}: {s.query_grid[0]}x{s.query_grid[1]} queries\n"
                     f"{s.key_grid[0]}x{s.key_grid[1]} keys ({_MODES[s.mode].format(r=s.reduction)})\n"
                     f"weights {lo:.3f}-{hi:.3f} (uniform {1 / w.numel():.3f})", fontsize=7)
    for ax in axes:
        if maps.query:
            ax.plot(maps.query[1], maps.query[0], marker="x", color="cyan", markersize=8, mew=2)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
