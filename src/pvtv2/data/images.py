"""Decode any image file a user may hold into 8-bit RGB, or say clearly why it cannot be read.

Conversions: grayscale (``L``, ``1``), palette (``P``), 16-bit and 32-bit integer (``I;16*``, ``I``: scaled to
the full 8-bit range), float (``F``), CMYK and YCbCr are converted to RGB; transparency (``RGBA``, ``LA``, ``P``
with a transparent colour) is composited over white. Truncated or corrupt files raise :class:`BadImage`.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import DataError, PVTError

log = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey pixels


class BadImage(DataError):
    """An image file that cannot be decoded (truncated, corrupt or not an image)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB version of ``img`` (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)  # (H, W)
        if mode.startswith("I;16"):
            a = a / 65535.0
        elif mode == "I":
            lo, hi = float(a.min()), float(a.max())
            a = a / 65535.0 if lo >= 0 and hi <= 65535 else (a - lo) / max(hi - lo, 1.0)
        else:  # float: assume [0, 1] when it fits, else min-max
            lo, hi = float(a.min()), float(a.max())
            a = a if lo >= 0 and hi <= 1 else (a - lo) / max(hi - lo, 1e-12)
        return Image.fromarray((a.clip(0, 1) * 255 + 0.5).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode ``path`` (optionally gzip-compressed, as Debian ships data: ``name.png.gz``) as 8-bit
    RGB. The one image decoder of the package: classification folders, detection and segmentation datasets,
    ``pvtv2 predict`` / ``detect`` / ``segment`` read their images here.

    Raises:
        BadImage: one line naming the file and the reason (missing, truncated, not an image, unreadable).
    """
    path = Path(path)
    if not path.is_file():
        raise BadImage(f"{path}: cannot read image: it does not exist")
    try:
        source: Path | io.BytesIO = io.BytesIO(gzip.decompress(path.read_bytes())) if path.suffix == ".gz" else path
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()  # decode now: truncation shows up here, not later in a worker
                return to_rgb(img)
    except UnidentifiedImageError:
        raise BadImage(f"{path}: cannot read image: not an image file PIL can read; replace or remove it") from None
    except (OSError, EOFError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (truncated?)" if "truncated" in reason.lower() or "broken" in reason.lower() else ""
        raise BadImage(f"{path}: cannot read image{hint}: {reason}; replace or remove it") from None


def read_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """:func:`load_image` as a ``(3, H, W)`` uint8 tensor (the dense tasks' input)."""
    pixels = np.asarray(load_image(path))  # (H, W, 3)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()  # -> (3, H, W)


def mmcv_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """mmcv's ``imresize`` (the released test pipelines' ``Resize``): 8-bit images ``(..., 3, H, W)`` through
    OpenCV's bilinear ``cv2.resize`` to ``size`` = (h, w), 8-bit out. Running a released mmdet / mmseg checkpoint
    through this is what gives mmdet's / mmseg's numbers (torchvision's float resampling is about one grey level off).

    Raises:
        PVTError: one line when OpenCV is not installed.
    """
    try:
        import cv2
    except ImportError:
        raise PVTError("mmcv's resize needs OpenCV: pip install opencv-python-headless") from None
    if image.dtype != torch.uint8:
        raise ValueError(f"mmcv_resize takes 8-bit images, got {image.dtype}")
    flat = image.reshape(-1, *image.shape[-3:]).permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (N, H, W, 3)
    out = [cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for im in flat]  # (h, w, 3) each
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).reshape(*image.shape[:-2], *size).to(image.device)


def released_resampling() -> str:
    """How a released mmdet / mmseg checkpoint resizes its test images here: ``"opencv"`` (:func:`mmcv_resize`, so
    that its numbers are mmdet's / mmseg's) when OpenCV is installed, else ``"torchvision"`` (float resampling,
    about one grey level off), said once in the log."""
    import importlib.util

    if importlib.util.find_spec("cv2") is not None:
        return "opencv"
    if not getattr(released_resampling, "said", False):
        log.info("OpenCV is not installed: released checkpoints see test images resized by torchvision, not as mmcv "
                 "does (scores differ from mmdet's in the fourth decimal); pip install opencv-python-headless")
        released_resampling.said = True  # type: ignore[attr-defined]
    return "torchvision"
