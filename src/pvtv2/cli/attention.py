"""``pvtv2 attention IMAGE --save-vis attn.png``: the attention map of each stage's last block over a photo."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def _query(text: str) -> tuple[float, float] | None:
    if text == "mean":
        return None
    parts = text.replace("x", ",").split(",")
    try:
        y, x = (float(p) for p in parts)
    except ValueError:
        msg = f"expected Y,X (pixel row, column of the photo) or 'mean', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return y, x


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="draw the attention maps of each stage's last block over an image")
    p.add_argument("image", help="image file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", help="'official', a Hub name (hf-hub:OWNER/NAME) or a weights file of --model "
                                     "(default: random weights)")
    g.add_argument("--checkpoint", help="a pvtv2 train checkpoint (RUN/best.pth): its model and normalisation")
    p.add_argument("--model", default="pvt_v2_b2", help="model name for --weights (default: pvt_v2_b2)")
    p.add_argument("--save-vis", required=True, help="output PNG")
    p.add_argument("--query", type=_query, default=None, metavar="Y,X|mean",
                   help="query point in the photo's pixels (row, column); default or 'mean': mean over all queries")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, default=None,
                      help="resize the photo's shorter side to this, keeping its aspect ratio (default: 224, or the "
                           "checkpoint's training size)")
    size.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="resize the photo to exactly HxW")
    p.add_argument("--block", type=int, default=-1, help="which block of each stage (default: -1, the last)")
    p.set_defaults(func=run_attention)


def run_attention(args: argparse.Namespace) -> int:
    from ..analysis.attention import attention_maps, save_attention_figure
    from ..classification.inference import load_classifier, whole_image_input
    from ..data import load_image
    from ..errors import DataError
    from ..models import create_model

    photo = load_image(args.image)
    W0, H0 = photo.size
    if args.query is not None and not (0 <= args.query[0] < H0 and 0 <= args.query[1] < W0):
        raise DataError(f"--query {args.query[0]:g},{args.query[1]:g} is outside the {H0}x{W0} photo (row, column)")
    if args.checkpoint or args.weights:
        clf = load_classifier(checkpoint=args.checkpoint, weights=args.weights, model=args.model)
        model, name, source, pre = clf.model, clf.name, clf.source, clf.preprocess
    else:
        model, name, source, pre = create_model(args.model).eval(), args.model, "random weights", {}
    depth = min(model.cfg.depths)
    if not -depth <= args.block < depth:
        raise DataError(f"--block {args.block}: the shortest stage of {name} has {depth} block(s)")
    # (H, W) from --input-size, or the shorter side to --size (default: the checkpoint's training size), aspect kept
    x = whole_image_input(photo, pre, tuple(args.input_size) if args.input_size else args.size)  # (1, C, H, W)
    H, W = x.shape[-2:]
    query = None if args.query is None else (args.query[0] * H / H0, args.query[1] * W / W0)
    maps = attention_maps(model, x, query=query, block=args.block)
    block = "last block" if args.block == -1 else f"block {args.block}"
    path = save_attention_figure(args.save_vis, x[0], maps,
                                 title=f"{name} ({source}): attention of each stage's {block}, mean over heads")
    for s in maps.stages:
        w = s.weights[0].mean(0)
        if w.numel() == 1:
            log.warning("stage %d has a single key at %dx%d: its attention is 1 everywhere; try a larger --size",
                        s.stage + 1, H, W)
        print(f"stage {s.stage + 1}: {s.query_grid[0]}x{s.query_grid[1]} queries -> {s.key_grid[0]}x{s.key_grid[1]} "
              f"keys ({s.mode}), max weight {w.max().item():.3f} (uniform {1 / w.numel():.3f})")
    print(f"wrote {path}")
    return 0
