"""``pvtv2 models`` (the model table) and ``pvtv2 convert`` (checkpoint formats)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with parameters, GFLOPs and released accuracy")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'pvt_v2_*'")
    p.set_defaults(func=run_models)

    p = sub.add_parser("convert", help="convert a checkpoint between formats (official, timm, hf, mmdet, pvtv2)")
    p.add_argument("src", help="checkpoint in any supported format (.pth, .pt, .bin, .safetensors)")
    p.add_argument("dst", help="output file; .safetensors writes safetensors, anything else torch.save")
    p.add_argument("--to", required=True, choices=["official", "timm", "hf", "mmdet", "pvtv2"], help="target format")
    p.add_argument("--from", dest="src_format", default=None, help="source format (default: detected from the keys)")
    p.set_defaults(func=run_convert)


def model_rows(pattern: str = "*") -> list[dict[str, object]]:
    """One dict per registered model: what ``pvtv2 models`` prints."""
    import torch

    from ..analysis import complexity
    from ..analysis.paper import published_top1
    from ..models import create_model, list_models, model_info
    from ..weights.release import release

    rows = []
    for name in list_models(pattern):
        info, rel = model_info(name), release(name)
        with torch.device("meta"):
            model = create_model(name)
        rows.append(
            {
                "name": name,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "gflops": complexity(model, (224, 224)).gflops,  # paper convention, meta device: no compute
                "top1": rel.top1 if rel is not None else published_top1(name),
                "url": rel.url if rel is not None else "-",
                "description": info.description,
            }
        )
    return rows


def run_models(args: argparse.Namespace) -> int:
    rows = model_rows(args.pattern)
    if not rows:
        from ..errors import UnknownModelError

        raise UnknownModelError(f"no registered model matches {args.pattern!r}; try 'pvtv2 models' for the list")
    print(f"{'model':<28} {'params (M)':>10} {'GFLOPs @224':>11} {'top-1':>6}  weights")
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] is not None else "-"
        print(f"{r['name']:<28} {r['params_m']:>10.2f} {r['gflops']:>11.2f} {top1:>6}  {r['url']}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..weights import convert, detect_format, read_checkpoint, save_weights, unwrap_state_dict
    from ..errors import CheckpointError

    sd = unwrap_state_dict(read_checkpoint(args.src), where=args.src)
    src = args.src_format or detect_format(sd)
    if src is None:
        raise CheckpointError(f"{args.src}: unrecognised checkpoint layout; pass --from FORMAT")
    sd = convert(sd, src, "pvtv2")
    path = save_weights(sd, args.dst, format=args.to)
    print(f"{args.src} ({src}, {len(sd)} tensors) -> {path} ({args.to})")
    return 0
