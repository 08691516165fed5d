"""Detection configuration and the named recipes of the released mmdet configs, with their transforms v2 pipelines.

- ``1x``: 12 epochs, lr x0.1 after epochs 8 and 11, shorter side 800 / longer <= 1333, flip, AdamW weight decay 1e-4
  on every parameter (no ``paramwise_cfg``), 500 warm-up iterations from 0.001 x lr; lr per detector from the
  registry (RetinaNet 1e-4, Mask R-CNN 2e-4) for a total batch of 16 (8 GPUs x 2 images).
- ``3x``: the paper's text: 36 epochs, steps after 27 and 33, multi-scale shorter side 640-800 (mmdet's "range"
  mode), weight decay 0.05.
- ``3x_mstrain``: the released ``*_3x_mstrain_fp16.py`` configs (ATSS, GFL, Cascade Mask R-CNN, Sparse R-CNN): the
  3x schedule with DETR's augmentation (:mod:`.data.augment`: shorter side 480-800 step 32; half the time resize to
  400 / 500 / 600, random crop 384-600, then that resize) and no weight decay on norms (``paramwise_cfg``).
- ``sparse_rcnn_3x``: the released Sparse R-CNN configs (``sparse_rcnn_pvt_v2_b2*_fpn_300_proposals_crop_mstrain_
  480-800_3x_coco.py``): ``3x_mstrain``'s schedule and augmentation with weight decay 1e-4 on every parameter (no
  ``paramwise_cfg``), gradient clipping at norm 1 and fp32 (no fp16 runner); lr 2.5e-5 from the registry.
- ``scenes`` (the default of ``pvtv2 det train``): the generated scenes benchmark (``pvtv2 data scenes``), 5 epochs:
  under an hour of one CPU core (RetinaNet-B0: 52 CPU minutes in fp32, 42 in bf16, plus the pretraining once), bf16
  autocast where the CPU has it natively (``precision="native"``), fp32 on other CPUs: train on the 4,000 train
  scenes at their own 256 px, score on the 500 held-out test scenes; the backbone pretrained on Fashion-MNIST here
  first (``backbone_weights="fashion-mnist"``, made once into the cache by the command line; ``--backbone-weights
  none``: random); RetinaNet's smallest anchor 2 strides wide (``anchor_scale=2``: half the objects are under
  32 px) and torchvision's v2 head (GroupNorm in the towers, ``head_norm="gn"``; GIoU box loss, ``box_loss="giou"``:
  1.3-1.5x the AP per epoch of the released head here); FPN and head 64 channels wide (released: 256), batch 8, AdamW lr 1e-3 (every detector), weight decay 1e-4
  but none on norms, 100 warm-up steps, cosine decay over 2,500 steps, evaluation every 500 steps (each epoch), one
  data-loader worker. Measured figures: docs/scenes.md.

Training images are resized by the data pipeline (``torchvision.transforms.v2``: boxes and masks follow), so the
detector's own transform only normalises them (``_skip_resize``); at evaluation the detector resizes to
``test_size`` / ``max_size`` itself and maps its boxes back to the original image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from ..engine.config import BackboneConfig, option
from ..engine.config import get_recipe as _get
from ..errors import PVTError
from .data.augment import KeepRatioResize, mstrain_crop_transforms


@dataclass(frozen=True)
class DetectionConfig(BackboneConfig):
    """Everything a detection run depends on (written to ``config.json`` and into every checkpoint)."""

    # --- data ---
    data: str | None = option(None, "training set: COCO instances .json, COCO root (with --split) or VOC folder; the "
                                    "word 'scenes': the generated benchmark (pvtv2 data scenes)")
    scenes: tuple[int, int, int] = option((4000, 500, 256), "--data scenes: train scenes, test scenes, canvas side")
    split: str | None = option(None, "split of a COCO root (e.g. train2017) or VOC ImageSets/Main list")
    images: str | None = option(None, "image folder of a COCO .json (none: the JSON's folder)")
    val_data: str | None = option(None, "evaluation set (same layouts); none: no evaluation")
    val_split: str | None = option(None, "split of the evaluation COCO root / VOC folder")
    val_images: str | None = option(None, "image folder of the evaluation COCO .json")
    train_sizes: tuple[int, ...] = option((800,), "shorter side(s) in training, one drawn per image")
    max_size: int = option(1333, "longer side at most (training and evaluation)")
    test_size: int = option(800, "shorter side at evaluation")
    flip_prob: float = option(0.5, "horizontal flip probability in training")
    crop_resize_sizes: tuple[int, ...] = option((), "with --crop-size: half the images are resized to one of these "
                                                "shorter sides, cropped and resized as the others (3x_mstrain)")
    crop_size: tuple[int, ...] = option((), "LOW,HIGH: random crop sides in pixels for those images (3x_mstrain)")
    # --- model ---
    arch: str = option("retinanet", "detector (pvtv2.detection.DETECTORS: retinanet, mask_rcnn, fcos, ...)")
    detector_options: dict[str, Any] = option({}, "a detector constructor argument, e.g. box_batch_size_per_image=128")
    arch_options: dict[str, dict[str, Any]] = option({}, "per detector: constructor arguments the recipe sets for that "
                                                         "detector only (--detector-options overrides them)", cli=False)
    score_thresh: float | None = option(None, "lowest score kept at evaluation (none: the detector's released test "
                                              "setting, 0.05 for most)")

    def builder_options(self) -> dict[str, Any]:
        """The constructor arguments of :attr:`arch`: the recipe's for this detector, then ``detector_options``."""
        return {**self.arch_options.get(self.arch, {}), **self.detector_options}

    def check(self) -> None:
        super().check()
        if not self.data:
            raise PVTError("det train needs --data PATH (a COCO .json, a COCO root with --split, or a VOC folder)")


ONE_X = DetectionConfig(
    recipe="1x",
    epochs=12,
    batch_size=16,
    base_batch=16,  # the registry's learning rates are for 8 GPUs x 2 images
    weight_decay=1e-4,
    decay_norms=True,
    schedule="step",
    milestones=(8 / 12, 11 / 12),
    warmup_steps=500,
    warmup_ratio=1e-3,
)

THREE_X = ONE_X.replace(recipe="3x", epochs=36, milestones=(27 / 36, 33 / 36), weight_decay=0.05,
                        train_sizes=tuple(range(640, 801)))

THREE_X_MSTRAIN = THREE_X.replace(recipe="3x_mstrain", train_sizes=tuple(range(480, 801, 32)),
                                  crop_resize_sizes=(400, 500, 600), crop_size=(384, 600),
                                  # mmdet's paramwise_cfg custom_keys of the released 3x_mstrain configs
                                  no_decay_keys=("absolute_pos_embed", "relative_position_bias_table", "norm"))

SPARSE_RCNN_3X = THREE_X_MSTRAIN.replace(recipe="sparse_rcnn_3x", weight_decay=1e-4, decay_norms=True, no_decay_keys=(),
                                        clip_grad=1.0, precision="fp32")

SCENES = ONE_X.replace(recipe="scenes", data="scenes", backbone_weights="fashion-mnist", train_sizes=(256,),
                       max_size=256, test_size=256, batch_size=8,
                       lr=1e-3, decay_norms=False, schedule="cosine", milestones=(), warmup_steps=100, epochs=None,
                       steps=2500, eval_every=500, detector_options={"fpn_channels": 64},
                       # loading a batch is 1-9% of a step's CPU time (pvtv2 det profile): one worker keeps ahead and
                       # leaves the cores to the step
                       workers=1,
                       # half the scenes' objects are under 32 px: the released smallest anchor (4 strides, 32 px on
                       # P3) overlaps 29.6% of them at IoU >= 0.5, 2 strides 75.5%; GroupNorm in the head's towers
                       # and the GIoU box loss (torchvision's RetinaNet v2): box AP 0.256 / AP50 0.390 after the 5
                       # epochs instead of 0.189 / 0.296, same CPU minutes (docs/scenes.md)
                       arch_options={"retinanet": {"anchor_scale": 2, "head_norm": "gn", "box_loss": "giou"}},
                       # bf16 autocast where the CPU has it natively: with the v2 head it learns as much per step as
                       # fp32 (held-out AP level at every epoch) in fewer CPU minutes; fp32 elsewhere (docs/scenes.md)
                       precision="native")

RECIPES: dict[str, DetectionConfig] = {"scenes": SCENES, "1x": ONE_X, "3x": THREE_X, "3x_mstrain": THREE_X_MSTRAIN,
                                       "sparse_rcnn_3x": SPARSE_RCNN_3X}


def get_recipe(name: str) -> DetectionConfig:
    """A named recipe (``scenes``, ``1x``, ``3x``, ``3x_mstrain`` or ``sparse_rcnn_3x``)."""
    return _get(RECIPES, name)


def train_transforms(cfg: DetectionConfig) -> v2.Compose:
    """Resize (random shorter side from ``train_sizes``, longer <= ``max_size``), flip, to float, drop degenerate
    boxes: the recipe's training augmentation on images, boxes and masks together (with a crop policy:
    :func:`.data.augment.mstrain_crop_transforms`)."""
    if cfg.crop_size:
        return mstrain_crop_transforms(cfg)
    return v2.Compose(
        [
            KeepRatioResize(cfg.train_sizes, cfg.max_size),
            v2.RandomHorizontalFlip(cfg.flip_prob),
            v2.ToDtype(torch.float32, scale=True),
            v2.SanitizeBoundingBoxes(),
        ]
    )


def eval_transforms() -> v2.Compose:
    """To float only: the detector resizes to the recipe's test size and returns boxes in original pixels."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])
