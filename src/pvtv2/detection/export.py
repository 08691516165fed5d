"""What of a torchvision detector goes into ONNX: the dense network (backbone, FPN, heads), not the post-processing.

Anchor decoding, score thresholds, NMS and RoI heads depend on the data (how many boxes survive), which ONNX
graphs with a dynamic image size do not carry well; deployments run those steps in their own code (or use
torchvision's, on the exported outputs). The input is the image as the detector's transform hands it to the
backbone: ImageNet-normalised, any size (torchvision pads to a multiple of 32; so should the caller).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FCOS, MaskRCNN, RetinaNet

from ..export import ExportSpec


class DenseDetector(nn.Module):
    """``(B, 3, H, W)`` normalised images -> a torchvision detector's raw dense outputs.

    RetinaNet: ``cls_logits`` ``(B, A, K)`` and ``bbox_regression`` ``(B, A, 4)`` over all anchors of P3-P7 (level
    by level, as torchvision orders them); FCOS adds ``bbox_ctrness`` ``(B, A, 1)``. Mask R-CNN: the FPN maps
    ``p2``..``p6`` and the RPN's ``objectness_i`` / ``rpn_deltas_i`` per level (the RoI heads need proposals).

    Args:
        detector: a torchvision RetinaNet, FCOS or Mask R-CNN built by :mod:`pvtv2.detection` (weights shared).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        if not isinstance(detector, (RetinaNet, FCOS, MaskRCNN)):
            raise TypeError(f"cannot export {type(detector).__name__}: expected RetinaNet, FCOS or MaskRCNN")
        self.detector = detector

    def output_names(self) -> tuple[str, ...]:
        det = self.detector
        if isinstance(det, MaskRCNN):
            maps = tuple(f"p{s.bit_length() - 1}" for s in det.backbone.strides)  # stride 4 -> p2 ... 64 -> p6
            levels = range(len(maps))
            return maps + tuple(f"objectness_{i}" for i in levels) + tuple(f"rpn_deltas_{i}" for i in levels)
        return ("cls_logits", "bbox_regression") + (("bbox_ctrness",) if isinstance(det, FCOS) else ())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        det = self.detector
        feats = list(det.backbone(images).values())  # FPN maps, (B, 256, H/s, W/s)
        if isinstance(det, MaskRCNN):
            objectness, deltas = det.rpn.head(feats)  # per level: (B, A, h, w), (B, 4A, h, w)
            return (*feats, *objectness, *deltas)
        return tuple(det.head(feats).values())

    def export_spec(self, backbone: bool = False) -> ExportSpec:
        """The :func:`pvtv2.export.export_spec` hook."""
        if backbone:
            raise TypeError("--backbone exports a classifier's stage maps; a detector exports its dense outputs")
        return ExportSpec(self, self.output_names())
