"""``pvtv2 det train``, ``pvtv2 det eval`` and ``pvtv2 detect``: detection on the command line."""

from __future__ import annotations

import argparse
import ast
import json
import logging
from typing import Any

log = logging.getLogger(__name__)



def _override(text: str) -> tuple[str, Any]:
    """``depths=1,1,1,1`` -> ``("depths", (1, 1, 1, 1))``; ``drop_path_rate=0.2`` -> ``("drop_path_rate", 0.2)``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed


def _data_args(p: argparse.ArgumentParser, prefix: str = "", required: bool = True) -> None:
    dest = prefix.replace("-", "_")
    p.add_argument(f"--{prefix}data", dest=f"{dest}data", required=required, metavar="PATH",
                   help="COCO instances .json, COCO root (annotations/ + images) or VOC folder (Annotations/)")
    p.add_argument(f"--{prefix}split", dest=f"{dest}split", default=None,
                   help="split of a COCO root (e.g. val2017) or VOC ImageSets/Main list")
    p.add_argument(f"--{prefix}images", dest=f"{dest}images", default=None, metavar="DIR",
                   help="image folder of a COCO .json (default: the JSON's folder)")


def register(sub: argparse._SubParsersAction) -> None:
    det = sub.add_parser("det", help="train and evaluate detectors (RetinaNet, Mask R-CNN, FCOS) on PVT backbones")
    dsub = det.add_subparsers(dest="det_command", metavar="{train,eval}")

    t = dsub.add_parser("train", help="train a detector (torchrun for several processes)")
    _data_args(t, required=False)
    _data_args(t, "val-", required=False)
    t.add_argument("--arch", default="retinanet", help="detector (pvtv2.detection.DETECTORS)")
    t.add_argument("--backbone", default="pvt_v2_b0", help="registered PVT name (pvtv2 models)")
    t.add_argument("--backbone-weights", default=None, metavar="PATH",
                   help="'official' or a checkpoint in any format (default: random init)")
    t.add_argument("--backbone-override", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="change a PVTConfig field, e.g. depths=1,1,1,1 (repeatable)")
    t.add_argument("--detector-option", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="torchvision constructor argument, e.g. box_batch_size_per_image=128 (repeatable)")
    t.add_argument("--recipe", choices=("1x", "3x"), default="1x", help="the released schedule (SPEC section 4)")
    t.add_argument("--epochs", type=int, default=None, help="default: the recipe's (12 / 36)")
    t.add_argument("--max-iters", type=int, default=None, help="run and schedule this many steps instead")
    t.add_argument("--batch-size", type=int, default=2, help="images per process")
    t.add_argument("--lr", type=float, default=None, help="default: the recipe's, scaled to the total batch")
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--train-size", type=int, nargs="+", default=None, metavar="PX",
                   help="shorter side(s) in training, drawn per image (default: the recipe's)")
    t.add_argument("--max-size", type=int, default=None, help="longer side at most (default 1333)")
    t.add_argument("--test-size", type=int, default=None, help="shorter side at evaluation (default 800)")
    t.add_argument("--warmup-iters", type=int, default=None)
    t.add_argument("--clip-grad", type=float, default=None)
    t.add_argument("--trainable-stages", type=int, default=None, choices=range(5), help="last stages trained")
    t.add_argument("--norm-eval", action="store_true", help="freeze the backbone's LayerNorms")
    t.add_argument("--out", default=None, help="run directory (default: runs/det/<timestamp>)")
    t.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue from a last.pth (alone: with the run's own configuration)")
    t.add_argument("--device", default="auto")
    t.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations (0: at the end)")
    t.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps")
    t.add_argument("--strict", action="store_true", help="fail on the first bad annotation instead of skipping")
    t.add_argument("--log-every", type=int, default=20)
    t.set_defaults(func=run_train)

    e = dsub.add_parser("eval", help="COCO AP (boxes, masks) of a detection checkpoint")
    e.add_argument("--checkpoint", required=True)
    _data_args(e)
    e.add_argument("--out", default=None, metavar="DIR", help="write results.json and metrics.json here")
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--test-size", type=int, default=None, help="shorter side (default: the checkpoint's)")
    e.add_argument("--max-size", type=int, default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--workers", type=int, default=0)
    e.add_argument("--strict", action="store_true")
    e.set_defaults(func=run_eval)
    det.set_defaults(func=lambda args: det.print_help() or 1)

    d = sub.add_parser("detect", help="run a detection checkpoint on an image and draw the result")
    d.add_argument("image")
    d.add_argument("--checkpoint", required=True)
    d.add_argument("--save-vis", default=None, metavar="PNG", help="draw boxes, masks, labels and scores here")
    d.add_argument("--score-thresh", type=float, default=0.5)
    d.add_argument("--test-size", type=int, default=None)
    d.add_argument("--max-size", type=int, default=None)
    d.add_argument("--device", default="auto")
    d.add_argument("--json", action="store_true", help="print the detections as JSON")
    d.set_defaults(func=run_detect)


def _device(name: str) -> str:
    from ..engine.distributed import resolve_device

    return str(resolve_device(name))


def run_train(args: argparse.Namespace) -> int:
    from ..detection import DetTrainConfig, train
    from ..detection.train import config_from_checkpoint
    from ..errors import PVTError

    if args.data is None:
        if args.resume is None:
            raise PVTError("det train needs --data PATH (or --resume CKPT to continue a run)")
        cfg = config_from_checkpoint(args.resume, out=args.out, device=args.device, workers=args.workers,
                                     threads=args.threads, log_every=args.log_every)
        print(json.dumps(train(cfg), indent=2))
        return 0
    cfg = DetTrainConfig(
        data=args.data, split=args.split, images=args.images, val_data=args.val_data, val_split=args.val_split,
        val_images=args.val_images, arch=args.arch, backbone=args.backbone, backbone_weights=args.backbone_weights,
        backbone_overrides=dict(args.backbone_override), detector_options=dict(args.detector_option),
        recipe=args.recipe, epochs=args.epochs,
        max_iters=args.max_iters, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        train_sizes=tuple(args.train_size) if args.train_size else None, max_size=args.max_size,
        test_size=args.test_size, warmup_iters=args.warmup_iters, clip_grad=args.clip_grad,
        trainable_stages=args.trainable_stages, norm_eval=args.norm_eval, out=args.out, resume=args.resume,
        device=args.device, precision=args.precision, workers=args.workers, threads=args.threads, seed=args.seed,
        eval_every=args.eval_every, save_every=args.save_every, strict_data=args.strict, log_every=args.log_every,
    )
    summary = train(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..detection.inference import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.checkpoint, args.data, split=args.split, images=args.images, out=args.out, batch_size=args.batch_size,
        device=_device(args.device), strict=args.strict, workers=args.workers, min_size=args.test_size,
        max_size=args.max_size,
    )
    for kind, vals in metrics.items():
        print(f"{kind:<5} " + "  ".join(f"{k} {v:.3f}" for k, v in vals.items()))
    if args.out:
        print(f"wrote {args.out}/results.json and {args.out}/metrics.json")
    return 0


def run_detect(args: argparse.Namespace) -> int:
    from ..detection.inference import detect, load_detector, read_image

    device = _device(args.device)
    model, meta = load_detector(args.checkpoint, device=device, min_size=args.test_size, max_size=args.max_size)
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
