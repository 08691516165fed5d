"""Anchors on the FPN levels exactly as mmdet 2.x's ``AnchorGenerator`` lays them out.

torchvision's :class:`~torchvision.models.detection.anchor_utils.AnchorGenerator` is kept as the interface (its
detectors check for it) with two differences to the released detectors removed: its base anchors are rounded to
integers (RetinaNet's 40.32 px becomes 40), and it derives each level's stride from the padded image size integer-
divided by the map size (800 // 13 = 61 on P6 instead of 64). :class:`LevelAnchors` keeps mmdet's float sizes and the
levels' nominal strides (mmdet ``core/anchor/anchor_generator.py``).

Which anchors take part in an image's loss, as mmdet's ``valid_flags`` and ``anchor_inside_flags``
(``core/anchor/utils.py``): :func:`valid_anchors` (one level) and :func:`valid_flags` (all levels) keep the anchors
on the image's own extent padded to :data:`SIZE_DIVISOR` (a batch padded to its largest image gives the smaller
images anchors outside them); :func:`inside_image` the ones wholly inside the image (the RPN's ``allowed_border``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList


class LevelAnchors(AnchorGenerator):
    """Per level ``i``: anchors of widths ``sizes[i][s] / sqrt(ratio)`` and heights ``sizes[i][s] * sqrt(ratio)``
    (ratio = height / width) centred on ``(x * strides[i], y * strides[i])`` of every map location, ordered location
    by location (row-major), then ratio, then size: mmdet's ``AnchorGenerator`` with ``center_offset=0`` and
    ``scale_major=True``, and the order in which RetinaNet's and the RPN's heads lay out their channels.

    Args:
        strides: stride of each level (its anchors' spacing).
        sizes: anchor sizes (square side, pixels) of each level, floats kept exactly.
        ratios: height / width ratios, the same on every level.
    """

    def __init__(self, strides: Sequence[int], sizes: Sequence[Sequence[float]],
                 ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> None:
        if len(strides) != len(sizes):
            raise ValueError(f"{len(strides)} strides for {len(sizes)} levels of anchor sizes")
        self.strides = [int(s) for s in strides]
        super().__init__(tuple(tuple(float(x) for x in s) for s in sizes), (tuple(ratios),) * len(sizes))

    def generate_anchors(self, scales: Sequence[float], aspect_ratios: Sequence[float],
                         dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu")) -> Tensor:
        """Base anchors ``(len(ratios) * len(scales), 4)`` XYXY around (0, 0), not rounded."""
        sizes = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (sizes[None, :] / h_ratios[:, None]).reshape(-1)  # (ratios, sizes) -> ratio-major
        hs = (sizes[None, :] * h_ratios[:, None]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """One ``(sum_i h_i * w_i * A, 4)`` tensor per image (the same for every image of the batch)."""
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for anchors on {len(self.strides)} levels")
        # float32 at least, as mmdet's anchors: under bf16 autocast the maps are bf16, whose 8-bit mantissa would round
        # anchor coordinates at 128-512 px to 1-2 px steps (and so move every regression target and proposal)
        dtype, device = torch.promote_types(feature_maps[0].dtype, torch.float32), feature_maps[0].device
        self.set_cell_anchors(dtype, device)
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides)).to(dtype)
        return [anchors for _ in image_list.image_sizes]


def octave_anchors(strides: Sequence[int], octave_base: float, scales_per_octave: int,
                   ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> LevelAnchors:
    """mmdet's ``AnchorGenerator(octave_base_scale, scales_per_octave, ratios, strides)``: per level, sizes
    ``octave_base * stride * 2 ** (i / scales_per_octave)`` (RetinaNet: 4, 3 -> 32, 40.32, 50.80 on P3; the RPN's
    ``scales=[8]`` is ``octave_base=8, scales_per_octave=1``)."""
    octave = [2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
    return LevelAnchors(strides, [[octave_base * s * o for o in octave] for s in strides], ratios)


def point_anchors(strides: Sequence[int]) -> LevelAnchors:
    """One square anchor per location whose side is the level's stride (FCOS's points)."""
    return LevelAnchors(strides, [[s] for s in strides], (1.0,))


SIZE_DIVISOR = 32  # mmdet's Pad(size_divisor=32) in every released config; each image's anchors stop at its own


def padded_shape(image_size: Sequence[int]) -> tuple[int, int]:
    """An image's size padded up to a multiple of 32 (mmdet's per-image ``pad_shape``)."""
    return tuple(-(-int(s) // SIZE_DIVISOR) * SIZE_DIVISOR for s in image_size[:2])  # type: ignore[return-value]


def valid_anchors(size: Sequence[int], stride: int, num_base: int, pad_shape: Sequence[int],
                  device: torch.device | None) -> torch.Tensor:
    """``(h * w * A,)`` bool: the anchor's location lies on the image's own padded extent (not the batch's)."""
    h, w = int(size[0]), int(size[1])
    vh, vw = min(-(-int(pad_shape[0]) // stride), h), min(-(-int(pad_shape[1]) // stride), w)
    valid = torch.zeros(h, w, dtype=torch.bool, device=device)
    valid[:vh, :vw] = True
    return valid.view(-1, 1).expand(-1, num_base).reshape(-1)


def valid_flags(sizes: Sequence[tuple[int, int]], strides: Sequence[int], image_size: Sequence[int],
                device: torch.device | None = None) -> torch.Tensor:
    """``(sum h*w,)`` bool: :func:`valid_anchors` of one anchor per location, level after level (mmdet's
    ``valid_flags`` on ``pad_shape``)."""
    pad = padded_shape(image_size)
    return torch.cat([valid_anchors(size, s, 1, pad, device) for size, s in zip(sizes, strides)])


def inside_image(anchors: torch.Tensor, image_size: Sequence[int], border: int) -> torch.Tensor:
    """``(N,)`` bool: the anchor lies within the image grown by ``border`` pixels (right and bottom edges
    exclusive, as mmdet's ``anchor_inside_flags``); a negative ``border`` admits every anchor."""
    if border < 0:
        return torch.ones_like(anchors[:, 0], dtype=torch.bool)
    h, w = image_size[0], image_size[1]
    return (anchors[:, 0] >= -border) & (anchors[:, 1] >= -border) & (anchors[:, 2] < w + border) & \
        (anchors[:, 3] < h + border)
