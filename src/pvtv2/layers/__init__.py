"""Building blocks of the Pyramid Vision Transformer, one per file.

Tokens travel between layers as ``(B, H, W, C)`` tensors (channels last). A 2-D convolution sees the same memory
through ``x.permute(0, 3, 1, 2)``, a zero-copy NCHW view in ``torch.channels_last`` layout, so the spatial
reduction and the depth-wise convolution need no transposes.
"""

from .attention import SpatialReductionAttention
from .block import Block
from .drop_path import DropPath
from .ffn import ConvFFN
from .patch_embed import OverlapPatchEmbed

__all__ = ["Block", "ConvFFN", "DropPath", "OverlapPatchEmbed", "SpatialReductionAttention"]
