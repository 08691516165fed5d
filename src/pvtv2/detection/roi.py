"""Multi-level RoIAlign as mmdet 2.x does it (``SingleRoIExtractor`` with mmcv's ``RoIAlign``).

Each RoI is pooled from one FPN level chosen by its size: ``floor(log2(sqrt(w * h) / 56 + 1e-6))`` clamped to the
levels (mmdet's ``finest_scale=56``), with half-pixel-aligned sampling (``aligned=True``). torchvision's
``MultiScaleRoIAlign`` uses a different level rule (canonical scale 224 at level 4) and has no ``aligned``
switch, so the released R-CNN heads would see other features; the pooling itself is
:func:`torchvision.ops.roi_align`, the kernel mmcv's is equal to.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align


class MultiLevelRoIAlign(nn.Module):
    """RoI features from the FPN level that fits each RoI's size.

    Args:
        output_size: side of the pooled grid (7 for box heads, 14 for mask heads).
        strides: stride of each feature map given to :meth:`forward` (4, 8, 16, 32 for P2-P5).
        sampling_ratio: sampling points per bin side; 0: adaptive (``ceil(bin size)``), as the Cascade configs.
        finest_scale: RoIs smaller than ``2 * finest_scale`` go to the first level.
    """

    def __init__(self, output_size: int, strides: Sequence[int], sampling_ratio: int = 0,
                 finest_scale: int = 56) -> None:
        super().__init__()
        self.output_size = (output_size, output_size)
        self.strides = tuple(strides)
        self.sampling_ratio = sampling_ratio
        self.finest_scale = finest_scale

    def levels(self, rois: torch.Tensor) -> torch.Tensor:
        """``(K, 5)`` RoIs -> ``(K,)`` level index of each (mmdet's ``map_roi_levels``)."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(min=0, max=len(self.strides) - 1).long()

    def forward(self, feats: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """``feats``: ``(B, C, H/s, W/s)`` per stride (extra maps beyond ``strides`` are ignored); ``rois``:
        ``(K, 5)`` ``(image index, x1, y1, x2, y2)`` in input pixels -> ``(K, C, S, S)``."""
        out = feats[0].new_zeros(rois.size(0), feats[0].size(1), *self.output_size)
        level = self.levels(rois)
        for i, stride in enumerate(self.strides):
            idx = (level == i).nonzero().view(-1)
            if idx.numel():
                out[idx] = roi_align(feats[i], rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio,
                                     aligned=True)
        return out
