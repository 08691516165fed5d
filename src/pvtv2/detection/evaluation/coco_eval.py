"""COCO evaluation through pycocotools: AP, AP50, AP75, APs/APm/APl for boxes (and masks), plus the results JSON."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._io import atomic_write_text
from ...engine.distributed import all_gather_object, is_main_process
from ...engine.sampling import rank_shard
from ..data.annotations import DetectionData
from ..data.dataset import DetectionDataset, collate

log = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six numbers of COCOeval.stats


def coco_ground_truth(data: DetectionData) -> Any:
    """A ``pycocotools.coco.COCO`` index of ``data`` (annotation ids renumbered from 1: pycocotools treats a
    matched ground truth of id 0, as labelme writes it, as unmatched)."""
    from pycocotools.coco import COCO

    images, anns = [], []
    for rec in data.images:
        images.append({"id": rec.id, "width": rec.width, "height": rec.height, "file_name": str(rec.path)})
        for inst in rec.instances:
            x1, y1, x2, y2 = inst.box
            ann = {"id": len(anns) + 1, "image_id": rec.id, "category_id": inst.category_id,
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": inst.area, "iscrowd": int(inst.iscrowd)}
            # Mask AP needs a segmentation on every ground truth: a box outline where the dataset has none.
            ann["segmentation"] = inst.segmentation or [[x1, y1, x1, y2, x2, y2, x2, y1]]
            anns.append(ann)
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": data.categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def to_coco_results(
    outputs: list[dict[str, torch.Tensor]], image_ids: list[int], label_to_category: dict[int, int]
) -> list[dict[str, Any]]:
    """Detector outputs (boxes XYXY in original pixels) -> COCO result entries (bbox XYWH; RLE masks if any)."""
    from pycocotools import mask as coco_mask

    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().cpu().numpy().astype(np.float64)
        scores = out["scores"].detach().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        masks = out.get("masks")
        rles = []
        if masks is not None and len(masks):
            binary = (masks[:, 0] > 0.5).cpu().numpy().astype(np.uint8)  # (N, 1, H, W) probabilities -> (N, H, W)
            rles = coco_mask.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # wants (H, W, N) Fortran order
        for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
            if label not in label_to_category:
                continue
            entry = {"image_id": int(image_id), "category_id": label_to_category[label], "score": float(score),
                     "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
            if rles:
                rle = rles[i]
                entry["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            results.append(entry)
    return results


def coco_metrics(gt: Any, results: list[dict[str, Any]], iou_type: str = "bbox") -> tuple[dict[str, float], str]:
    """COCOeval on ``results``: the six AP figures (0..1; 0.0 when there is no detection) and the printed table."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {m: 0.0 for m in METRICS}, "no detections"
    # Box AP reads "bbox", mask AP reads "segmentation" (and then takes area and box from the mask).
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    results = [{k: v for k, v in r.items() if k != drop} for r in results]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    table = "\n".join(line for line in buf.getvalue().splitlines() if line.lstrip().startswith("Average"))
    return {m: float(v) for m, v in zip(METRICS, ev.stats[:6])}, table


@torch.no_grad()
def predict(
    model: nn.Module, dataset: DetectionDataset, *, batch_size: int = 2, device: str | torch.device = "cpu",
    num_workers: int = 0, progress: bool = False,
) -> list[dict[str, Any]]:
    """Run the detector over ``dataset`` (eval mode) and return its detections as COCO result entries.

    Each batch is converted at once (masks become RLE strings), so memory does not grow with full-size masks.
    Under ``torch.distributed`` each rank predicts every ``world_size``-th image; every rank gets all results.
    """
    loader = torch.utils.data.DataLoader(rank_shard(dataset), batch_size=batch_size, collate_fn=collate,
                                         num_workers=num_workers,
                                         generator=torch.Generator())  # leaves the global RNG of training alone
    if progress and is_main_process():
        from tqdm import tqdm

        loader = tqdm(loader, desc="eval", leave=False)
    label_to_category = dataset.data.label_to_category()
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    for images, targets in loader:
        outputs = model([im.as_subclass(torch.Tensor).to(device) for im in images])
        results += to_coco_results(outputs, [int(t["image_id"]) for t in targets], label_to_category)
    model.train(was_training)
    return [r for part in all_gather_object(results) for r in part]


def evaluate(
    model: nn.Module,
    dataset: DetectionDataset,
    *,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    results_path: str | os.PathLike[str] | None = None,
    num_workers: int = 0,
    progress: bool = False,
    keep_results: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """COCO AP of ``model`` on ``dataset``: ``{"bbox": {"AP": ..., "AP50": ...}, "segm": {...}}``.

    Masks are scored when the model predicts them (Mask R-CNN) and the ground truth has segmentations.

    Args:
        model: a torchvision detector (boxes in original image pixels in eval mode).
        dataset: the evaluation set (its ``transforms`` should not resize: see :func:`eval_transforms`).
        batch_size: images per forward pass.
        device: where to run.
        results_path: write the COCO results list (JSON) there, atomically.
        num_workers: DataLoader workers.
        progress: show a progress bar.
        keep_results: a list that receives the COCO results entries (replacing its contents).
    """
    results = predict(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                      progress=progress)
    if keep_results is not None:
        keep_results[:] = results
    if results_path is not None:
        atomic_write_text(results_path, json.dumps(results))
    gt = coco_ground_truth(dataset.data)
    metrics: dict[str, dict[str, float]] = {}
    metrics["bbox"], table = coco_metrics(gt, results, "bbox")
    log.debug("bbox:\n%s", table)
    roi_heads = getattr(model, "roi_heads", None)
    predicts_masks = roi_heads is not None and roi_heads.has_mask()
    if predicts_masks and any(i.segmentation is not None for r in dataset.data.images for i in r.instances):
        metrics["segm"], table = coco_metrics(gt, results, "segm")
        log.debug("segm:\n%s", table)
    return metrics
