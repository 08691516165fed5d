"""``pvtv2 train`` (classification training), ``pvtv2 eval`` (ImageFolder top-1/top-5) and ``pvtv2 predict``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .options import add_device_option, add_ema_option, add_train_arguments, device_of, resolve_config, run_training


def register(sub: argparse._SubParsersAction) -> None:
    from ..classification.recipes import RECIPES

    p = sub.add_parser(
        "train", help="train or fine-tune a classifier (default: PVT v2-B0 on Fashion-MNIST in minutes)",
        description="Train a PVT classifier. With no arguments: pvt_v2_b0 from scratch on Fashion-MNIST (Debian "
                    "package dataset-fashion-mnist), writing runs/cls/<timestamp>/. Multi-GPU / multi-node: "
                    "torchrun --nproc_per_node=N -m pvtv2 train ...",
    )
    add_train_arguments(p, RECIPES, "fashion_mnist")
    p.add_argument("--download", action="store_true", help="fashion_mnist: download into --data-dir (needs internet)")
    p.set_defaults(func=run_train)

    p = sub.add_parser("eval", help="top-1/top-5 on an ImageFolder val set (resize 256 bicubic, center-crop 224)")
    _model_args(p)
    p.add_argument("data", help="ImageFolder root: DATA/<class>/<image> (e.g. imagenet/val with synset folders)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: one per usable CPU, at most 4)")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--on-bad-data", choices=["skip", "error"], default="skip")
    p.add_argument("--json", default="eval.json", help="where to write the results (default: eval.json)")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("predict", help="top-5 classes of image files")
    _model_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--save-vis", help="write a PNG of the images with their top-k bars")
    p.add_argument("--json", help="also write the predictions as JSON")
    p.add_argument("--on-bad-data", choices=["skip", "error"], default="skip",
                   help="unreadable images: skip them with a warning (default), or stop at the first")
    p.set_defaults(func=run_predict)


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="a pvtv2 train checkpoint (RUN/best.pth): model, classes, preprocessing")
    g.add_argument("--weights", help="'official' (the authors' ImageNet release of --model) or a weights file")
    p.add_argument("--model", default="pvt_v2_b2", help="model name for --weights (default: pvt_v2_b2)")
    p.add_argument("--num-classes", type=int, help="head size for --weights (default: read from the file)")
    add_ema_option(p)
    add_device_option(p)
    p.add_argument("--backend", default="torch", choices=["torch", "compile", "onnxruntime", "openvino"],
                   help="inference backend (pvtv2.runtime)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                   help="compute in bf16/fp16 where the device has it natively (else fp32, said in one line); "
                   "int8: --backend openvino with --calibration (NNCF, pip install 'pvtv2[int8]')")
    p.add_argument("--calibration", nargs="+", metavar="IMAGES", help="int8: image files or folders to calibrate "
                   "on (training images, not the ones scored; the first --calibration-images are used)")
    p.add_argument("--calibration-images", type=int, default=300, metavar="N",
                   help="int8: calibration images used at most (default: 300)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (downloading --weights official)")


def _calibration(args: argparse.Namespace, clf: Any) -> list[Any] | None:
    """int8's calibration batches from ``--calibration`` (one line when it is missing or given without int8)."""
    from ..classification.inference import calibration_batches
    from ..errors import PVTError

    if args.precision != "int8":
        if args.calibration:
            raise PVTError("--calibration is for --precision int8")
        return None
    if args.backend != "openvino":
        raise PVTError("--precision int8 runs in OpenVINO: add --backend openvino (and --calibration IMAGES)")
    if not args.calibration:
        raise PVTError("--precision int8 needs --calibration IMAGES|DIR: training images like the ones to come, "
                       "not the ones scored")
    return calibration_batches(clf, args.calibration, limit=args.calibration_images)


def run_train(args: argparse.Namespace) -> int:
    from ..classification import ClassificationTask
    from ..classification.recipes import RECIPES

    if args.download:
        from ..data import download_fashion_mnist
        from ..errors import DataError

        cfg = resolve_config(args, RECIPES)
        if not cfg.data_dir:
            raise DataError("--download needs --data-dir DIR to download into")
        download_fashion_mnist(cfg.data_dir)
    return run_training(args, RECIPES, ClassificationTask)


def _load(args: argparse.Namespace):  # -> Classifier
    from ..classification.inference import load_classifier

    return load_classifier(checkpoint=args.checkpoint, weights=args.weights, model=args.model,
                           num_classes=args.num_classes, device=str(device_of(args)), use_ema=args.ema)


def run_eval(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..classification.inference import evaluate_folder

    clf = _load(args)
    res = evaluate_folder(clf, args.data, batch_size=args.batch_size, workers=args.workers, backend=args.backend,
                          calibration=_calibration(args, clf),
                          device=str(device_of(args)), on_bad=args.on_bad_data, limit=args.limit,
                          precision=args.precision)
    print(f"{res['model']} ({res['weights']}) on {res['data']}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
          f"({res['n']} images, {res['protocol']}, backend {res['backend']} in {res['precision']}"
          f"{', %d unreadable skipped' % res['skipped'] if res['skipped'] else ''})")
    atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    print(f"results written to {args.json}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..data.images import BadImage, load_image
    from ..classification.inference import predict, save_visualisation
    from ..errors import DataError

    images = []
    for path in args.images:  # check every file first: one bad file must not cost the others their answer
        try:
            load_image(path)
            images.append(path)
        except BadImage as e:
            if args.on_bad_data == "error":
                raise
            print(f"warning: skipped {e}", file=sys.stderr)
    if not images:
        raise DataError(f"none of the {len(args.images)} image(s) could be read; nothing to predict")
    args.images = images
    clf = _load(args)
    preds = predict(clf, images, topk=args.topk, backend=args.backend, device=str(device_of(args)),
                    precision=args.precision, calibration=_calibration(args, clf))
    for path, pred in zip(args.images, preds):
        print(path)
        for rank, (name, prob) in enumerate(pred, 1):
            print(f"  {rank}. {name:<30} {100 * prob:6.2f}%")
    if args.json:
        atomic_write_text(args.json, json.dumps({str(p): [{"class": n, "prob": q} for n, q in pr]
                                                 for p, pr in zip(args.images, preds)}, indent=2) + "\n")
    if args.save_vis:
        save_visualisation(args.save_vis, args.images, preds, title=f"{clf.name} ({clf.source})")
        print(f"visualisation written to {args.save_vis}")
    return 0
