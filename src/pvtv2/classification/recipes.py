"""Classification recipes: one dataclass carries every hyper-parameter, each recipe states what differs.

- ``fashion_mnist`` (what ``pvtv2 train`` runs with no arguments): PVT v2-B0 from scratch on Fashion-MNIST at
  32 px, sized to reach >= 90% test top-1 in about ten minutes on a 2-core CPU.
- ``imagenet``: the released ImageNet-1K recipe (the authors' ``classification/main.py`` defaults, which are
  DeiT's) for ImageFolder data (``DIR/train``, ``DIR/val``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.config import TrainConfig, option
from ..engine.config import get_recipe as _get
from ..errors import PVTError
from .transforms import AugmentConfig

# Gradient clipping of the released ImageNet recipe, per variant (the released B3-B5 runs: --clip-grad 1.0).
CLIP_GRAD: dict[str, float] = {"pvt_v2_b3": 1.0, "pvt_v2_b4": 1.0, "pvt_v2_b5": 1.0}

_NO_AUG = AugmentConfig(auto_augment=None, color_jitter=0.0, reprob=0.0, mixup=0.0, cutmix=0.0)


@dataclass(frozen=True)
class ClassificationConfig(TrainConfig):
    """Every knob of a classification run (resolved values are written to the run's ``config.json``)."""

    # --- data ---
    dataset: str = option("fashion_mnist", "fashion_mnist (in memory) or folder (DIR/train, DIR/val ImageFolders)",
                          choices=("fashion_mnist", "folder"))
    data_dir: str | None = option(None, "folder: root with train/ and val/; fashion_mnist: torchvision layout "
                                        "(none: the Debian package)")
    train_subset: int | None = option(None, "train on the first N images only")
    val_subset: int | None = option(None, "evaluate on the first N images only")
    input_size: int = option(32, "training and evaluation side (Fashion-MNIST's 28 px are zero-padded)")
    resize: int | None = option(None, "fashion_mnist: rescale the 28 px images to this side first")
    crop_pct: float = option(0.875, "folder evaluation: resize to input-size / crop-pct, centre-crop input-size")
    crop_pad: int = option(0, "fashion_mnist: random-crop translation in pixels (0: none)")
    hflip: bool = option(True, "fashion_mnist: random horizontal flip")
    aug: AugmentConfig = option(_NO_AUG, "folder: timm's augmentation (set with --set aug='{...}')", cli=False)
    repeated_aug: int = option(1, "repeated augmentation count (DeiT: 3)")
    # --- model: the backbone fields carry the dense tasks' names (the classifier is the backbone and its head) ---
    backbone: str = option("pvt_v2_b0", "registered model name (pvtv2 models)", aliases=("--model",))
    drop_path: float | None = option(0.0, "stochastic depth rate; none: the variant's 0.1 / 0.3")
    backbone_overrides: dict[str, Any] = option({}, "a PVTConfig field, e.g. depths=1,1,1,1",
                                                aliases=("--model-overrides",))
    backbone_weights: str | None = option(None, "fine-tune from a checkpoint (any format) or 'official'",
                                          aliases=("--weights",))
    ignore_head: bool | None = option(None, "drop the checkpoint's head; none: when its class count differs")
    smoothing: float = option(0.1, "label smoothing without mixup (with mixup: aug.smoothing)")

    RENAMED: ClassVar[dict[str, str]] = {"model": "backbone", "model_overrides": "backbone_overrides",
                                         "weights": "backbone_weights"}  # their names before 0.2

    def check(self) -> None:
        super().check()
        if self.dataset == "folder" and not self.data_dir:
            raise PVTError("the folder dataset needs --data-dir DIR with DIR/train/<class>/* and DIR/val/<class>/*")

    def resolved(self) -> ClassificationConfig:
        """The variant's defaults filled in where the recipe says "per variant" (drop path, gradient clipping)."""
        from ..models import model_info

        changes: dict[str, Any] = {}
        if self.drop_path is None:
            changes["drop_path"] = model_info(self.backbone).cfg.drop_path_rate
        if self.clip_grad is None:
            changes["clip_grad"] = CLIP_GRAD.get(self.backbone)
        return self.replace(**changes) if changes else self


FASHION_MNIST = ClassificationConfig(
    recipe="fashion_mnist",
    epochs=12,
    batch_size=128,
    base_lr=8e-3,  # x 128 / 512 = 2e-3
    base_batch=512,
    weight_decay=0.05,
    warmup_epochs=0.3,
    warmup_ratio=0.005,  # from 1e-5
    min_lr_ratio=0.005,  # down to 1e-5
    ckpt_every=0,
)

IMAGENET = ClassificationConfig(
    recipe="imagenet",
    dataset="folder",
    input_size=224,
    aug=AugmentConfig(),  # RandAugment m9, jitter 0.4, bicubic, erasing 0.25, mixup 0.8 / cutmix 1.0, smoothing 0.1
    repeated_aug=3,
    backbone="pvt_v2_b2",
    drop_path=None,  # per variant: 0.1 (B0-B2), 0.3 (B3-B5)
    epochs=300,
    batch_size=1024,  # 8 GPUs x 128
    base_lr=5e-4,  # x 1024 / 512 = 1e-3
    base_batch=512,
    weight_decay=0.05,
    warmup_epochs=5,
    warmup_ratio=1e-3,  # from 1e-6
    min_lr_ratio=1e-2,  # down to 1e-5
    clip_grad=None,  # per variant: 1.0 for B3-B5
    ckpt_every=2000,
    workers=8,
)

RECIPES: dict[str, ClassificationConfig] = {"fashion_mnist": FASHION_MNIST, "imagenet": IMAGENET}


def get_recipe(name: str) -> ClassificationConfig:
    """A named recipe (``fashion_mnist`` or ``imagenet``)."""
    return _get(RECIPES, name)
