"""Sigmoid classification heads with one output per object class, as mmdet lays them out.

torchvision's RetinaNet and FCOS index their logits by label, so label 0 would need an output of its own that never
fires. Here the logits have ``num_classes = K`` channels and object labels 1..K map to channel ``label - 1``, which
keeps the parameter count (and the weights) the same as the released detectors'.
"""

from __future__ import annotations

from typing import Any

import torch


def shift_labels(targets: list[dict[str, torch.Tensor]], by: int) -> list[dict[str, torch.Tensor]]:
    """A copy of ``targets`` with ``labels`` moved by ``by``."""
    return [{**t, "labels": t["labels"] + by} for t in targets]


class ForegroundLabels:
    """Mix-in for torchvision's one-stage detectors (``RetinaNet``, ``FCOS`` and subclasses): logits channel
    ``label - 1`` in the losses, ``channel + 1`` as the label of a detection."""

    def compute_loss(self, targets: list[dict[str, torch.Tensor]], *args: Any) -> dict[str, torch.Tensor]:
        return super().compute_loss(shift_labels(targets, -1), *args)  # type: ignore[misc]

    def postprocess_detections(self, *args: Any) -> list[dict[str, torch.Tensor]]:
        return shift_labels(super().postprocess_detections(*args), 1)  # type: ignore[misc]
