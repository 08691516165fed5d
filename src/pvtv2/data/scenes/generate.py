"""Writing one split of scenes to disk: PNG images, semantic label PNGs and a COCO instances file.

Scene ``i`` of a split depends only on (seed, split, i): the number of items of each scene and the order in which
the split's Fashion-MNIST images are used come from their own seeded streams, so the first 100 scenes of a
4,000-scene set are the 100 scenes of a 100-scene set, and the test scenes do not depend on the number of train
scenes. Each Fashion-MNIST image is used at most once until the split's pool is exhausted.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..fashion_mnist import CLASSES
from .compose import Layout, Scene, compose
from .sources import SPLITS, Sources

# COCO's object size ranges (pycocotools' areaRng): small < 32^2 <= medium < 96^2 <= large, in pixels of area.
SMALL, LARGE = 32**2, 96**2
_STREAM = {"order": 0, "count": 1, "scene": 2}


@dataclass(frozen=True)
class ScenesSpec:
    """Everything the generated files depend on (with the generator version, it names the cache directory).

    Args:
        train: scenes in the train split (items from Fashion-MNIST's 60k training images).
        test: scenes in the test split (items from its 10k test images).
        seed: the random seed.
        layout: canvas size, items per scene, item sizes, occlusion limit.
    """

    train: int = 4000
    test: int = 500
    seed: int = 0
    layout: Layout = field(default_factory=Layout)

    def count(self, split: str) -> int:
        """Scenes in ``split``."""
        return {"train": self.train, "test": self.test}[split]


def rng(seed: int, split: str, stream: str, index: int = 0) -> np.random.Generator:
    """The generator of one stream of one split (``order`` of the items, item ``count``s, ``scene`` ``index``)."""
    return np.random.default_rng([seed, SPLITS.index(split), _STREAM[stream], index])


def plan_items(spec: ScenesSpec, split: str, pool: int) -> list[np.ndarray]:
    """The Fashion-MNIST indices of every scene of ``split`` (bottom item first)."""
    lay = spec.layout
    counts = [int(rng(spec.seed, split, "count", i).integers(lay.min_objects, lay.max_objects + 1))
              for i in range(spec.count(split))]
    needed = sum(counts)
    order_rng = rng(spec.seed, split, "order")
    order = np.concatenate([order_rng.permutation(pool) for _ in range(max(1, -(-needed // pool)))])
    ends = np.cumsum(counts)
    return [order[end - n : end] for n, end in zip(counts, ends)]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)  # photos barely compress further; 3x faster
    return buf.getvalue()


def annotation(obj_mask: np.ndarray) -> dict[str, Any]:
    """COCO fields of one visible mask: RLE (counts as str), its area and its tight box (x, y, w, h)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(obj_mask.astype(np.uint8)))
    bbox = [int(v) for v in coco_mask.toBbox(rle)]
    return {"bbox": bbox, "area": int(coco_mask.area(rle)),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}}


def _write(root: Path, rel: str, data: bytes, records: dict[str, list]) -> None:
    """Write ``data`` to ``root / rel`` and remember its size and SHA-256 for the manifest."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    records[rel] = [len(data), hashlib.sha256(data).hexdigest()]


@dataclass
class _Rendered:
    """What the main process keeps of one written scene."""

    image: dict[str, Any]  # COCO image entry
    annotations: list[dict[str, Any]]  # COCO annotations without ids
    files: dict[str, list]


_WORKER: dict[str, Any] = {}  # (root, spec, split, sources) in each worker process


def _init_worker(root: Path, spec: ScenesSpec, split: str, src: Sources) -> None:
    _WORKER.update(root=root, spec=spec, split=split, src=src)


def _render(start: int, plan: list[np.ndarray]) -> list[_Rendered]:
    """Compose and write scenes ``start, start + 1, ...`` (one chunk of the plan)."""
    root, spec, split, src = (_WORKER[k] for k in ("root", "spec", "split", "src"))
    out = []
    for i, items in enumerate(plan, start=start):
        scene: Scene = compose(src, items, rng(spec.seed, split, "scene", i), spec.layout)
        image_id, name, files = i + 1, f"{i + 1:05d}.png", {}
        _write(root, f"{split}/{name}", _png(scene.image), files)
        _write(root, f"masks/{split}/{name}", _png(scene.semantic), files)
        image = {"id": image_id, "file_name": name, "width": spec.layout.size, "height": spec.layout.size,
                 "background": scene.background, "occluded_items_dropped": scene.dropped}
        anns = [{"image_id": image_id, "category_id": obj.label + 1, "iscrowd": 0, **annotation(obj.mask),
                 "fashion_mnist_index": obj.source} for obj in scene.objects]
        out.append(_Rendered(image, anns, files))
    return out


def _chunks(plan: list[np.ndarray], size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    for start in range(0, len(plan), size):
        yield start, plan[start : start + size]


def write_split(
    root: Path, spec: ScenesSpec, split: str, src: Sources, *, workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, list], dict[str, Any]]:
    """Generate and write ``split`` under ``root`` with ``workers`` processes.

    Returns ``({relative path: [bytes, sha256]}, summary)``. The files do not depend on ``workers``.
    """
    plan = plan_items(spec, split, len(src.items))
    chunks = list(_chunks(plan, 32))
    if workers > 1 and len(chunks) > 1:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)  # fork: no re-import, no pickling
        pool = ProcessPoolExecutor(workers, ctx, initializer=_init_worker, initargs=(root, spec, split, src))
        with pool:
            results = pool.map(_render, *zip(*chunks))
            rendered = _collect(results, progress)
    else:
        _init_worker(root, spec, split, src)
        rendered = _collect((_render(start, part) for start, part in chunks), progress)
        _WORKER.clear()

    files: dict[str, list] = {}
    images, anns = [], []
    for r in rendered:
        images.append(r.image)
        anns.extend({"id": len(anns) + 1, **a} for a in r.annotations)
        files.update(r.files)
    coco = {
        "info": {"description": f"pvtv2 scenes, {split} split: Fashion-MNIST {split} items on photographs",
                 "seed": spec.seed},
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": name, "supercategory": "fashion"} for k, name in enumerate(CLASSES)],
    }
    _write(root, f"annotations/instances_{split}.json", json.dumps(coco, separators=(",", ":")).encode(), files)
    return files, _summary(split, images, anns)


def _collect(results: Iterable[list[_Rendered]], progress: Callable[[int], None] | None) -> list[_Rendered]:
    out = []
    for part in results:
        out.extend(part)
        if progress:
            progress(len(part))
    return out


def _summary(split: str, images: list[dict[str, Any]], anns: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts for the manifest: objects by COCO size, dropped items, the sources used."""
    sizes = Counter("small" if a["area"] < SMALL else "large" if a["area"] >= LARGE else "medium" for a in anns)
    used = np.unique([a["fashion_mnist_index"] for a in anns]).astype(np.int64)
    return {
        "images": len(images),
        "objects": len(anns),
        "occluded_items_dropped": sum(im["occluded_items_dropped"] for im in images),
        "object_sizes": {k: sizes[k] for k in ("small", "medium", "large")},
        "fashion_mnist": {"split": split, "distinct_images": len(used),
                          "range": [int(used.min()), int(used.max())] if len(used) else None,
                          "sha256_of_indices": hashlib.sha256(used.tobytes()).hexdigest()},
        "photos": dict(sorted(Counter(im["background"]["photo"] for im in images).items())),
    }
