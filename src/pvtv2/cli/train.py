"""``pvtv2 train`` (classification training), ``pvtv2 eval`` (ImageFolder top-1/top-5) and ``pvtv2 predict``."""

from __future__ import annotations

import argparse
import json
import sys

# Flags that map one-to-one onto ClassificationConfig fields (flag dest -> field); None means "recipe default".
_FIELDS = ("dataset", "data_dir", "model", "epochs", "batch_size", "lr", "base_lr", "weight_decay", "warmup_epochs",
           "min_lr", "input_size", "drop_path", "clip_grad", "smoothing", "repeated_aug", "precision", "seed",
           "device", "threads", "workers", "train_subset", "val_subset", "max_steps", "ckpt_every", "weights",
           "on_bad_image", "ema_decay", "log_every")
# What may change when resuming (the rest must stay as the checkpoint says for an exact continuation).
_RESUMABLE = {"epochs", "device", "threads", "workers", "max_steps", "log_every", "ckpt_every"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train or fine-tune a classifier (default: PVT v2-B0 on Fashion-MNIST in minutes)",
        description="Train a PVT classifier. With no arguments: pvt_v2_b0 from scratch on Fashion-MNIST (Debian "
                    "package dataset-fashion-mnist), writing runs/<timestamp>/. Multi-GPU / multi-node: "
                    "torchrun --nproc_per_node=N -m pvtv2 train ...",
    )
    p.add_argument("--recipe", default="fashion_mnist", choices=["fashion_mnist", "imagenet"],
                   help="named configuration: fashion_mnist (default) or imagenet (the paper's recipe, ImageFolder)")
    p.add_argument("--dataset", choices=["fashion_mnist", "folder"],
                   help="fashion_mnist, or folder: DIR/train + DIR/val")
    p.add_argument("--data-dir", help="folder: root with train/ and val/; fashion_mnist: torchvision layout")
    p.add_argument("--download", action="store_true", help="fashion_mnist: download into --data-dir (needs internet)")
    p.add_argument("--model", help="registered model name (see 'pvtv2 models')")
    p.add_argument("--weights", help="fine-tune from a checkpoint (any format) or 'official'")
    p.add_argument("--ignore-head", action="store_true", help="do not load the checkpoint's classification head")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="GLOBAL batch size, split evenly across processes")
    p.add_argument("--lr", type=float, help="peak learning rate (default: base-lr x batch-size / 512)")
    p.add_argument("--base-lr", type=float, help="learning rate per 512 images of batch (recipe: 5e-4 for ImageNet)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--min-lr", type=float)
    p.add_argument("--input-size", type=int)
    p.add_argument("--drop-path", type=float, help="stochastic depth rate (default: recipe / variant)")
    p.add_argument("--clip-grad", type=float, help="max gradient norm (0: off; default: the variant's)")
    p.add_argument("--smoothing", type=float, help="label smoothing (without mixup)")
    p.add_argument("--repeated-aug", type=int, help="repeated augmentation count (imagenet recipe: 3)")
    p.add_argument("--ema", action="store_true", default=None, help="keep and evaluate an EMA of the weights")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="auto: bf16/fp16 on CUDA, fp32 on CPU")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--threads", type=int, help="CPU threads per process")
    p.add_argument("--workers", type=int, help="DataLoader workers per process (folder data)")
    p.add_argument("--train-subset", type=int, help="train on the first N images only")
    p.add_argument("--val-subset", type=int, help="evaluate on the first N images only")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--ckpt-every", type=int, help="also write last.pth every N steps")
    p.add_argument("--on-bad-image", choices=["skip", "error"], help="unreadable images: skip and count, or stop")
    p.add_argument("--log-every", type=int, help="progress-bar update interval in steps")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help='any other config field, e.g. --set model_overrides=\'{"depths": [1, 1, 1, 1]}\'')
    p.add_argument("--out", help="run directory (default: runs/<timestamp>; on --resume: the checkpoint's)")
    p.add_argument("--resume", help="continue exactly from a run's last.pth")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run_train)

    p = sub.add_parser("eval", help="top-1/top-5 on an ImageFolder val set (resize 256 bicubic, center-crop 224)")
    _model_args(p)
    p.add_argument("data", help="ImageFolder root: DATA/<class>/<image> (e.g. imagenet/val with synset folders)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--on-bad-image", choices=["skip", "error"], default="skip")
    p.add_argument("--json", default="eval.json", help="where to write the results (default: eval.json)")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("predict", help="top-5 classes of image files")
    _model_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--save-vis", help="write a PNG of the images with their top-k bars")
    p.add_argument("--json", help="also write the predictions as JSON")
    p.add_argument("--on-bad-image", choices=["skip", "error"], default="skip",
                   help="unreadable images: skip them with a warning (default), or stop at the first")
    p.set_defaults(func=run_predict)


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="a pvtv2 train checkpoint (RUN/best.pth): model, classes, preprocessing")
    g.add_argument("--weights", help="'official' (the authors' ImageNet release of --model) or a weights file")
    p.add_argument("--model", default="pvt_v2_b2", help="model name for --weights (default: pvt_v2_b2)")
    p.add_argument("--num-classes", type=int, help="head size for --weights (default: read from the file)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--backend", default="torch", choices=["torch", "compile", "onnxruntime"],
                   help="inference backend (pvtv2.runtime)")


def resolve_config(args: argparse.Namespace):  # -> ClassificationConfig
    """The recipe (or the resumed run's config) with the command-line flags applied."""
    from ..engine.checkpoint import checkpoint_config
    from ..engine.recipes import ClassificationConfig, get_recipe
    from ..errors import PVTError

    given = {f: getattr(args, f) for f in _FIELDS if getattr(args, f, None) is not None}
    if args.ema:
        given["ema"] = True
    if args.ignore_head:
        given["ignore_head"] = True
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise PVTError(f"--set expects FIELD=JSON, got {item!r}")
        try:
            given[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            given[key.strip()] = value  # a bare string
    if args.resume:
        fixed = sorted(set(given) - _RESUMABLE)
        if fixed:
            raise PVTError(f"--resume continues the run as it was configured; these cannot change: {', '.join(fixed)}")
        known = set(ClassificationConfig().to_dict())
        saved = {k: v for k, v in checkpoint_config(args.resume).items() if k in known}
        return ClassificationConfig.from_dict(saved).replace(**given)
    cfg = get_recipe(args.recipe)
    return cfg.replace(**given)


def run_train(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.download:
        from ..data import download_fashion_mnist
        from ..errors import DataError

        if not cfg.data_dir:
            raise DataError("--download needs --data-dir DIR to download into")
        download_fashion_mnist(cfg.data_dir)
    from ..engine.classification import train

    train(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    return 0


def _load(args: argparse.Namespace):  # -> Classifier
    from ..engine.inference import load_classifier

    return load_classifier(checkpoint=args.checkpoint, weights=args.weights, model=args.model,
                           num_classes=args.num_classes, device=args.device, use_ema=args.ema)


def run_eval(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..engine.inference import evaluate_folder

    clf = _load(args)
    res = evaluate_folder(clf, args.data, batch_size=args.batch_size, workers=args.workers, backend=args.backend,
                          device=args.device, on_bad=args.on_bad_image, limit=args.limit)
    print(f"{res['model']} ({res['weights']}) on {res['data']}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
          f"({res['n']} images, {res['protocol']}, backend {res['backend']}"
          f"{', %d unreadable skipped' % res['skipped'] if res['skipped'] else ''})")
    atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    print(f"results written to {args.json}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..data.images import BadImage, load_image
    from ..engine.inference import predict, save_visualisation
    from ..errors import DataError

    images = []
    for path in args.images:  # check every file first: one bad file must not cost the others their answer
        try:
            load_image(path)
            images.append(path)
        except BadImage as e:
            if args.on_bad_image == "error":
                raise
            print(f"warning: skipped {e}", file=sys.stderr)
    if not images:
        raise DataError(f"none of the {len(args.images)} image(s) could be read; nothing to predict")
    args.images = images
    clf = _load(args)
    preds = predict(clf, images, topk=args.topk, backend=args.backend, device=args.device)
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
