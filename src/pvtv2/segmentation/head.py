"""The Semantic FPN decoder (Kirillov et al., 2019), in the layout of mmseg's ``FPNHead`` used by the paper."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvNormReLU(nn.Sequential):
    """3x3 conv (no bias) -> norm -> ReLU, as mmcv's ``ConvModule`` with a norm layer."""

    def __init__(self, in_chs: int, out_chs: int, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__(nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False), norm_layer(out_chs), nn.ReLU(inplace=True))


class SemanticFPNHead(nn.Module):
    """Per FPN level: ``log2(stride / strides[0])`` (at least one) conv-norm-ReLU blocks, each followed by a 2x
    bilinear upsampling while above the finest stride; the levels are summed at the finest stride, then dropout
    and a 1x1 classifier.

    Args:
        in_channels: channels of each FPN level (256).
        strides: stride of each level (4, 8, 16, 32).
        channels: channels of the branches (128).
        num_classes: output classes.
        dropout: ``Dropout2d`` rate before the classifier (0.1).
        norm_layer: norm after each conv (BatchNorm2d; SyncBatchNorm under DDP).
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (256, 256, 256, 256),
        strides: Sequence[int] = (4, 8, 16, 32),
        channels: int = 128,
        num_classes: int = 150,
        dropout: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.scale_heads = nn.ModuleList()
        for in_chs, stride in zip(in_channels, strides):
            length = max(1, int(math.log2(stride) - math.log2(strides[0])))
            layers: list[nn.Module] = []
            for k in range(length):
                layers.append(ConvNormReLU(in_chs if k == 0 else channels, channels, norm_layer))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's classifier init
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """FPN maps ``(B, C, H/s_i, W/s_i)`` -> logits ``(B, num_classes, H/s_0, W/s_0)``."""
        out = self.scale_heads[0](features[0])
        for head, feat in zip(self.scale_heads[1:], features[1:]):
            # ceil-divided maps may come back one pixel larger than the finest level: resize to it
            out = out + F.interpolate(head(feat), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(out))
