"""Named classification recipes: one dataclass carries every hyper-parameter, each recipe states what differs.

- ``fashion_mnist`` (what ``pvtv2 train`` runs with no arguments): PVT v2-B0 from scratch on Fashion-MNIST at
  32 px, sized to reach >= 90% test top-1 in minutes on a 2-core CPU.
- ``imagenet``: the released ImageNet-1K recipe (the authors' DeiT-based ``classification/main.py`` settings) for ImageFolder data (``DIR/train``, ``DIR/val``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..data.transforms import AugmentConfig
from ..errors import PVTError


@dataclass(frozen=True)
class ClassificationConfig:
    """Every knob of a classification run (resolved values are written to the run's ``config.json``)."""

    recipe: str = "fashion_mnist"
    # --- data ---
    dataset: str = "fashion_mnist"  # "fashion_mnist" (in memory) or "folder" (DIR/train, DIR/val ImageFolders)
    data_dir: str | None = None  # fashion_mnist: torchvision layout (default: the Debian package); folder: root
    train_subset: int | None = None  # use only the first N training images (smoke runs, tests)
    val_subset: int | None = None  # evaluate on the first N validation images only
    input_size: int = 32  # training and evaluation side (Fashion-MNIST's 28 px are zero-padded)
    resize: int | None = None  # fashion_mnist: rescale the 28 px images to this side first (then pad)
    crop_pct: float = 0.875  # folder evaluation: resize to input_size / crop_pct, center-crop input_size
    crop_pad: int = 0  # fashion_mnist: random-crop translation in pixels (0: none; it slows a 10-epoch run down)
    hflip: bool = True  # fashion_mnist: random horizontal flip
    aug: AugmentConfig = field(default_factory=lambda: AugmentConfig(auto_augment=None, color_jitter=0.0, reprob=0.0,
                                                                     mixup=0.0, cutmix=0.0))
    repeated_aug: int = 1  # repeated augmentation (DeiT: 3)
    workers: int = 8  # folder: DataLoader workers per process
    on_bad_image: str = "skip"  # "skip" (count and go on) or "error"
    # --- model ---
    model: str = "pvt_v2_b0"
    drop_path: float | None = 0.0  # None: the variant's rate (0.1 / 0.3)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # PVTConfig fields, e.g. {"depths": [1, 1, 1, 1]}
    weights: str | None = None  # fine-tune from a checkpoint path or "official"
    ignore_head: bool | None = None  # None: drop the checkpoint's head when its class count differs
    # --- optimisation ---
    epochs: int = 12
    batch_size: int = 128  # GLOBAL batch (split evenly across processes)
    lr: float | None = None  # absolute peak lr; None: base_lr * batch_size / 512
    base_lr: float = 8e-3  # fashion_mnist: 2e-3 at batch 128
    weight_decay: float = 0.05
    warmup_epochs: float = 0.3
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    clip_grad: float | None = None  # None: the variant's value (1.0 for B3-B5, else off); 0: off
    smoothing: float = 0.1  # label smoothing without mixup (with mixup it is aug.smoothing)
    ema: bool = False
    ema_decay: float = 0.9998
    precision: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16
    # --- run ---
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # CPU threads per process (None: cores / processes on this node)
    ckpt_every: int = 0  # also write last.pth every N optimizer steps (0: at epoch ends only)
    max_steps: int | None = None  # stop after N optimizer steps (smoke runs)
    log_every: int = 20  # progress-bar refresh, in steps

    def replace(self, **changes: Any) -> ClassificationConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise PVTError(f"unknown config field(s) {unknown}; valid: {sorted(known)}")
        if isinstance(changes.get("aug"), dict):
            changes["aug"] = AugmentConfig(**changes["aug"])
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassificationConfig:
        """Inverse of :meth:`to_dict` (unknown keys, e.g. from a newer version, are an error)."""
        return cls().replace(**d)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 512


# Gradient clipping of the released ImageNet recipe, per variant (the released B3-B5 configs: --clip-grad 1.0).
CLIP_GRAD: dict[str, float] = {"pvt_v2_b3": 1.0, "pvt_v2_b4": 1.0, "pvt_v2_b5": 1.0}

FASHION_MNIST = ClassificationConfig()

IMAGENET = ClassificationConfig(
    recipe="imagenet",
    dataset="folder",
    input_size=224,
    aug=AugmentConfig(),  # RandAugment m9, jitter 0.4, bicubic, erasing 0.25, mixup 0.8 / cutmix 1.0, smoothing 0.1
    repeated_aug=3,
    model="pvt_v2_b2",
    drop_path=None,  # per variant: 0.1 (B0-B2), 0.3 (B3-B5)
    epochs=300,
    batch_size=1024,  # 8 GPUs x 128
    base_lr=5e-4,  # x batch / 512 = 1e-3
    weight_decay=0.05,
    warmup_epochs=5,
    warmup_lr=1e-6,
    min_lr=1e-5,
    clip_grad=None,  # per variant: 1.0 for B3-B5
    ema=False,
    precision="auto",
    ckpt_every=2000,
)

RECIPES: dict[str, ClassificationConfig] = {"fashion_mnist": FASHION_MNIST, "imagenet": IMAGENET}


def get_recipe(name: str) -> ClassificationConfig:
    """A named recipe (``fashion_mnist`` or ``imagenet``)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise PVTError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}") from None
