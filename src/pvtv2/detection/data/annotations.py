"""Detection annotations: COCO instances JSON and VOC XML read into one record list, checked once.

Every problem is found when the annotations are read, never mid-epoch: missing or unreadable images, boxes outside
the image or of zero area, unknown category or image ids, malformed entries. By default each is skipped and counted
(one summary line in the log, :attr:`DetectionData.problems`); with ``strict=True`` the first one raises
:class:`~pvtv2.errors.DataError`. Malformed files always raise. Crowd annotations are kept for evaluation and left
out of training targets. Labels are contiguous, ``1..K`` in category order (0 is torchvision's background).

:mod:`.dataset` serves the records as tv_tensors. This module imports no model code.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import DataError

log = logging.getLogger(__name__)

BACKGROUND_NAMES = ("_background_", "__background__", "background")
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_TOLERANCE = 1.0  # pixels a box may stick out of the image before it counts as "outside" (rounding in tools)


@dataclass
class Instance:
    """One annotated object, in absolute pixel coordinates of the original image."""

    box: list[float]  # x1, y1, x2, y2 (clipped to the image)
    category_id: int  # the dataset's own id
    label: int  # contiguous training label 1..K
    iscrowd: bool = False
    area: float = 0.0  # COCO's area (mask area) if given, else box area
    segmentation: Any = None  # COCO polygons (list of lists) or RLE (dict), or None


@dataclass
class ImageRecord:
    """One image and its instances."""

    id: int
    path: Path
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)

    @property
    def num_objects(self) -> int:
        """Instances a training target gets (crowds excluded)."""
        return sum(not a.iscrowd for a in self.instances)


@dataclass
class DetectionData:
    """A parsed detection dataset: images with instances, the category table and what was skipped."""

    images: list[ImageRecord]
    categories: list[dict[str, Any]]  # [{"id": dataset id, "name": ...}] in label order (label = index + 1)
    source: str
    problems: Counter[str] = field(default_factory=Counter)

    @property
    def class_names(self) -> list[str]:
        """Names indexed by label (index 0 is the background)."""
        return ["__background__"] + [c["name"] for c in self.categories]

    @property
    def num_classes(self) -> int:
        """``K``, the object classes (labels 1..K): what the detector builders take."""
        return len(self.categories)

    def label_to_category(self) -> dict[int, int]:
        """Training label -> the dataset's category id (for COCO results)."""
        return {i + 1: c["id"] for i, c in enumerate(self.categories)}

    def summary(self) -> str:
        """One line: images, instances and the skipped/fixed counts."""
        n = sum(len(r.instances) for r in self.images)
        text = f"{self.source}: {len(self.images)} images, {n} instances, {len(self.categories)} classes"
        if self.problems:
            text += "; " + ", ".join(f"{k}: {v}" for k, v in sorted(self.problems.items()))
        return text


class _Checker:
    """Counts (lenient) or raises (strict) each problem, with the first example of each kind for the log."""

    def __init__(self, source: str, strict: bool) -> None:
        self.source, self.strict = source, strict
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def __call__(self, kind: str, message: str) -> None:
        if self.strict:
            raise DataError(f"{self.source}: {message} "
                            "(pass strict=False / --on-bad-data skip to skip and count such cases)")
        self.counts[kind] += 1
        self.first.setdefault(kind, message)

    def log(self) -> None:
        for kind, n in sorted(self.counts.items()):
            action = "clipped" if kind == "clipped_box" else "skipped"
            log.warning("%s: %s %d x %s, e.g. %s", self.source, action, n, kind, self.first[kind])


def _open(path: Path) -> IO[bytes]:
    """Open ``path`` or, as Debian ships some examples, ``path.gz``."""
    if path.is_file():
        return gzip.open(path) if path.suffix == ".gz" else open(path, "rb")
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gzip.open(gz)
    raise DataError(f"{path} does not exist")


def _image_size(path: Path, check: _Checker) -> tuple[int, int] | None:
    """``(width, height)`` read from the file header, or None (counted) when missing or not an image."""
    if not path.is_file():
        check("missing_image", f"image {path} does not exist")
        return None
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        check("unreadable_image", f"image {path} cannot be read ({e})")
        return None


def _clip_box(box: list[float], w: int, h: int, where: str, check: _Checker) -> list[float] | None:
    """Clip an xyxy box to the image; None (counted) if it is degenerate or (mostly) outside."""
    x1, y1, x2, y2 = box
    if not all(np.isfinite(box)) or x2 <= x1 or y2 <= y1:
        check("zero_area_box", f"{where}: box {box} has zero or negative area")
        return None
    clipped = [min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)]
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        check("zero_area_box", f"{where}: box {[round(v, 1) for v in box]} has no area inside the {w}x{h} image")
        return None
    if x1 < -_TOLERANCE or y1 < -_TOLERANCE or x2 > w + _TOLERANCE or y2 > h + _TOLERANCE:
        check("clipped_box", f"{where}: box {[round(v, 1) for v in box]} extends outside the {w}x{h} image "
                             "(clipped to it)")
    return clipped


def _valid_segmentation(seg: Any) -> bool:
    if isinstance(seg, list):
        return bool(seg) and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg)
    return isinstance(seg, dict) and "counts" in seg and "size" in seg


def load_coco(
    ann_file: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    strict: bool = False,
    skip_categories: Sequence[str] = BACKGROUND_NAMES,
) -> DetectionData:
    """Read a COCO instances file (``.json`` or ``.json.gz``) and check it against the images.

    Args:
        ann_file: the annotations JSON.
        image_root: folder that ``file_name`` is relative to (default: the JSON's folder).
        strict: raise on the first problem instead of skipping and counting.
        skip_categories: category names that are not objects (labelme's ``_background_``).
    """
    ann_file = Path(ann_file)
    root = Path(image_root) if image_root is not None else ann_file.parent
    try:
        with _open(ann_file) as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{ann_file} is not valid JSON ({e}); is it a COCO instances file?") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{ann_file}: a COCO instances file needs 'images' and 'categories' lists")
    anns = raw.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{ann_file}: 'annotations' must be a list")
    try:
        cats = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in raw["categories"]), key=lambda c: c["id"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{ann_file}: every category needs an integer 'id' and a 'name'") from None
    skipped_cats = {c["id"] for c in cats if c["name"] in skip_categories}
    cats = [c for c in cats if c["id"] not in skipped_cats]
    label_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
    check = _Checker(str(ann_file), strict)

    records: dict[int, ImageRecord] = {}
    for im in raw["images"]:
        try:
            image_id, name = int(im["id"]), str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            check("bad_image_entry", f"image entry {str(im)[:80]} needs 'id' and 'file_name'")
            continue
        size = _image_size(root / name, check)
        if size is None:
            continue
        if (im.get("width"), im.get("height")) not in ((None, None), size):
            check("size_mismatch", f"image {name}: JSON says {im.get('width')}x{im.get('height')}, file is "
                                   f"{size[0]}x{size[1]}")
            continue
        records[image_id] = ImageRecord(image_id, root / name, size[0], size[1])

    all_image_ids = {im.get("id") for im in raw["images"] if isinstance(im, dict)}
    for ann in anns:
        try:
            image_id, cat = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            check("bad_annotation", f"annotation {str(ann)[:80]} needs image_id, category_id and a 4-number bbox")
            continue
        where = f"annotation {ann.get('id')} (image {image_id})"
        if cat in skipped_cats:
            continue
        if cat not in label_of:
            check("unknown_category", f"{where}: category id {cat} is not in 'categories'")
            continue
        if image_id not in records:
            if image_id not in all_image_ids:
                check("unknown_image_id", f"{where}: image id {image_id} is not in 'images'")
            continue  # its image was skipped (and counted) above
        rec = records[image_id]
        box = _clip_box([x, y, x + w, y + h], rec.width, rec.height, where, check)
        if box is None:
            continue
        seg = ann.get("segmentation")
        if seg is not None and not _valid_segmentation(seg):
            check("bad_segmentation", f"{where}: segmentation is neither polygons nor RLE")
            continue
        area = float(ann.get("area") or (box[2] - box[0]) * (box[3] - box[1]))
        rec.instances.append(Instance(box, cat, label_of[cat], bool(ann.get("iscrowd", 0)), area, seg))
    check.log()
    return DetectionData(list(records.values()), cats, str(ann_file), check.counts)


def load_voc(
    root: str | os.PathLike[str],
    *,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    strict: bool = False,
) -> DetectionData:
    """Read a VOC-style folder: ``Annotations/*.xml`` (or ``.xml.gz``) + ``JPEGImages/``.

    Args:
        root: the folder holding ``Annotations`` and ``JPEGImages``.
        split: read the ids of ``ImageSets/Main/<split>.txt`` (default: every XML file).
        class_names: the classes in label order (default: ``class_names.txt`` in ``root`` if present, as labelme
            writes it, else the 20 VOC classes). Background names are dropped.
        strict: raise on the first problem instead of skipping and counting.

    ``difficult`` objects are kept as crowd-like regions: ignored by evaluation, not trained on.
    """
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise DataError(f"{root} is not a VOC folder: {ann_dir} does not exist")
    if class_names is None:
        names_file = root / "class_names.txt"
        class_names = names_file.read_text().splitlines() if names_file.is_file() else list(VOC_CLASSES)
    names = [n.strip() for n in class_names if n.strip() and n.strip() not in BACKGROUND_NAMES]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    label_of = {n: i + 1 for i, n in enumerate(names)}
    if split is not None:
        ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.is_file():
            raise DataError(f"{ids_file} does not exist; pass an existing split or none to read every XML file")
        files = [ann_dir / f"{i.strip()}.xml" for i in ids_file.read_text().split() if i.strip()]
    else:
        files = sorted({ann_dir / p.name.removesuffix(".gz") for p in ann_dir.glob("*.xml*")})
    check = _Checker(str(root), strict)
    records = []
    for image_id, xml_path in enumerate(files, start=1):
        try:
            with _open(xml_path) as f:
                tree = ET.parse(f).getroot()
        except (ET.ParseError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{xml_path} is not valid XML ({e})") from None
        name = tree.findtext("filename") or f"{xml_path.stem}.jpg"
        path = root / "JPEGImages" / name
        size = _image_size(path, check)
        if size is None:
            continue
        rec = ImageRecord(image_id, path, size[0], size[1])
        for obj in tree.iter("object"):
            cls = (obj.findtext("name") or "").strip()
            where = f"{xml_path.name} object {cls!r}"
            if cls not in label_of:
                check("unknown_category", f"{where}: class {cls!r} is not in the class list")
                continue
            try:
                bb = obj.find("bndbox")
                box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr]
            except (AttributeError, TypeError, ValueError):
                check("bad_annotation", f"{where}: needs a bndbox with xmin, ymin, xmax, ymax")
                continue
            clipped = _clip_box(box, rec.width, rec.height, where, check)
            if clipped is None:
                continue
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            area = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
            rec.instances.append(Instance(clipped, label_of[cls], label_of[cls], difficult, area))
        records.append(rec)
    if not files:
        raise DataError(f"{ann_dir} holds no .xml files")
    check.log()
    return DetectionData(records, cats, str(root), check.counts)


def open_dataset(
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    images: str | os.PathLike[str] | None = None,
    strict: bool = False,
) -> DetectionData:
    """Read any supported layout, found from ``path``:

    - a COCO instances file (``.json``/``.json.gz``; images relative to its folder or ``images``);
    - a COCO root with ``annotations/instances_<split>.json`` and ``<split>/`` images (``split`` e.g. ``val2017``);
    - a VOC folder with ``Annotations/`` and ``JPEGImages/`` (``split`` reads ``ImageSets/Main/<split>.txt``).
    """
    p = Path(path)
    if p.suffix == ".json" or p.name.endswith(".json.gz"):
        return load_coco(p, images, strict=strict)
    if (p / "Annotations").is_dir():
        return load_voc(p, split=split, strict=strict)
    if (p / "annotations").is_dir():
        if split is None:
            raise DataError(f"{p} looks like a COCO root: pass the split (e.g. --split val2017)")
        return load_coco(p / "annotations" / f"instances_{split}.json", images or p / split, strict=strict)
    if not p.exists():
        raise DataError(f"{p} does not exist")
    raise DataError(f"{p}: expected a COCO .json file, a COCO root (annotations/) or a VOC folder (Annotations/)")
