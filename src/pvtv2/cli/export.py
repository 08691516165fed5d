"""``pvtv2 export``: a model to ONNX (dynamic batch, height and width), checked in onnxruntime on the spot."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX and check it against PyTorch in onnxruntime",
        description="Export MODEL (a classifier or backbone), or the detector or segmentor of a --checkpoint, to ONNX "
        "with dynamic batch, height and width, then run onnxruntime and PyTorch on random inputs at two sizes and "
        "print the largest difference.",
    )
    p.add_argument("model", nargs="?", help="registered model name (see 'pvtv2 models'); not with --checkpoint")
    p.add_argument("--checkpoint", default=None, help="a checkpoint of 'pvtv2 det train' (exports backbone, FPN and "
                   "heads without post-processing) or 'pvtv2 seg train' (exports the logits map)")
    p.add_argument("--weights", default=None, help="checkpoint path (any supported format) or 'official'; "
                   "default: random weights")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("-o", "--output", default=None, help="output file (default: MODEL.onnx)")
    p.add_argument("--input-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"),
                   help="size of the traced example input (the file accepts any size >= 32)")
    p.add_argument("--backbone", action="store_true", help="export the four stage maps (stage1..stage4) instead of "
                   "the logits")
    p.add_argument("--num-classes", type=int, default=None, help="head size (default: the checkpoint's, else 1000)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 20; 18 for onnxruntime < 1.17)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="fp16: float16 weights and arithmetic (LayerNorm statistics, pooled mean and head in float32), "
                   "float32 input and outputs; bf16 is a run-time choice of the runtime on the fp32 file (explained "
                   "if asked for)")
    p.add_argument("--atol", type=float, default=None, help="largest accepted onnxruntime-PyTorch (fp32) difference "
                   "(default: 1e-4; fp16: 5e-2)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    p.set_defaults(func=run_export)


def _check_sizes(h: int, w: int) -> tuple[tuple[int, int], ...]:
    """The traced size and one that is a multiple of neither 7 nor 32 (where exports usually break)."""
    other = (200, 328) if (h, w) != (200, 328) else (97, 161)
    return ((h, w), other)


def run_export(args: argparse.Namespace) -> int:
    import logging

    from ..errors import PVTError
    from ..export import export_onnx
    from ..export.onnx import DEFAULT_OPSET
    from ..models import create_model, model_info

    log = logging.getLogger("pvtv2.export")
    if min(args.input_size) < 32:
        raise PVTError(f"--input-size {args.input_size[0]} {args.input_size[1]}: PVT needs at least 32 px per side")
    if args.checkpoint is not None:
        if args.model is not None or args.weights is not None:
            raise PVTError("give either MODEL [--weights W] (a classifier) or --checkpoint CKPT (a detector or "
                           "segmentor), not both")
        return _export_task_model(args)
    if args.model is None:
        raise PVTError("name a MODEL to export (see 'pvtv2 models') or pass --checkpoint of a detection or "
                       "segmentation run")
    model_info(args.model)  # unknown names fail here, with the list of known ones
    num_classes = 0 if args.backbone else args.num_classes
    if num_classes is None:
        head = _head_size(args.weights)
        num_classes = 1000 if head is None else head
    args.backbone = args.backbone or num_classes == 0  # a checkpoint without a head is a backbone
    if args.weights is None:
        log.warning("no --weights given: exporting randomly initialised weights")
    model = create_model(args.model, num_classes=num_classes, weights=args.weights).eval()
    out = args.output or f"{args.model}{'_backbone' if args.backbone else ''}.onnx"
    path = export_onnx(model, out, backbone=args.backbone, input_size=tuple(args.input_size),
                       opset=args.opset or DEFAULT_OPSET, precision=args.precision)
    outputs = "stage1..stage4 (strides 4, 8, 16, 32)" if args.backbone else f"logits ({num_classes} classes)"
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB): input 'images' (batch, 3, height, width), "
          f"output {outputs}")
    return _check(args, path, model)


def _check(args: argparse.Namespace, path: object, model: object) -> int:
    """Compare onnxruntime with PyTorch at the traced size and one that is a multiple of neither 7 nor 32."""
    import torch

    from ..errors import PVTError
    from ..export import check_onnx

    if args.no_check:
        return 0
    with torch.no_grad():
        report = check_onnx(path, model, backbone=args.backbone, sizes=_check_sizes(*args.input_size))
    print(f"{report} ({args.precision} file, fp32 PyTorch model)")
    atol = args.atol if args.atol is not None else (1e-4 if args.precision == "fp32" else 5e-2)
    if report.max_abs_diff > atol:
        raise PVTError(f"onnxruntime differs from PyTorch by {report.max_abs_diff:.2e} > --atol {atol:g}; "
                       "please report this with the command you ran")
    return 0


def _export_task_model(args: argparse.Namespace) -> int:
    """A detection or segmentation checkpoint: rebuild its model and export what ONNX can carry of it."""
    from pathlib import Path

    from ..errors import CheckpointError, PVTError
    from ..export import export_onnx
    from ..export.onnx import DEFAULT_OPSET

    if args.backbone:
        raise PVTError("--backbone is for classifiers: 'pvtv2 export MODEL --weights CKPT --backbone' exports the "
                       "backbone of any checkpoint, a detection or segmentation one included")
    try:
        from ..segmentation import load_segmentor

        model, _ = load_segmentor(args.checkpoint)
        what = f"logits ({model.num_classes} classes, at the input size)"
    except CheckpointError as seg_error:
        from ..detection.interop.export import DenseDetector
        from ..detection.inference import load_detector

        try:
            detector, meta = load_detector(args.checkpoint)
        except CheckpointError:
            raise CheckpointError(f"{seg_error}; nor is it a detection checkpoint (for a classifier: pvtv2 export "
                                  "MODEL --weights CKPT)") from None
        model = DenseDetector(detector, meta["arch"])
        what = (f"{', '.join(model.output_names())} of {meta['arch']} (input: ImageNet-normalised images; anchors, "
                "decoding and NMS are not in the file)")
    model.eval()
    out = args.output or f"{Path(args.checkpoint).stem}.onnx"
    path = export_onnx(model, out, input_size=tuple(args.input_size), opset=args.opset or DEFAULT_OPSET,
                       precision=args.precision)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB): input 'images' (batch, 3, height, width), output {what}")
    return _check(args, path, model)


def _head_size(weights: str | None) -> int | None:
    """Classes of a checkpoint's head: 0 when it has none, None when unknown (official weights, no checkpoint)."""
    if weights is None or weights == "official":
        return None
    from ..weights import convert, detect_format, read_checkpoint, unwrap_state_dict

    sd = unwrap_state_dict(read_checkpoint(weights), where=weights)
    fmt = detect_format(sd)
    if fmt is None:
        return None
    head = convert(sd, fmt, "pvtv2").get("head.weight")
    return int(head.shape[0]) if head is not None else 0
