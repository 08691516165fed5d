#!/usr/bin/env python
"""Integration run: train Semantic FPN-B0 on the real VOC photos and masks of Debian's ``labelme-examples`` and
score it on those photos (acceptance of issue 7: mIoU >= 0.5 over the classes present).

The three photos (500x375, 7 classes present incl. background) are tiny, so this is a fitting test of the whole
pipeline (data, mmseg transforms, model, poly-decayed AdamW, checkpoints, evaluation, visualisation), not a
generalisation result. The backbone starts from random weights unless ``--backbone-weights`` is given (nothing is
downloaded here). Runs in minutes on a CPU at a reduced input size (shorter side 160 instead of 512).

    python scripts/seg_labelme.py                      # writes runs/seg_labelme/{last.pth,result.json,vis.png,...}
    python scripts/seg_labelme.py --iterations 200     # quicker, lower mIoU
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

DATA = "/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA, help="VOC-layout folder (default: Debian's labelme-examples)")
    p.add_argument("--out", default="runs/seg_labelme")
    p.add_argument("--model", default="pvt_v2_b0")
    p.add_argument("--backbone-weights", default=None, help="an ImageNet checkpoint of the backbone (optional)")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW lr (higher than the released 2e-4: random init)")
    p.add_argument("--short-side", type=int, default=160, help="training scale and test scale (released: 512)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--min-miou", type=float, default=0.5, help="exit with status 1 below this mIoU")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from pvtv2._io import atomic_write_text
    from pvtv2.engine import train
    from pvtv2.segmentation import (SegmentationTask, evaluate, format_results, get_recipe, load_segmentor, predict,
                                    save_visualization, voc)
    from pvtv2.segmentation.datasets import read_image

    s = args.short_side
    cfg = get_recipe("ade20k_40k").replace(
        data=args.data, val_data=args.data, backbone=args.model, backbone_weights=args.backbone_weights,
        steps=args.iterations, batch_size=args.batch_size, lr=args.lr, warmup_steps=min(50, args.iterations // 10),
        crop_size=s, scale=(4 * s, s), test_scale=(4 * s, s), eval_every=max(args.iterations // 4, 1),
        ckpt_every=max(args.iterations // 4, 1), log_every=25, workers=args.workers, device="cpu",
        threads=args.threads, warmup_ratio=1e-3,
    )
    start = time.perf_counter()
    run = train(SegmentationTask(cfg), out=args.out)
    train_s = time.perf_counter() - start

    model, meta = load_segmentor(run.checkpoint)
    result = evaluate(model, voc(args.data), scale=(4 * s, s))
    print(format_results(result))
    image = read_image(sorted(Path(args.data, "JPEGImages").glob("*.jpg"))[1])
    model.eval()
    labels = predict(model, image, scale=(4 * s, s))
    vis = save_visualization(Path(args.out) / "vis.png", image, labels, meta.class_names,
                             title=f"Semantic FPN-{args.model[-2:].upper()} on labelme-examples")
    summary = {
        "miou": result["miou"], "miou_gt_classes": result["miou_gt"], "pixel_acc": result["pixel_acc"],
        "classes_present": result["classes_present"], "iterations": args.iterations, "batch_size": args.batch_size,
        "short_side": s, "train_seconds": round(train_s, 1), "wall_seconds": round(time.perf_counter() - start, 1),
        "threads": args.threads, "backbone_weights": args.backbone_weights, "checkpoint": str(run.checkpoint),
        "visualisation": str(vis), "per_class": [r for r in result["per_class"] if r["pixels"] or r["iou"] == r["iou"]],
    }
    atomic_write_text(Path(args.out) / "result.json", json.dumps(summary, indent=2) + "\n")
    ok = result["miou"] >= args.min_miou
    print(f"mIoU {100 * result['miou']:.1f} (classes present in the masks: {100 * result['miou_gt']:.1f}) after "
          f"{args.iterations} iterations, {train_s / 60:.1f} min of training -> {'PASS' if ok else 'FAIL'} "
          f"(threshold {100 * args.min_miou:.0f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
