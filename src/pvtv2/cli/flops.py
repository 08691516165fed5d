"""``pvtv2 flops``: parameters and GFLOPs beside the published figures; ``--scaling`` (Figure 4), ``--table6``,
``--task det --table4``."""

from __future__ import annotations

import argparse
import sys

from ..errors import PVTError

CLS_COLUMNS = [
    ("model", "model", ""),
    ("params_m", "params (M)", ".2f"),
    ("gflops", "GFLOPs (ours)", ".3f"),
    ("released_gflops", "released", ".2f"),
    ("diff_released", "ours-released", "+.3f"),
    ("paper_gflops", "paper (T2)", ".1f"),
    ("diff_paper", "ours-paper", "+.2f"),
    ("paper_params_m", "paper params", ".1f"),
]
TABLE6_COLUMNS = [
    ("model", "model", ""),
    ("design", "design", ""),
    ("params_m", "params (M)", ".2f"),
    ("gflops", "GFLOPs@224", ".2f"),
    ("backbone_gflops_1280x800", "backbone GFLOPs@1280x800", ".1f"),
    ("paper_top1", "paper top-1", ".1f"),
    ("paper_retinanet_params_m", "paper RetinaNet params", ".1f"),
    ("paper_retinanet_gflops", "paper RetinaNet GFLOPs", ".1f"),
]
DENSE_COLUMNS = [
    ("model", "model", ""),
    ("head", "head", ""),
    ("input_size", "input", ""),
    ("params_m", "params (M)", ".2f"),
    ("paper_params_m", "paper params", ".1f"),
    ("gflops", "GFLOPs", ".1f"),
    ("paper_gflops", "paper GFLOPs", ".1f"),
    ("note", "note", ""),
]
TABLE4_COLUMNS = [
    ("detector", "detector", ""),
    ("backbone", "backbone", ""),
    ("paper_ap", "paper AP", ".1f"),
    ("params_m", "params (M)", ".2f"),
    ("paper_params_m", "paper", ".0f"),
    ("gflops", "GFLOPs", ".1f"),
    ("paper_gflops", "paper", ".0f"),
    ("gflops_diff_pct", "diff %", "+.2f"),
    ("note", "note", ""),
]
SCALING_COLUMNS = [
    ("label", "model", ""),
    ("size", "size", "d"),
    ("gflops", "GFLOPs", ".2f"),
    ("growth", "x smallest", ".2f"),
    ("latency_ms", "latency (ms)", ".0f"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops",
        help="parameters and GFLOPs (paper convention) beside the released and paper figures; Figure 4; Table 6",
        description="Count parameters and GFLOPs (multiply-accumulates as mmcv counts them, plus the attention "
        "products, as the paper does). Default: every pvt_v2_* model at 224x224 beside the released-code and "
        "paper (Table 2) figures.",
    )
    p.add_argument("models", nargs="*", help="registered names or patterns (default: pvt_v2_*); with --scaling: "
                   "figure models (vit_small_16, vit_small_32, pvt_v1_small, resnet50, pvt_v2_b2, pvt_v2_b2_li)")
    p.add_argument("--input-size", default="224", metavar="H,W", help="input size, 'S' or 'H,W' (default 224)")
    p.add_argument("--csv", metavar="PATH", help="also write the rows as CSV (with --scaling: the figure's data)")
    p.add_argument("--no-attn-matmul", action="store_true", help="leave out the attention products q@k, attn@v")
    p.add_argument("--breakdown", type=int, metavar="DEPTH", help="also print each model's per-module GFLOPs")
    p.add_argument("--task", choices=["cls", "det", "seg"], default="cls",
                   help="classifiers (default), detectors at 1280x800 or segmenters at 512x512")
    p.add_argument("--table6", action="store_true", help="the Table 6 ablation rows beside the paper's top-1")
    p.add_argument("--table4", action="store_true", help="with --task det: the 16 cells of Table 4 (four detectors on "
                   "ResNet-50, Swin-T, PVT v2-B2-Li, B2) beside the paper")
    g = p.add_argument_group("Figure 4 (--scaling)")
    g.add_argument("--scaling", action="store_true", help="GFLOPs (and latency) against input size: PNG + CSV")
    g.add_argument("--sizes", metavar="S,S,...", help="square sizes (default 224,448,672,896,1120)")
    g.add_argument("--max-size", type=int, metavar="S", help="drop sizes above S")
    g.add_argument("--png", default="scaling.png", metavar="PATH", help="figure path (default scaling.png); "
                   "the CSV goes next to it unless --csv is given")
    g.add_argument("--latency-repeats", type=int, default=3, metavar="N",
                   help="timed batch-1 passes per point, median reported (default 3; 0 = no latency)")
    g.add_argument("--latency-max-size", type=int, default=672, metavar="S",
                   help="time only sizes up to S, count the rest (default 672: keeps a CPU run to minutes)")
    g.add_argument("--no-latency", action="store_true", help="count only (same as --latency-repeats 0)")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads while timing (default: torch's; 1 is "
                   "steadier on a busy machine)")
    g.add_argument("--no-progress", action="store_true", help="no timing progress bar (default: on a terminal)")
    p.set_defaults(func=run_flops)


def run_flops(args: argparse.Namespace) -> int:
    attn = not args.no_attn_matmul
    if args.scaling:
        return _scaling(args, attn)
    if args.table6:
        from ..analysis.tables import format_table, table6_rows

        rows = table6_rows(attn)
        print(format_table(rows, TABLE6_COLUMNS))
        print("params/GFLOPs: classifier at 224; backbone = headless, 1280x800. "
              "The paper's #P/GFLOPs are whole RetinaNet detectors at 1280x800.")
        _maybe_csv(rows, args.csv)
        return 0
    if args.table4:
        return _table4(args)
    if args.task != "cls":
        return _dense(args)
    from ..analysis.tables import classification_rows, count_registered, format_table

    names = _expand(args.models)
    size = _parse_size(args.input_size)
    rows = classification_rows(names, size, attn)
    convention = "with the attention products q@k, attn@v (the paper's)" if attn else \
        "without the attention products (mmcv's raw count)"
    print(f"GFLOPs = multiply-accumulates at {size[0]}x{size[1]} in mmcv's convention, {convention}")
    print(format_table(rows, CLS_COLUMNS))
    for r in rows:
        if r["note"]:
            print(f"  {r['model']}: {r['note']}")
    if args.breakdown is not None:
        for name in names:
            print(f"\n{name} at {size[0]}x{size[1]}:")
            print(count_registered(name, size, attn).table(args.breakdown))
    _maybe_csv(rows, args.csv)
    return 0


def _scaling(args: argparse.Namespace, attn: bool) -> int:
    from pathlib import Path

    from ..analysis.scaling import DEFAULT_SIZES, SCALING_MODELS, growth_order, plot_scaling, scaling_rows
    from ..analysis.tables import format_table, write_csv

    unknown = [m for m in args.models if m not in SCALING_MODELS]
    if unknown:
        raise PVTError(f"unknown --scaling model(s) {unknown}; choose from {', '.join(SCALING_MODELS)}")
    sizes = _parse_sizes(args.sizes) if args.sizes else list(DEFAULT_SIZES)
    if args.max_size is not None:
        sizes = [s for s in sizes if s <= args.max_size]
    if not sizes or min(sizes) < 32:
        raise PVTError(f"--sizes/--max-size leave no size >= 32 px to count (got {sizes}); e.g. --sizes 224,448")
    repeats = 0 if args.no_latency else args.latency_repeats
    rows = scaling_rows(args.models or None, sizes, latency_repeats=repeats, latency_max_size=args.latency_max_size,
                        threads=args.threads, attn_matmul=attn, progress=sys.stderr.isatty() and not args.no_progress)
    print(format_table(rows, SCALING_COLUMNS))
    labels = {k: SCALING_MODELS[k].label for k in SCALING_MODELS}
    print(f"GFLOPs growth {sizes[0]} -> {sizes[-1]} px, fastest first: "
          + " > ".join(labels[k] for k in growth_order(rows)))
    png = plot_scaling(rows, args.png)
    csv_path = write_csv(rows, args.csv or Path(args.png).with_suffix(".csv"))
    print(f"wrote {png} and {csv_path}")
    return 0


def _dense(args: argparse.Namespace) -> int:
    import importlib

    from ..analysis.tables import format_table

    package = {"det": "detection", "seg": "segmentation"}[args.task]
    if args.no_attn_matmul or args.input_size != "224":
        raise PVTError(f"--task {args.task} counts at the paper's size and convention; --input-size and "
                       "--no-attn-matmul apply to classifiers only")
    try:
        complexity_rows = importlib.import_module(f"pvtv2.{package}").complexity_rows
    except (ImportError, AttributeError) as e:
        raise PVTError(f"pvtv2.{package}.complexity_rows is not available in this installation ({e}); "
                       f"--task {args.task} needs the {package} package") from None
    rows = complexity_rows(list(args.models) or None)
    print(format_table(rows, DENSE_COLUMNS))
    _maybe_csv(rows, args.csv)
    return 0


def _table4(args: argparse.Namespace) -> int:
    from ..analysis.tables import format_table

    if args.task != "det" or args.models or args.input_size != "224" or args.no_attn_matmul:
        raise PVTError("--table4 takes no model names and no --input-size / --no-attn-matmul; "
                       "run 'pvtv2 flops --task det --table4'")
    from ..detection.evaluation.table4 import table4_rows

    rows = table4_rows()
    print(format_table(rows, TABLE4_COLUMNS))
    print("params and GFLOPs of one 800x1280 image, 80 classes: mmdet's forward_dummy counted as mmcv counts it, "
          "plus the attention products (docs/detection.md, 'Table 4')")
    _maybe_csv(rows, args.csv)
    return 0


def _maybe_csv(rows: list[dict], path: str | None) -> None:
    if path:
        from ..analysis.tables import write_csv

        print(f"wrote {write_csv(rows, path)}")


def _expand(patterns: list[str]) -> list[str]:
    from ..models import list_models, model_info

    if not patterns:
        return list_models("pvt_v2_*")
    names: list[str] = []
    for p in patterns:
        found = list_models(p) if any(c in p for c in "*?[") else [model_info(p).name]
        if not found:
            raise PVTError(f"no registered model matches {p!r}; see 'pvtv2 models'")
        names += [n for n in found if n not in names]
    return names


def _parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32:
        raise PVTError(f"--input-size must be 'S' or 'H,W' with sides >= 32 px, got {text!r}")
    return parts[0], parts[1]


def _parse_sizes(text: str) -> list[int]:
    try:
        return sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise PVTError(f"--sizes must be comma-separated integers, e.g. 224,448,672; got {text!r}") from None
