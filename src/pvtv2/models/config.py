"""The one configuration object of the model family: every variant is a row of these fields."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

Quad = tuple[int, int, int, int]


@dataclass(frozen=True)
class PVTConfig:
    """Hyper-parameters of a Pyramid Vision Transformer (defaults: PVT v2-B2).

    The paper's three design switches are fields: ``overlap_patch_embed`` (OPE), ``conv_ffn`` (CFFN) and
    ``attn_mode="linear"`` (LSRA). PVT v1 turns them off and adds ``pos_embed``, ``cls_token`` and one final norm.
    """

    embed_dims: Quad = (64, 128, 320, 512)  # channels of the four stages
    depths: Quad = (3, 4, 6, 3)  # blocks per stage
    num_heads: Quad = (1, 2, 5, 8)  # attention heads per stage (head dim 64)
    mlp_ratios: Quad = (8, 8, 4, 4)  # FFN hidden channels / channels
    sr_ratios: Quad = (8, 4, 2, 1)  # spatial reduction R of SRA per stage
    strides: Quad = (4, 2, 2, 2)  # down-sampling of each stage's patch embedding (total 4, 8, 16, 32)
    attn_mode: Literal["sra", "linear"] = "sra"  # "linear": pool keys/values to 7x7 (PVT v2-Li)
    overlap_patch_embed: bool = True  # kernel 2S-1 (v2) or S (v1)
    conv_ffn: bool = True  # 3x3 depth-wise conv inside the FFN (v2)
    pos_embed: bool = False  # learned absolute position embedding per stage (v1)
    cls_token: bool = False  # class token joins stage 4 and feeds the head (v1)
    stage_norms: bool = True  # LayerNorm after every stage (v2) or only after the last (v1)
    qkv_bias: bool = True
    in_chans: int = 3
    pretrain_size: int = 224  # input size the position embeddings were learned at (v1)
    drop_path_rate: float = 0.1  # stochastic depth, linear from 0 over all blocks
    drop_rate: float = 0.0  # dropout after projections and position embeddings
    attn_drop_rate: float = 0.0  # dropout on attention weights

    def __post_init__(self) -> None:
        for name in ("embed_dims", "depths", "num_heads", "mlp_ratios", "sr_ratios", "strides"):
            value = getattr(self, name)
            if len(value) != 4:
                raise ValueError(f"PVTConfig.{name} needs 4 entries (one per stage), got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if dim % heads:
                raise ValueError(f"PVTConfig: embed dim {dim} is not divisible by {heads} heads")
        if self.attn_mode not in ("sra", "linear"):
            raise ValueError(f"PVTConfig.attn_mode must be 'sra' or 'linear', got {self.attn_mode!r}")
        if self.cls_token and (self.conv_ffn or self.sr_ratios[3] != 1 or self.attn_mode != "sra"):
            raise ValueError("PVTConfig: a class token needs a plain FFN and no spatial reduction in stage 4")

    @property
    def reductions(self) -> Quad:
        """Total stride of each stage's output (4, 8, 16, 32)."""
        out, total = [], 1
        for s in self.strides:
            total *= s
            out.append(total)
        return tuple(out)  # type: ignore[return-value]

    def replace(self, **changes: Any) -> PVTConfig:
        """A copy with some fields changed; unknown names raise one clear error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown PVTConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return replace(self, **changes)
