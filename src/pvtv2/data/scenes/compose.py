"""One scene: Fashion-MNIST items pasted on a crop of a photograph, with exact visible masks.

Each item is cut to its silhouette's box, scaled so that its longer side is drawn log-uniformly from
``item_sizes`` (12-192 px on a 256 px canvas: COCO's small, medium and large objects all occur), stretched by up to
25% in one direction, flipped half the time, shaded in a random colour and pasted with its silhouette as the alpha.
Later items occlude earlier ones. A top-down pass keeps an item only if at least ``min_visible`` of its silhouette is
still visible under the items kept above it; a dropped item leaves no pixel behind (what was under it shows), so
every visible object pixel is annotated and every box is the tight box of a visible mask.

All randomness comes from the generator passed in: the same generator state gives the same scene.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .sources import Sources, silhouette

MAX_STRETCH = 1.25  # an item's aspect ratio is changed by a factor in [1/1.25, 1.25]
CROP_SCALE = (0.35, 1.0)  # background crop side, as a fraction of the photo's shorter side
MIN_SHADE = 0.25  # an item's darkest pixel keeps this fraction of its colour (dark patterns stay visible)


@dataclass(frozen=True)
class Layout:
    """How scenes are laid out (the geometry; the split sizes and the seed are in :class:`ScenesSpec`).

    Args:
        size: canvas side in pixels.
        min_objects, max_objects: items pasted per scene (uniform), before occlusion drops any.
        item_sizes: longer side of an item in pixels, (smallest, largest), drawn log-uniformly.
        min_visible: an item with less of its silhouette visible is dropped (fully or almost fully occluded).
    """

    size: int = 256
    min_objects: int = 1
    max_objects: int = 8
    item_sizes: tuple[int, int] = (12, 192)
    min_visible: float = 0.25


@dataclass
class SceneObject:
    """One visible object: its class (0..9), the Fashion-MNIST image it came from and its visible mask."""

    label: int
    source: int
    mask: np.ndarray  # (S, S) bool


@dataclass
class Scene:
    """A composed scene: RGB pixels, the semantic label map (0 = background, 1..10) and the visible objects."""

    image: np.ndarray  # (S, S, 3) uint8
    semantic: np.ndarray  # (S, S) uint8
    objects: list[SceneObject]
    background: dict[str, Any] = field(default_factory=dict)  # photo name, crop box (x, y, side), flip
    dropped: int = 0  # items pasted but hidden behind others, left out


@dataclass
class _Paste:
    label: int
    source: int
    x: int
    y: int
    alpha: np.ndarray  # (h, w) bool
    colour: np.ndarray  # (h, w, 3) uint8


def _background(src: Sources, rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A random square crop of a random photo of the split, resized to the canvas, flipped half the time."""
    k = int(rng.integers(len(src.photos)))
    photo = src.photos[k]
    w, h = photo.size
    side = rng.uniform(*CROP_SCALE) * min(w, h)
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    flip = bool(rng.random() < 0.5)
    crop = photo.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    info = {"photo": src.photo_names[k], "crop": [round(x0, 2), round(y0, 2), round(side, 2)], "flip": flip}
    return np.array(crop), info


def _item(src: Sources, index: int, rng: np.random.Generator, layout: Layout) -> _Paste | None:
    """Item ``index`` scaled, stretched, flipped and shaded, placed at a random position inside the canvas."""
    grey = src.items[index]
    sil = silhouette(grey)
    rows, cols = np.flatnonzero(sil.any(1)), np.flatnonzero(sil.any(0))
    if not len(rows):
        return None  # a blank image (none in Fashion-MNIST)
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    grey, sil = grey[r0:r1, c0:c1], sil[r0:r1, c0:c1]  # cut to the silhouette's box
    lo, hi = layout.item_sizes
    longer = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    stretch = math.exp(rng.uniform(-math.log(MAX_STRETCH), math.log(MAX_STRETCH)))
    scale = longer / max(sil.shape)
    h = int(np.clip(round(sil.shape[0] * scale * math.sqrt(stretch)), 1, layout.size))
    w = int(np.clip(round(sil.shape[1] * scale / math.sqrt(stretch)), 1, layout.size))
    if rng.random() < 0.5:
        grey, sil = grey[:, ::-1], sil[:, ::-1]
    hue, sat, val = rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.45, 1.0)
    x, y = int(rng.integers(layout.size - w + 1)), int(rng.integers(layout.size - h + 1))

    bilinear = Image.Resampling.BILINEAR
    shade = np.asarray(Image.fromarray(np.ascontiguousarray(grey)).resize((w, h), bilinear), dtype=np.float32)
    alpha = np.asarray(Image.fromarray(np.ascontiguousarray(sil) * np.uint8(255)).resize((w, h), bilinear)) >= 128
    if not alpha.any():
        return None
    shade = MIN_SHADE + (1 - MIN_SHADE) * shade / max(float(shade.max()), 1.0)  # (h, w) in [MIN_SHADE, 1]
    tint = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255
    colour = (shade[:, :, None] * tint + 0.5).astype(np.uint8)  # (h, w) x (3,) -> (h, w, 3)
    return _Paste(int(src.labels[index]), int(index), x, y, alpha, colour)


def compose(src: Sources, items: np.ndarray, rng: np.random.Generator, layout: Layout) -> Scene:
    """The scene made of ``items`` (Fashion-MNIST indices, bottom first) on a background, drawn from ``rng``."""
    size = layout.size
    image, background = _background(src, rng, size)
    pastes = [p for p in (_item(src, int(i), rng, layout) for i in items) if p is not None]

    # Top-down: an item is kept if enough of it shows under the items kept above it.
    owner = np.zeros((size, size), dtype=np.int16)  # 0 = background, k + 1 = pastes[k]
    covered = np.zeros((size, size), dtype=bool)
    kept = []
    for k in range(len(pastes) - 1, -1, -1):
        p = pastes[k]
        h, w = p.alpha.shape
        region = (slice(p.y, p.y + h), slice(p.x, p.x + w))
        visible = p.alpha & ~covered[region]
        if visible.sum() < layout.min_visible * p.alpha.sum():
            continue
        owner[region][visible] = k + 1
        covered[region] |= p.alpha
        kept.append(k)
    kept.reverse()

    lut = np.zeros(len(pastes) + 1, dtype=np.uint8)  # owner -> semantic label (category + 1)
    objects = []
    for k in kept:
        p = pastes[k]
        h, w = p.alpha.shape
        region = (slice(p.y, p.y + h), slice(p.x, p.x + w))
        mine = owner[region] == k + 1
        image[region][mine] = p.colour[mine]
        lut[k + 1] = p.label + 1
        objects.append(SceneObject(p.label, p.source, owner == k + 1))
    return Scene(image, lut[owner], objects, background, dropped=len(pastes) - len(kept))
