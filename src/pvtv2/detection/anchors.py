"""Anchor generators for the FPN levels, as mmdet's configs describe them."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision.models.detection.anchor_utils import AnchorGenerator


def octave_anchors(strides: Sequence[int], octave_base: int, scales_per_octave: int,
                   ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> AnchorGenerator:
    """mmdet's ``AnchorGenerator(octave_base_scale, scales_per_octave)``: per level, sizes
    ``octave_base * stride * 2**(i / scales_per_octave)`` for each of ``ratios``."""
    sizes = tuple(
        tuple(int(octave_base * s * 2 ** (i / scales_per_octave)) for i in range(scales_per_octave)) for s in strides
    )
    return AnchorGenerator(sizes, (tuple(ratios),) * len(strides))


def point_anchors(strides: Sequence[int]) -> AnchorGenerator:
    """One square anchor per location whose side is the level's stride (FCOS's points)."""
    return AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
