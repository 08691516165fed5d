"""The torch side of detection data: ``(image, target)`` pairs as tv_tensors, masks decoded with pycocotools.

This module imports no model code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from ...data.images import read_image
from ...errors import DataError
from .annotations import DetectionData, ImageRecord, Instance

log = logging.getLogger(__name__)


def decode_masks(rec: ImageRecord, instances: Sequence[Instance]) -> np.ndarray:
    """Binary masks ``(N, H, W)`` uint8 of instances with polygons or RLE; a box-filled mask where there is none."""
    from pycocotools import mask as coco_mask

    out = np.zeros((len(instances), rec.height, rec.width), dtype=np.uint8)
    for i, inst in enumerate(instances):
        seg = inst.segmentation
        if seg is None:
            x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
            out[i, y1:y2, x1:x2] = 1
            continue
        if isinstance(seg, list) or isinstance(seg.get("counts"), list):  # polygons or uncompressed RLE
            rles = coco_mask.frPyObjects(seg, rec.height, rec.width)
            rle = coco_mask.merge(rles) if isinstance(rles, list) else rles
        else:
            rle = seg
        m = coco_mask.decode(rle)
        out[i] = m if m.ndim == 2 else m.max(axis=2)
    return out


Transform = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]


class DetectionDataset(torch.utils.data.Dataset):
    """``(image, target)`` pairs for torchvision's detectors.

    ``image`` is a ``tv_tensors.Image`` (uint8 before ``transforms``), ``target`` holds ``boxes``
    (``tv_tensors.BoundingBoxes``, XYXY), ``labels`` (int64, 1..K), ``masks`` (``tv_tensors.Mask`` ``(N, H, W)``,
    only with ``with_masks``) and ``image_id``. Crowd/difficult instances are left out.

    Args:
        data: the parsed dataset.
        transforms: a ``torchvision.transforms.v2`` callable on ``(image, target)``.
        with_masks: decode instance masks (Mask R-CNN).
        drop_empty: leave out images without any object (training, as mmdet's ``filter_empty_gt``).
    """

    def __init__(
        self,
        data: DetectionData,
        transforms: Transform | None = None,
        *,
        with_masks: bool = False,
        drop_empty: bool = False,
    ) -> None:
        self.data = data
        self.transforms = transforms
        self.with_masks = with_masks
        self.records = [r for r in data.images if r.num_objects > 0] if drop_empty else list(data.images)
        self.num_empty = sum(r.num_objects == 0 for r in data.images)
        if drop_empty and self.num_empty:
            log.info("%s: left out %d image(s) without objects", data.source, self.num_empty)
        if not self.records:
            raise DataError(f"{data.source}: no usable images ({data.summary()})")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        rec = self.records[index]
        image = tv_tensors.Image(read_image(rec.path))  # (3, H, W) uint8
        objs = [a for a in rec.instances if not a.iscrowd]
        boxes = torch.tensor([a.box for a in objs], dtype=torch.float32).reshape(-1, 4)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(rec.height, rec.width)),
            "labels": torch.tensor([a.label for a in objs], dtype=torch.int64),
            "image_id": rec.id,
        }
        if self.with_masks:
            target["masks"] = tv_tensors.Mask(torch.from_numpy(decode_masks(rec, objs)))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate(batch: list[tuple[Any, dict[str, Any]]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Lists of images and targets (torchvision's detectors take lists of differently sized images)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
