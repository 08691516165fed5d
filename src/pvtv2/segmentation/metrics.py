"""Segmentation metrics from a confusion matrix: mIoU, per-class IoU and accuracy, pixel accuracy (mmseg's
definitions: classes that appear neither in the ground truth nor in the prediction are left out of the means)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class ConfusionMatrix:
    """Accumulates ``(ground truth, prediction)`` pixel counts; ``ignore_index`` pixels are skipped.

    Args:
        num_classes: number of classes.
        ignore_index: ground-truth value that is not scored.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # rows: truth, columns: prediction

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted labels and targets of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        keep = target != self.ignore_index
        k = self.num_classes
        idx = target[keep].to(torch.int64).cpu() * k + pred[keep].to(torch.int64).cpu()
        self.matrix += torch.bincount(idx, minlength=k * k).reshape(k, k)

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (no-op without torch.distributed)."""
        from ..engine.distributed import reduce_sum

        self.matrix = reduce_sum(self.matrix)

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``miou``, ``macc``, ``pixel_acc``, ``miou_gt`` (over classes present in the ground truth), ``per_class``
        rows ``{"class", "iou", "acc", "pixels"}`` (NaN where a class never occurs) and ``confusions``: the largest
        off-diagonal entries, ``{"truth", "predicted", "pixels", "share"}`` (share of the true class's pixels)."""
        m = self.matrix.double()
        tp = m.diag()
        gt = m.sum(1)  # pixels of each class in the ground truth
        pred = m.sum(0)
        union = gt + pred - tp
        iou = tp / union  # NaN where union == 0
        acc = tp / gt
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        present = gt > 0
        return {
            "miou": _nanmean(iou),
            "miou_gt": _nanmean(iou[present]) if present.any() else float("nan"),
            "macc": _nanmean(acc),
            "pixel_acc": (tp.sum() / gt.sum()).item() if gt.sum() > 0 else float("nan"),
            "num_pixels": int(gt.sum().item()),
            "classes_present": int(present.sum().item()),
            "per_class": [
                {"class": names[i], "iou": iou[i].item(), "acc": acc[i].item(), "pixels": int(gt[i].item())}
                for i in range(self.num_classes)
            ],
            "confusions": self.confusions(names),
        }

    def confusions(self, names: Sequence[str], top: int = 20) -> list[dict[str, Any]]:
        """The ``top`` largest off-diagonal cells (pixels of class ``truth`` predicted as ``predicted``), largest
        first, with their share of ``truth``'s pixels: what a model mixes up."""
        off = self.matrix.clone()
        off.fill_diagonal_(0)
        gt = self.matrix.sum(1)
        values, flat = off.flatten().sort(descending=True, stable=True)  # ties in row-major order
        values, flat = values[:top], flat[:top]
        k = self.num_classes
        return [{"truth": names[int(i) // k], "predicted": names[int(i) % k], "pixels": int(v),
                 "share": int(v) / int(gt[int(i) // k])}
                for v, i in zip(values.tolist(), flat.tolist()) if v > 0]


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return x.mean().item() if x.numel() else float("nan")
