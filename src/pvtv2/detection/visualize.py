"""Drawing detections (boxes, masks, labels, scores) with torchvision.utils, saved atomically as PNG."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .._io import atomic_write

_FILLED_LABELS = "fill_labels" in inspect.signature(draw_bounding_boxes).parameters
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0),
]


def _font() -> str | None:
    """A TrueType font for readable labels (matplotlib ships DejaVu Sans), or None for PIL's tiny default."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # noqa: BLE001 - drawing must not fail for want of a font
        return None


def draw_detections(
    image: torch.Tensor,
    prediction: dict[str, torch.Tensor],
    class_names: Sequence[str],
    *,
    score_thresh: float = 0.5,
    mask_thresh: float = 0.5,
) -> torch.Tensor:
    """Draw the detections of ``prediction`` scoring at least ``score_thresh`` on ``image``.

    Args:
        image: ``(3, H, W)`` uint8 (or float in [0, 1]) image the boxes refer to.
        prediction: a torchvision detector output (``boxes`` XYXY, ``labels``, ``scores``, optional ``masks``
            ``(N, 1, H, W)`` probabilities).
        class_names: names by label (index 0 = background).
        score_thresh: lowest score drawn.
        mask_thresh: mask probability that counts as inside.

    Returns:
        ``(3, H, W)`` uint8 image.
    """
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    keep = prediction["scores"] >= score_thresh
    boxes, labels, scores = prediction["boxes"][keep], prediction["labels"][keep], prediction["scores"][keep]
    colors = [_PALETTE[int(lb) % len(_PALETTE)] for lb in labels]
    if "masks" in prediction and keep.any():
        masks = prediction["masks"][keep][:, 0] >= mask_thresh  # (N, 1, H, W) -> (N, H, W) bool
        image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colors)
    names = [class_names[int(lb)] if int(lb) < len(class_names) else str(int(lb)) for lb in labels]
    text = [f"{n} {s:.2f}" for n, s in zip(names, scores.tolist())]
    if len(boxes) == 0:
        return image
    font = _font()
    size = max(10, min(image.shape[-2:]) // 30)
    # black text on a filled label box where torchvision has it (0.21+); before, the text takes the box's colour
    label_style = {"label_colors": "black", "fill_labels": True} if _FILLED_LABELS else {}
    return draw_bounding_boxes(image, boxes, text, colors=colors, width=max(2, size // 6), font=font,
                               font_size=size if font else None, **label_style)


def save_png(image: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a ``(3, H, W)`` uint8 image as PNG, atomically."""
    from PIL import Image

    pixels = image.permute(1, 2, 0).contiguous().cpu().numpy()  # (3, H, W) -> (H, W, 3)
    return atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


@torch.no_grad()
def prediction_rows(model: torch.nn.Module, dataset: Any, class_names: Sequence[str], *, n: int = 4,
                    score_thresh: float = 0.3) -> list[list[tuple[str, torch.Tensor]]]:
    """For the first ``n`` images of ``dataset`` (float images in [0, 1]): the ground truth beside the detections
    scoring at least ``score_thresh`` (rows for :func:`pvtv2._io.save_image_grid`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for i in range(min(n, len(dataset))):
        image, target = dataset[i]
        image = image.as_subclass(torch.Tensor)
        pred = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        truth = {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"],
                 "scores": torch.ones(len(target["labels"]))}
        if "masks" in target and "masks" in pred:
            truth["masks"] = target["masks"].as_subclass(torch.Tensor)[:, None].float()
        kept = int((pred["scores"] >= score_thresh).sum())
        rows.append([(f"ground truth: {len(truth['labels'])} objects", draw_detections(image, truth, class_names)),
                     (f"predicted: {kept} with score >= {score_thresh}",
                      draw_detections(image, pred, class_names, score_thresh=score_thresh))])
    model.train(was_training)
    return rows
