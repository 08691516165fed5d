"""``pvtv2 det train``, ``det compare``, ``det eval`` and ``pvtv2 detect``: detection on the command line."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from .options import (add_config_options, add_device_option, add_ema_option, add_profile_arguments, add_scenes_option,
                      add_train_arguments, device_of, given_options, run_profile, run_training)

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from ..detection.recipes import RECIPES

    det = sub.add_parser("det", help="train and evaluate detectors (RetinaNet, Mask R-CNN, FCOS, ...) on PVT backbones")
    dsub = det.add_subparsers(dest="det_command", metavar="{train,compare,eval,profile}")

    t = dsub.add_parser("train", help="train a detector (torchrun for several processes)",
                        description="Train any registered detector (--arch) on a PVT backbone; evaluates with "
                                    "pycocotools on --val-data. With no arguments: RetinaNet-B0 on the generated "
                                    "scenes, scored on their held-out test scenes.")
    add_train_arguments(t, RECIPES, "scenes")
    t.set_defaults(func=run_train)

    c = dsub.add_parser("compare", help="train every registered detector the same way and tabulate them",
                        description="Train and evaluate each detector (default: every registered one) with the same "
                                    "configuration; writes OUT/table.md, table.json, table.png and a run per detector.")
    c.add_argument("--recipe", default="scenes", choices=list(RECIPES),
                   help="named configuration to start from (default: scenes)")
    add_config_options(c, RECIPES["scenes"])
    c.add_argument("--archs", nargs="+", metavar="ARCH", help="detectors to compare (default: all registered)")
    c.add_argument("--seeds", nargs="+", type=int, metavar="S",
                   help="train each detector once per seed; the table gives means and spreads and names the pairs "
                        "the seeds rank differently (default: --seed alone)")
    c.add_argument("--out", required=True, help="folder for the table and the runs")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=run_compare)

    f = dsub.add_parser("profile", help="where a training step's time goes, part by part, for each detector",
                        description="Time training steps of each detector (default: RetinaNet; --archs all: every "
                                    "registered one) as `det train` runs them: loading the batch, the backbone, the "
                                    "FPN, the heads, anchors/assignment/losses, the optimizer.")
    add_profile_arguments(f, RECIPES, "scenes")
    f.add_argument("--archs", nargs="+", metavar="ARCH", help="detectors to profile ('all': every registered one)")
    f.set_defaults(func=run_det_profile)

    e = dsub.add_parser("eval", help="COCO AP (boxes, masks) of a detection checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True, metavar="PATH",
                   help="COCO instances .json, COCO root (annotations/ + images), VOC folder (Annotations/), or "
                        "'scenes' (the generated benchmark's held-out test scenes)")
    e.add_argument("--split", help="split of a COCO root (e.g. val2017) or VOC ImageSets/Main list")
    add_scenes_option(e)
    e.add_argument("--images", metavar="DIR", help="image folder of a COCO .json (default: the JSON's folder)")
    e.add_argument("--out", default=None, metavar="DIR", help="write results.json and metrics.json here")
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--test-size", type=int, default=None, help="shorter side (default: the checkpoint's)")
    e.add_argument("--max-size", type=int, default=None)
    add_device_option(e)
    add_ema_option(e)
    _add_backend_args(e)
    e.add_argument("--workers", type=int, default=0)
    e.add_argument("--on-bad-data", choices=("skip", "error"), default="skip",
                   help="bad annotations: skip and count them, or stop at the first")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=run_eval)
    det.set_defaults(func=lambda args: det.print_help() or 1)

    d = sub.add_parser("detect", help="run a detection checkpoint on an image and draw the result")
    d.add_argument("image")
    d.add_argument("--checkpoint", required=True)
    d.add_argument("--save-vis", default=None, metavar="PNG", help="draw boxes, masks, labels and scores here")
    d.add_argument("--score-thresh", type=float, default=0.5)
    d.add_argument("--test-size", type=int, default=None)
    d.add_argument("--max-size", type=int, default=None)
    add_device_option(d)
    add_ema_option(d)
    _add_backend_args(d)
    d.add_argument("--json", action="store_true", help="print the detections as JSON")
    d.set_defaults(func=run_detect)


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="backbone and neck in bf16/fp16 where the device has it natively (box arithmetic in fp32)")
    p.add_argument("--backend", default="torch", choices=["torch", "openvino"],
                   help="run the backbone and neck in PyTorch or in OpenVINO (CPU; fp32 or bf16; compiled once per "
                   "padded input size); heads, NMS and RoI heads stay in PyTorch")


def run_train(args: argparse.Namespace) -> int:
    from ..detection import DetectionTask
    from ..detection.recipes import RECIPES

    return run_training(args, RECIPES, DetectionTask)


def run_det_profile(args: argparse.Namespace) -> int:
    from ..detection import DETECTORS, DetectionTask
    from ..detection.recipes import RECIPES

    def tasks(cfg: Any) -> list[DetectionTask]:
        archs = list(DETECTORS) if args.archs == ["all"] else args.archs or [cfg.arch]
        return [DetectionTask(cfg.replace(arch=a)) for a in archs]

    return run_profile(args, RECIPES, tasks)


def run_compare(args: argparse.Namespace) -> int:
    from ..detection.compare import compare
    from ..detection.recipes import RECIPES

    from .pretrain import resolve_backbone_weights

    cfg = RECIPES[args.recipe].replace(**given_options(args, RECIPES[args.recipe]))
    cfg.check()
    cfg = resolve_backbone_weights(cfg, progress=not args.no_progress)  # --backbone-weights fashion-mnist
    rows = compare(cfg, args.out, archs=args.archs, seeds=args.seeds, progress=not args.no_progress)
    print((Path(args.out) / "table.md").read_text())
    return 0 if rows else 1


def run_eval(args: argparse.Namespace) -> int:
    from ..data.scenes import default_split, resolve
    from ..detection.inference import evaluate_checkpoint

    data = resolve(args.data, tuple(args.scenes), progress=not args.no_progress)  # "scenes": the generated set
    split = default_split(str(data), args.split, held_out=True)  # the scenes: their held-out split
    metrics = evaluate_checkpoint(
        args.checkpoint, data, split=split, images=args.images, out=args.out, batch_size=args.batch_size,
        device=str(device_of(args)), strict=args.on_bad_data == "error", workers=args.workers,
        min_size=args.test_size, max_size=args.max_size, use_ema=args.ema, backend=args.backend,
        precision=args.precision,
    )
    for kind, vals in metrics.items():
        print(f"{kind:<5} " + "  ".join(f"{k} {v:.3f}" for k, v in vals.items()))
    if args.out:
        print(f"wrote {args.out}/results.json and {args.out}/metrics.json")
    return 0


def run_detect(args: argparse.Namespace) -> int:
    from ..data.images import read_image
    from ..detection.inference import detect, load_detector, run_backbone_with

    device = str(device_of(args))
    model, meta = load_detector(args.checkpoint, device=device, min_size=args.test_size, max_size=args.max_size,
                                use_ema=args.ema)
    run_backbone_with(model, args.backend, args.precision)  # boxes, NMS stay fp32
    found = detect(model, read_image(args.image), class_names=meta["class_names"], score_thresh=args.score_thresh,
                   save_vis=args.save_vis)
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for d in found:
            print(f"{d['name']:<16} {d['score']:.3f}  box {d['box']}")
        print(f"{len(found)} detection(s) with score >= {args.score_thresh}")
    if args.save_vis:
        print(f"wrote {args.save_vis}")
    return 0
