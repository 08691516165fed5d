"""The paper's image pipeline through timm's (DeiT's) implementation.

Training (``rand-m9-mstd0.5-inc1`` RandAugment, colour jitter 0.4, bicubic random-resized crop, flip, random
erasing 0.25 in pixel mode) comes from ``timm.data.create_transform``; mixup 0.8 / cutmix 1.0 with label
smoothing 0.1 from ``timm.data.Mixup``; evaluation resizes the shorter side to ``size / crop_pct`` (256 for 224)
with bicubic interpolation and center-crops ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation of an ImageFolder recipe (defaults: the released ImageNet recipe)."""

    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm notation; None: off
    color_jitter: float = 0.4
    interpolation: str = "bicubic"
    reprob: float = 0.25  # random erasing probability
    remode: str = "pixel"
    recount: int = 1
    hflip: float = 0.5
    mixup: float = 0.8  # mixup alpha (0: off)
    cutmix: float = 1.0  # cutmix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1


def train_transform(size: int, aug: AugmentConfig, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> Callable[[Any], Any]:
    """timm's training transform: PIL RGB image -> normalised ``(3, size, size)`` tensor."""
    from timm.data import create_transform

    return create_transform(
        input_size=size,
        is_training=True,
        color_jitter=aug.color_jitter,
        auto_augment=aug.auto_augment,
        interpolation=aug.interpolation,
        hflip=aug.hflip,
        re_prob=aug.reprob,
        re_mode=aug.remode,
        re_count=aug.recount,
        mean=mean,
        std=std,
    )


def eval_transform(
    size: int = 224,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Callable[[Any], Any]:
    """The released evaluation protocol: resize shorter side to ``size / crop_pct`` then center-crop ``size``."""
    from timm.data import create_transform

    return create_transform(input_size=size, is_training=False, interpolation=interpolation, crop_pct=crop_pct,
                            mean=mean, std=std)


def mixup_fn(aug: AugmentConfig, num_classes: int) -> Any:
    """timm's ``Mixup`` (batch mode, label smoothing folded in), or ``None`` when mixup and cutmix are off."""
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                 switch_prob=aug.mixup_switch_prob, mode=aug.mixup_mode, label_smoothing=aug.smoothing,
                 num_classes=num_classes)
