"""The detector registry: one record per architecture, read by the CLI, training, export and the cost tables.

Adding a detector is one module that defines its builder and ends with ``register(DetectorSpec(...))``, plus its
import in :mod:`pvtv2.detection` (``_DETECTOR_MODULES``). Every builder shares one keyword-only signature::

    build(*, backbone="pvt_v2_b0", num_classes=80, backbone_weights=None, trainable_stages=None, norm_eval=False,
          backbone_overrides=None, **options) -> nn.Module

and returns a detector with torchvision's interface: ``model(images, targets)`` in training mode returns a dict of
losses; ``model(images)`` in eval mode returns one ``{"boxes" (N, 4) XYXY in input pixels, "labels" (N,), "scores"
(N,)[, "masks" (N, 1, H, W) probabilities]}`` per image. ``num_classes`` counts object categories only (COCO: 80,
as mmdet and detectron2 count them); object labels are 1..K in targets and outputs (0 is never an object).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PVTError

DenseForward = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class DetectorSpec:
    """What the package needs to know about one detector architecture.

    Attributes:
        name: the name used on the command line (``--arch``) and in checkpoints.
        build: the keyword-only builder (see the module docstring).
        lr: AdamW learning rate of the released config, for a total batch of 16 images.
        masks: trained on instance masks and predicts them (instance segmentation).
        dense: ``(model, normalised images (B, 3, H, W)) -> {name: tensor}``: the network without anchors, box
            decoding, NMS or RoI sampling, in a fixed order: what ONNX export carries.
        cost: ``(model, images) -> {name: tensor}``: the forward pass the paper's GFLOPs count (mmdet's
            ``forward_dummy``, e.g. R-CNN heads on a fixed number of RoIs); ``None``: ``dense``.
        from_mmdet: ``(mmdet state dict, our model) -> our state dict``: reads a checkpoint of the released
            mmdet 2.x detector of this kind (class order, background index, key names); ``None``: not supported.
        description: one line for ``--help`` and the docs.
    """

    name: str
    build: Callable[..., nn.Module]
    lr: float
    dense: DenseForward
    masks: bool = False
    cost: DenseForward | None = None
    from_mmdet: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None
    description: str = ""

    def cost_forward(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The forward pass of the cost count (``cost``, or ``dense`` where the two are the same)."""
        return (self.cost or self.dense)(model, images)


DETECTORS: dict[str, DetectorSpec] = {}


def register(spec: DetectorSpec) -> DetectorSpec:
    """Add ``spec`` to the registry (a second registration of the same name is an error)."""
    if spec.name in DETECTORS:
        raise ValueError(f"detector {spec.name!r} is already registered")
    DETECTORS[spec.name] = spec
    return spec


def get_detector(name: str) -> DetectorSpec:
    """The registry record of ``name``; an unknown name raises one line listing the known ones."""
    try:
        return DETECTORS[name]
    except KeyError:
        raise PVTError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}") from None


def build_detector(arch: str, **kwargs: object) -> nn.Module:
    """``build_detector("retinanet", backbone="pvt_v2_b0", num_classes=20)``: the builder of ``arch`` by name."""
    return get_detector(arch).build(**kwargs)
