"""What of a detector goes into ONNX: the dense network (backbone, FPN, heads), not the post-processing.

Anchor decoding, score thresholds, NMS and RoI heads depend on the data (how many boxes survive), which ONNX
graphs with a dynamic image size do not carry well; deployments run those steps in their own code (or use
torchvision's, on the exported outputs). The input is the image as the detector's transform hands it to the
backbone: ImageNet-normalised, any size (torchvision pads to a multiple of 32; so should the caller).
"""

from __future__ import annotations

import torch
from torch import nn

from ...export import ExportSpec
from ..registry import DetectorSpec, get_detector


class DenseDetector(nn.Module):
    """``(B, 3, H, W)`` normalised images -> a detector's raw dense outputs, as its registry record names them
    (:attr:`DetectorSpec.dense`; e.g. RetinaNet's ``cls_logits`` and ``bbox_regression`` over all anchors).

    Args:
        detector: a detector built by :mod:`pvtv2.detection` (weights shared, not copied).
        arch: its registered name (``load_detector`` returns it in the checkpoint's description).
    """

    def __init__(self, detector: nn.Module, arch: str) -> None:
        super().__init__()
        self.detector = detector
        self.spec: DetectorSpec = get_detector(arch)

    def output_names(self) -> tuple[str, ...]:
        """The names of the outputs, from one small forward pass."""
        param = next(self.detector.parameters())
        with torch.no_grad():
            return tuple(self.spec.dense(self.detector, param.new_zeros(1, 3, 64, 64)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.spec.dense(self.detector, images).values())

    def export_spec(self, backbone: bool = False) -> ExportSpec:
        """The :func:`pvtv2.export.export_spec` hook."""
        if backbone:
            raise TypeError("--backbone exports a classifier's stage maps; a detector exports its dense outputs")
        return ExportSpec(self, self.output_names())
