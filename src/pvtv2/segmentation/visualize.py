"""Colour overlays of label maps with a legend (torchvision's ``draw_segmentation_masks`` + matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import draw_segmentation_masks

from .._io import atomic_write
from .classes import palette_for


def overlay(
    image: torch.Tensor, labels: torch.Tensor, palette: Sequence[tuple[int, int, int]], *, alpha: float = 0.5,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Blend one colour per class over ``image`` ``(3, H, W)`` uint8 for label map ``labels`` ``(H, W)``; classes
    coloured black (VOC's background) are left unpainted."""
    classes = [int(c) for c in torch.unique(labels) if int(c) != ignore_index and tuple(palette[int(c)]) != (0, 0, 0)]
    if not classes:
        return image.clone()
    masks = torch.stack([labels == c for c in classes])  # (N, H, W) bool
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=[tuple(palette[c]) for c in classes])


def save_visualization(
    path: str | os.PathLike[str],
    image: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    *,
    palette: Sequence[tuple[int, int, int]] | None = None,
    alpha: float = 0.5,
    title: str | None = None,
    ignore_index: int = 255,
    max_legend: int = 20,
) -> Path:
    """Write a PNG of the overlay with a legend of the classes it shows (largest first), atomically.

    Args:
        path: output file (PNG).
        image: ``(3, H, W)`` uint8 image.
        labels: ``(H, W)`` label map of the same size.
        class_names: names indexed by label.
        palette: RGB colour per label (default: the VOC colour map; black only for a background class).
        alpha: opacity of the colours.
        title: figure title.
        ignore_index: label drawn without colour.
        max_legend: at most this many legend entries.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    palette = palette or palette_for(list(class_names))
    labels = labels.cpu()
    blended = overlay(image.cpu(), labels, palette, alpha=alpha, ignore_index=ignore_index)
    ids, counts = torch.unique(labels[labels != ignore_index], return_counts=True)
    order = [int(ids[i]) for i in torch.argsort(counts, descending=True)][:max_legend]
    total = max(int(counts.sum()), 1)
    handles = [
        Patch(color=[v / 255 for v in palette[c]], label=f"{class_names[c]} ({100 * int((labels == c).sum()) / total:.0f}%)")
        for c in order
    ]
    h, w = labels.shape
    legend_w = max(1.5, 0.6 + 0.07 * max((len(p.get_label()) for p in handles), default=0))  # inches, ~8 pt text
    height = max(3.0, h / 100, 0.6 + 0.2 * len(handles))  # inches: the image at 100 dpi, or the legend's rows
    fig = Figure(figsize=(height * w / h + legend_w, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(blended.permute(1, 2, 0).numpy())  # (3, H, W) -> (H, W, 3)
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    if handles:  # beside the image, in room the layout makes for it
        fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def prediction_rows(model: torch.nn.Module, dataset: Any, class_names: Sequence[str], *, n: int = 4,
                    scale: tuple[int, int] | None = (2048, 512)) -> list[list[tuple[str, torch.Tensor]]]:
    """For the first ``n`` samples of ``dataset`` (read without transforms): the image, the ground truth and the
    prediction as colour overlays (rows for :func:`pvtv2._io.save_image_grid`)."""
    from .inference import predict

    palette = palette_for(list(class_names))
    was_training = model.training
    model.eval()
    rows = []
    for i in range(min(n, len(dataset))):
        sample = dataset.load(i)
        image, truth = sample["image"].as_subclass(torch.Tensor), sample["mask"].as_subclass(torch.Tensor)
        pred = predict(model, image, scale=scale).cpu()
        acc = float((pred == truth)[truth != 255].float().mean()) if (truth != 255).any() else float("nan")
        rows.append([("image", image), ("ground truth", overlay(image, truth, palette)),
                     (f"predicted (pixel acc {100 * acc:.0f}%)", overlay(image, pred, palette))])
    model.train(was_training)
    return rows
