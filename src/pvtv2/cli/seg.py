"""``pvtv2 seg train`` / ``pvtv2 seg eval`` (Semantic FPN) and ``pvtv2 segment IMAGE`` (a colour overlay)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .options import (add_device_option, add_ema_option, add_profile_arguments, add_scenes_option, add_train_arguments,
                      device_of, run_profile, run_training)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", default="auto", choices=["auto", "scenes", "ade20k", "voc", "folder"],
                   help="dataset layout (auto: manifest.json = scenes, images/+annotations/ = ADE20K, JPEGImages/ = "
                        "VOC, else folder)")
    p.add_argument("--masks", default=None, help="mask folder of the folder layout (masks named like the images)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the folder layout")
    p.add_argument("--reduce-zero-label", action="store_true", help="folder layout: label 0 is ignored (as ADE20K)")
    p.add_argument("--on-bad-data", default="skip", choices=["skip", "error"],
                   help="bad samples (size mismatch, labels out of range, unreadable): skip and count, or stop")


def _add_test_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                   help="keep-ratio test resize bound (default 2048 512: shorter side 512; the scenes: their side)")
    p.add_argument("--mode", default="whole", choices=["whole", "slide"], help="whole image or sliding window")
    p.add_argument("--crop", type=int, default=512, help="sliding-window size")
    p.add_argument("--stride", type=int, default=341, help="sliding-window step")
    add_device_option(p)
    add_ema_option(p)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="compute in bf16/fp16 where the device has it natively (else fp32, said in one line)")
    p.add_argument("--backend", default="torch", choices=["torch", "openvino"],
                   help="run the network in PyTorch (autocast for bf16/fp16) or in OpenVINO (CPU; fp32 or bf16; "
                   "compiled once per input size)")


def _inference_model(model: Any, args: argparse.Namespace) -> Any:
    """The segmentor as ``--backend`` / ``--precision`` run it (resizing, windows and flips stay in PyTorch)."""
    from ..runtime import as_module

    return as_module(model, args.backend, precision=args.precision, device=device_of(args))


def register(sub: argparse._SubParsersAction) -> None:
    from ..segmentation.recipes import RECIPES

    seg = sub.add_parser("seg", help="semantic segmentation with Semantic FPN (train, eval)")
    seg_sub = seg.add_subparsers(dest="seg_command", metavar="{train,eval,profile}")
    seg.set_defaults(func=lambda args: seg.print_help() or 1)

    p = seg_sub.add_parser("train", help="train Semantic FPN (torchrun for several processes)",
                           description="Train Semantic FPN on a PVT backbone; evaluates mIoU on --val-data / "
                                       "--val-split. With no arguments: Semantic FPN-B0 on the generated scenes, "
                                       "scored on their held-out test scenes.")
    add_train_arguments(p, RECIPES, "scenes")
    p.set_defaults(func=run_train)

    p = seg_sub.add_parser("profile", help="where a training step's time goes, part by part",
                           description="Time training steps as `seg train` runs them: loading the batch, the "
                                       "backbone, the FPN, the decode head, the loss, the optimizer.")
    add_profile_arguments(p, RECIPES, "scenes")
    p.set_defaults(func=run_seg_profile)

    p = seg_sub.add_parser("eval", help="mIoU, per-class IoU and pixel accuracy of a checkpoint on a dataset")
    p.add_argument("data", help="dataset root, or 'scenes' (the generated benchmark's held-out test scenes)")
    p.add_argument("--checkpoint", required=True, help="last.pth of 'pvtv2 seg train' (or a save_segmentor file)")
    p.add_argument("--split", default=None, help="ADE20K: validation (default); VOC: an ImageSets split")
    add_scenes_option(p)
    _add_data_args(p)
    _add_test_args(p)
    p.add_argument("--flip", action="store_true", help="also average the mirrored prediction")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None, help="write the full result (per-class rows included) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("segment", help="segment one image with a Semantic FPN checkpoint and save a colour overlay")
    p.add_argument("image", help="an image file")
    p.add_argument("--checkpoint", required=True, help="last.pth of 'pvtv2 seg train' (or a save_segmentor file)")
    p.add_argument("--save-vis", default=None, help="write the overlay with a legend here (PNG)")
    p.add_argument("--save-mask", default=None, help="write the label map here (PNG, one class index per pixel)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the colours")
    _add_test_args(p)
    p.set_defaults(func=run_segment)


def run_train(args: argparse.Namespace) -> int:
    from ..segmentation import SegmentationTask
    from ..segmentation.recipes import RECIPES

    return run_training(args, RECIPES, SegmentationTask)


def run_eval(args: argparse.Namespace) -> int:
    from ..segmentation import build_dataset, evaluate, format_results, load_segmentor
    from .._io import atomic_write_text

    model, meta = load_segmentor(args.checkpoint, map_location=device_of(args), use_ema=args.ema)
    model = _inference_model(model, args)
    from ..data.scenes import canvas_side, resolve
    from ..segmentation.layouts import evaluation_split

    args.data = resolve(args.data, tuple(args.scenes), progress=not args.no_progress)  # "scenes": the generated set
    side = canvas_side(args.data)
    scale = args.test_scale or ((side, side) if side else (2048, 512))
    split = evaluation_split(args.data, args.split)  # ADE20K: its validation images by default
    ds = build_dataset(args.data, layout=args.layout, split=split, masks=args.masks,
                       num_classes=args.num_classes or (meta.num_classes if args.masks else None),
                       class_names=meta.class_names if args.masks else None,
                       reduce_zero_label=args.reduce_zero_label,
                       on_error="raise" if args.on_bad_data == "error" else "skip")
    if ds.meta.num_classes != meta.num_classes:
        from ..errors import DataError

        raise DataError(f"{args.data} has {ds.meta.num_classes} classes but {args.checkpoint} predicts "
                        f"{meta.num_classes}; evaluate on the dataset the model was trained for")
    result = evaluate(model, ds, scale=scale, mode=args.mode, crop=args.crop, stride=args.stride,
                      flip=args.flip, num_workers=args.workers,
                      progress=not args.no_progress)
    print(format_results(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    import torch

    from .._io import atomic_write
    from ..segmentation import load_segmentor, predict, save_visualization
    from ..data.images import read_image

    model, meta = load_segmentor(args.checkpoint, map_location=device_of(args), use_ema=args.ema)
    model = _inference_model(model, args)
    image = read_image(args.image)
    labels = predict(model, image, scale=args.test_scale or (2048, 512), mode=args.mode, crop=args.crop,
                     stride=args.stride)
    labels = labels.cpu()
    ids, counts = torch.unique(labels, return_counts=True)
    order = torch.argsort(counts, descending=True)
    shares = ", ".join(f"{meta.class_names[int(ids[i])]} {100 * int(counts[i]) / labels.numel():.1f}%" for i in order[:8])
    print(f"{args.image}: {image.shape[2]}x{image.shape[1]}; {shares}")
    if args.save_vis:
        path = save_visualization(args.save_vis, image, labels, meta.class_names, alpha=args.alpha,
                                  title=f"{args.image.rsplit('/', 1)[-1]}: Semantic FPN")
        print(f"overlay written to {path}")
    if args.save_mask:
        from PIL import Image

        arr = labels.numpy().astype("uint8" if meta.num_classes <= 256 else "int32")  # "L" or "I" PNG
        path = atomic_write(args.save_mask, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))
        print(f"label map written to {path}")
    return 0


def run_seg_profile(args: argparse.Namespace) -> int:
    from ..segmentation import SegmentationTask
    from ..segmentation.recipes import RECIPES

    return run_profile(args, RECIPES, lambda cfg: [SegmentationTask(cfg)])
