"""Semantic segmentation configuration and the named recipe of the released Semantic FPN configs.

- ``ade20k_40k`` (the released ``fpn_pvt_v2_*_ade20k_40k`` configs): 40k iterations of batch 16 (8 GPUs x 2), AdamW
  lr 2e-4 (the paper's text says 1e-4) and weight decay 1e-4 on every parameter, poly decay (power 0.9) to 0;
  random resize (2048x512 x 0.5-2.0) + crop 512 (cat_max_ratio 0.75) + flip + photometric distortion; test: shorter
  side 512; evaluation every 4000 iterations.
- ``scenes`` (the default of ``pvtv2 seg train``): the generated scenes benchmark (``pvtv2 data scenes``), 5 epochs
  (about an hour of one CPU core, plus the pretraining once): the 4,000 train scenes resized by 0.5-2.0 around their
  256 px and cropped to 256, the 500 held-out test scenes scored at 256; the backbone pretrained on Fashion-MNIST
  here first (``backbone_weights="fashion-mnist"``, as detection's); FPN and decoder 64 channels wide (released:
  256 / 128), batch 8, AdamW lr 1e-3, 100 warm-up steps, poly decay over 2,500 steps, evaluation every 500 steps
  (each epoch), one data-loader worker. Measured figures: docs/scenes.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.config import BackboneConfig, option
from ..engine.config import get_recipe as _get
from ..errors import PVTError


@dataclass(frozen=True)
class SegmentationConfig(BackboneConfig):
    """Everything a Semantic FPN run depends on."""

    # --- data ---
    data: str | None = option(None, "dataset root (scenes, ADE20K, VOC, or an image folder with --masks); the word "
                                    "'scenes': the generated benchmark (pvtv2 data scenes)")
    scenes: tuple[int, int, int] = option((4000, 500, 256), "--data scenes: train scenes, test scenes, canvas side")
    layout: str = option("auto", "dataset layout (auto: manifest.json = scenes, images/+annotations/ = ADE20K, "
                                 "JPEGImages/ = VOC, else folder)", choices=("auto", "scenes", "ade20k", "voc", "folder"))
    train_split: str | None = option(None, "scenes: train, ADE20K: training (the defaults); VOC: an ImageSets split "
                                           "(none: every mask)")
    val_data: str | None = option(None, "evaluation root (none: --data with --val-split)")
    val_split: str | None = option(None, "evaluation split (scenes: test, ADE20K: validation); none without "
                                         "--val-data: no evaluation")
    masks: str | None = option(None, "mask folder of the folder layout (masks named like the images)")
    num_classes: int | None = option(None, "classes of the folder layout")
    reduce_zero_label: bool = option(False, "folder layout: label 0 is ignored (as ADE20K's)")
    crop_size: int = option(512, "training crop")
    scale: tuple[int, int] = option((2048, 512), "keep-ratio resize bound (long short) before the random ratio")
    ratio_range: tuple[float, float] = option((0.5, 2.0), "random resize ratio range")
    cat_max_ratio: float = option(0.75, "re-draw crops where one class covers more than this (1: off)")
    test_scale: tuple[int, int] = option((2048, 512), "evaluation keep-ratio resize bound (long short)")
    eval_mode: str = option("whole", "evaluation on the whole image or sliding windows", choices=("whole", "slide"))
    # --- model ---
    fpn_channels: int = option(256, "FPN width (released: 256)")
    head_channels: int = option(128, "decoder branch width (released: 128)")
    head_norm: str = option("bn", "decoder norm: bn (released: SyncBN) or gn (GroupNorm 32: small batches)",
                            choices=("bn", "gn"))
    head_dropout: float = option(0.1, "dropout before the classifier")

    def check(self) -> None:
        super().check()
        if not self.data:
            raise PVTError("seg train needs --data ROOT (ADE20K, VOC, or an image folder with --masks)")


ADE20K_40K = SegmentationConfig(
    recipe="ade20k_40k",
    steps=40_000,
    batch_size=16,
    base_lr=2e-4,
    base_batch=16,
    weight_decay=1e-4,
    decay_norms=True,
    schedule="poly",
    power=0.9,
    min_lr_ratio=0.0,
    warmup_ratio=1.0,
    eval_every=4000,
    ckpt_every=4000,
    log_every=50,
    workers=4,
)

SCENES = ADE20K_40K.replace(recipe="scenes", data="scenes", backbone_weights="fashion-mnist", steps=2500,
                            batch_size=8, base_lr=None, lr=1e-3, warmup_steps=100, warmup_ratio=1e-3, crop_size=256,
                            scale=(256, 256), test_scale=(256, 256), fpn_channels=64, head_channels=64, eval_every=500,
                            ckpt_every=0, log_every=20,
                            workers=1)  # loading is 9% of a step's CPU time (seg profile): one worker keeps ahead

RECIPES: dict[str, SegmentationConfig] = {"scenes": SCENES, "ade20k_40k": ADE20K_40K}


def get_recipe(name: str) -> SegmentationConfig:
    """A named recipe (``scenes`` or ``ade20k_40k``)."""
    return _get(RECIPES, name)
