"""Test-time inference as in mmseg: keep-ratio resize to the test scale (shorter side 512, longer <= 2048), run the
model on the whole image or on sliding windows, resize the logits back to the original size."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import mmcv_resize
from .transforms import normalize_image, rescale_size

Mode = Literal["whole", "slide"]


def _windows(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """Start/end of the windows along one side (the last one flush with the border), mmseg's grid."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(n):
        end = min(i * stride + crop, size)
        out.append((max(end - crop, 0), end))
    return out


def slide_logits(model: nn.Module, x: torch.Tensor, num_classes: int, crop: int, stride: int) -> torch.Tensor:
    """Average the logits of overlapping ``crop x crop`` windows taken every ``stride`` pixels: ``(B, K, H, W)``."""
    B, _, H, W = x.shape
    logits = x.new_zeros(B, num_classes, H, W)
    count = x.new_zeros(1, 1, H, W)
    for y1, y2 in _windows(H, crop, stride):
        for x1, x2 in _windows(W, crop, stride):
            logits[:, :, y1:y2, x1:x2] += model(x[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    image: torch.Tensor,
    *,
    scale: tuple[int, int] | None = (2048, 512),
    mode: Mode = "whole",
    crop: int = 512,
    stride: int = 341,
    flip: bool = False,
    amp: bool = True,
) -> torch.Tensor:
    """Logits ``(B, K, H, W)`` at the original size of ``image``.

    Args:
        model: a segmentation model returning input-sized logits (:class:`SemanticFPN`), in eval mode.
        image: ``(B, 3, H, W)`` uint8 (normalised here) or already-normalised float images.
        scale: keep-ratio test scale (long, short); None runs at the original size.
        mode: ``whole`` (one forward pass) or ``slide`` (windows of ``crop`` every ``stride`` pixels).
        crop, stride: sliding-window size and step (512, 341 in mmseg's ADE20K configs).
        flip: also run on the mirrored image and average.
        amp: float16 autocast on CUDA (ignored on CPU).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    device = next(model.parameters()).device
    x = image.to(device)
    H, W = x.shape[-2:]
    size = rescale_size(H, W, scale) if scale is not None else (H, W)
    if not x.is_floating_point():
        if size != (H, W) and getattr(model, "resampling", "torchvision") == "opencv":
            x = mmcv_resize(x, size)  # a released mmseg model: the 8-bit image resized as mmseg's pipeline does
        x = normalize_image(x)
    if x.shape[-2:] != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    num_classes = int(getattr(model, "num_classes", 0))
    autocast = torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda" else nullcontext()

    def run(inp: torch.Tensor) -> torch.Tensor:
        with autocast:
            if mode == "slide":
                return slide_logits(model, inp, num_classes, crop, stride)
            return model(inp).float()

    logits = run(x)
    if flip:
        logits = (logits + run(x.flip(-1)).flip(-1)) / 2
    if logits.shape[-2:] != (H, W):
        logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
    return logits


def predict(model: nn.Module, image: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """Label map(s) ``(B, H, W)`` (or ``(H, W)`` for one ``(3, H, W)`` image); arguments of :func:`predict_logits`."""
    single = image.ndim == 3
    logits = predict_logits(model, image[None] if single else image, **kwargs)  # type: ignore[arg-type]
    labels = logits.argmax(1)
    return labels[0] if single else labels
