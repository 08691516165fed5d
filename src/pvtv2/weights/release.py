"""The authors' released ImageNet-1K weights (GitHub whai362/PVT, release "v2"): where each file is, what it scores
and how its inputs were prepared. Release data only: the architecture of each name is in
:mod:`pvtv2.models.registry`, training recipes in :mod:`pvtv2.classification.recipes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RELEASE_URL = "https://github.com/whai362/PVT/releases/download/v2/{name}.pth"

# The released evaluation protocol: resize the shorter side to 256 (bicubic), centre-crop 224, ImageNet mean/std.
IMAGENET_EVAL: dict[str, Any] = {"kind": "imagenet", "size": 224, "crop_pct": 0.875, "interpolation": "bicubic"}


@dataclass(frozen=True)
class Release:
    """One released checkpoint (1000-class ImageNet head).

    Attributes:
        name: the registered model name it fits.
        url: download address.
        top1: ImageNet-1K top-1 at 224 as the authors' README gives it.
        paper_top1: the paper's figure (Table 2), where it differs from ``top1``.
        preprocess: the evaluation preprocessing the figure was measured with.
    """

    name: str
    url: str
    top1: float
    paper_top1: float | None = None
    preprocess: dict[str, Any] = field(default_factory=lambda: dict(IMAGENET_EVAL))


def _row(name: str, top1: float, **extra: Any) -> Release:
    return Release(name, RELEASE_URL.format(name=name), top1, **extra)


RELEASES: dict[str, Release] = {r.name: r for r in (
    _row("pvt_v2_b0", 70.5),
    _row("pvt_v2_b1", 78.7),
    _row("pvt_v2_b2", 82.0),
    _row("pvt_v2_b2_li", 82.1),
    _row("pvt_v2_b3", 83.1, paper_top1=83.2),
    _row("pvt_v2_b4", 83.6),
    _row("pvt_v2_b5", 83.8),
)}


def release(name: str) -> Release | None:
    """The released checkpoint of ``name``, or ``None`` when the authors released none."""
    return RELEASES.get(name)
