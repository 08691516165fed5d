"""Dataset evaluation of a segmentation model: mIoU, per-class IoU/accuracy and pixel accuracy (shardable)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..engine.distributed import is_main_process, reduce_sum
from ..engine.sampling import rank_shard
from .datasets import SegmentationDataset, collate_segmentation, next_batch
from .inference import Mode, predict_logits
from .metrics import ConfusionMatrix

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    scale: tuple[int, int] | None = (2048, 512),
    mode: Mode = "whole",
    crop: int = 512,
    stride: int = 341,
    flip: bool = False,
    amp: bool = True,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on every image of ``dataset`` (read without transforms, compared at full resolution).

    Under torch.distributed each process scores every ``world``-th image and the confusion matrices are summed.

    Args:
        model: a :class:`SemanticFPN` (put in eval mode here; its training flag is restored).
        dataset: a :class:`SegmentationDataset`; its transforms are bypassed.
        scale, mode, crop, stride, flip, amp: test-time settings of :func:`predict_logits`.
        num_workers: DataLoader workers.
        progress: show a tqdm bar (rank 0).

    Returns:
        ``miou``, ``miou_gt``, ``macc``, ``pixel_acc``, ``per_class``, ``confusions``, ``images``, ``skipped``,
        ``seconds``.
    """
    meta = dataset.meta
    raw = SegmentationDataset(dataset.pairs, meta, transforms=None, on_error=dataset.on_error, name=dataset.name)
    loader = torch.utils.data.DataLoader(rank_shard(raw), batch_size=1, num_workers=num_workers,
                                         collate_fn=collate_segmentation,
                                         generator=torch.Generator())  # leaves the global RNG untouched
    cm = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    was_training = model.training
    model.eval()
    start, images, skipped = time.perf_counter(), 0, 0
    try:
        batches = iter(loader)
        for _ in tqdm(range(len(loader)), desc="eval", disable=not progress or not is_main_process(), leave=False):
            batch = next_batch(batches)
            skipped += batch["skipped"]
            for image, mask in zip(batch["image"], batch["mask"]):  # one image per batch; sizes differ
                logits = predict_logits(model, image[None], scale=scale, mode=mode, crop=crop, stride=stride,
                                        flip=flip, amp=amp)
                cm.update(logits.argmax(1)[0].cpu(), mask)
                images += 1
    finally:
        model.train(was_training)
    cm.all_reduce()
    counts = reduce_sum(torch.tensor([images, skipped], dtype=torch.int64))
    result = cm.compute(meta.class_names)
    result.update(images=int(counts[0]), skipped=int(counts[1]), seconds=time.perf_counter() - start)
    if result["skipped"]:
        log.warning("evaluation skipped %d bad sample(s)", result["skipped"])
    return result


def format_results(result: dict[str, Any], *, top: int | None = None) -> str:
    """A per-class IoU table followed by the summary line (classes that never occur are left out)."""
    rows = [r for r in result["per_class"] if r["pixels"] > 0 or r["iou"] == r["iou"]]
    rows.sort(key=lambda r: -r["pixels"])
    lines = [f"{'class':<24} {'IoU':>7} {'acc':>7} {'pixels':>10}"]
    for r in rows[:top] if top else rows:
        iou = f"{100 * r['iou']:.2f}" if r["iou"] == r["iou"] else "-"
        acc = f"{100 * r['acc']:.2f}" if r["acc"] == r["acc"] else "-"
        lines.append(f"{r['class'][:24]:<24} {iou:>7} {acc:>7} {r['pixels']:>10}")
    mixed = sorted(result.get("confusions", []), key=lambda c: -c["share"])[:5]
    if mixed:
        lines.append("most mixed up (share of the true class's pixels): " + ", ".join(
            f"{c['truth']} as {c['predicted']} {100 * c['share']:.1f}%" for c in mixed))
    lines.append(
        f"mIoU {100 * result['miou']:.2f}  (over classes in the ground truth: {100 * result['miou_gt']:.2f})  "
        f"mAcc {100 * result['macc']:.2f}  pixel acc {100 * result['pixel_acc']:.2f}  "
        f"[{result['images']} images, {result['skipped']} skipped, {result['seconds']:.1f} s]"
    )
    return "\n".join(lines)
