#!/usr/bin/env python
"""Integration check of the detection stack on real photos (not part of the fast suite).

Trains RetinaNet with a PVT v2-B0 backbone (random init unless --backbone-weights is given: nothing is downloaded)
on the three photos of Debian's ``labelme-examples`` COCO set, evaluates box AP on the same photos with
pycocotools, then runs ``pvtv2 detect`` on the trained checkpoint and writes the drawn PNG. Exits 1 if box AP50 is
below --min-ap50 (0.5). It memorises three images: it tests the plumbing end to end, not generalisation.

    python scripts/det_labelme.py                       # ~300 steps at shorter side 160 px
    python scripts/det_labelme.py --iters 500 --size 192 --out runs/det_labelme
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

LABELME = Path("/usr/share/doc/labelme-examples/examples/instance_segmentation/data_dataset_coco")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(LABELME / "annotations.json"), help="COCO instances file")
    p.add_argument("--arch", default="retinanet", choices=("retinanet", "fcos", "mask_rcnn"))
    p.add_argument("--backbone", default="pvt_v2_b0")
    p.add_argument("--backbone-weights", default=None, help="optional ImageNet checkpoint (any format)")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--size", type=int, default=160, help="shorter side in training and evaluation")
    p.add_argument("--max-size", type=int, default=256, help="longer side at most")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest when the CPU is shared)")
    p.add_argument("--out", default="runs/det_labelme")
    p.add_argument("--min-ap50", type=float, default=0.5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from pvtv2._io import atomic_write_text
    from pvtv2.cli import main as cli
    from pvtv2.detection import DetectionTask, get_recipe
    from pvtv2.engine import train

    if not Path(args.data).is_file():
        print(f"error: {args.data} not found; install Debian's labelme-examples (make setup)", file=sys.stderr)
        return 2
    out = Path(args.out)
    # Mask R-CNN: fewer sampled RoIs than torchvision's 512 per image, or a CPU step takes a minute
    options = {"box_batch_size_per_image": 64, "rpn_post_nms_top_n_train": 256} if args.arch == "mask_rcnn" else {}
    start = time.perf_counter()
    cfg = get_recipe("1x").replace(
        data=args.data, val_data=args.data, arch=args.arch, backbone=args.backbone,
        backbone_weights=args.backbone_weights, steps=args.iters, batch_size=3, lr=args.lr,
        train_sizes=(args.size,), max_size=args.max_size, test_size=args.size, workers=0, threads=args.threads,
        seed=args.seed, detector_options=options, eval_every=args.iters, log_every=25, precision="fp32",
    )
    result = train(DetectionTask(cfg), out=out)
    train_s = time.perf_counter() - start
    box = {k.split("_", 1)[1]: v for k, v in result.metrics.items() if k.startswith("bbox_")}
    image = Path(args.data).parent / json.loads(Path(args.data).read_text())["images"][0]["file_name"]
    vis = out / "detect.png"
    code = cli(["detect", str(image), "--checkpoint", str(result.checkpoint), "--save-vis", str(vis),
                "--score-thresh", "0.3", "--device", "cpu"])
    report = {
        "arch": args.arch, "backbone": args.backbone, "iters": result.steps, "size": args.size,
        "train_seconds": round(train_s, 1), "bbox": box, "detect_exit": code, "vis": str(vis),
        "checkpoint": str(result.checkpoint),
    }
    atomic_write_text(out / "acceptance.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    ok = box["AP50"] >= args.min_ap50 and code == 0 and vis.is_file()
    print(f"box AP50 {box['AP50']:.3f} (need >= {args.min_ap50}) after {result.steps} steps in {train_s:.0f} s: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
