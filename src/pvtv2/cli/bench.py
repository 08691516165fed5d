"""``pvtv2 bench``: throughput of every path (ours, timm, Hugging Face, OpenVINO; fp32 and bf16) in one interleaved
run, with ratios."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's flags (shared with ``scripts/benchmark.py``); unset flags keep the defaults / smoke preset."""
    p.add_argument("--models", nargs="+", default=None, help="registered names (default: pvt_v2_b0 pvt_v2_b2)")
    p.add_argument("--sizes", nargs="+", default=None, help="square input sides (default: 224)")
    p.add_argument("--batches", nargs="+", default=None, help="batch sizes (default: 1 16)")
    p.add_argument("--paths", nargs="+", default=None, help="inference paths: pvtv2 pvtv2-plain pvtv2-compile "
                   "pvtv2-onnxruntime pvtv2-openvino timm timm-compile timm-onnxruntime hf openvino, and in bf16 "
                   "pvtv2-bf16 pvtv2-compile-bf16 pvtv2-openvino-bf16 timm-bf16 hf-bf16 openvino-bf16, in int8 "
                   "pvtv2-openvino-int8 (default: all but timm-compile, pvtv2-compile-bf16 and pvtv2-openvino-int8)")
    p.add_argument("--precision", nargs="+", default=None, choices=["fp32", "bf16", "int8"],
                   help="run the paths of these precisions (default: all); ours run bf16 only where the CPU "
                   "has it natively (else fp32, said in the 'ran' column; PVTV2_FORCE_REDUCED=1 forces it); int8: "
                   "pvtv2-openvino-int8 (NNCF, needs pip install 'pvtv2[int8]')")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    p.add_argument("--repeats", type=int, default=None, help="timed interleaved rounds (default: 7)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default: 2)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--train-models", nargs="*", default=None,
                   help="models whose training step is compared with timm's (default: pvt_v2_b0; none: no flag value)")
    p.add_argument("--train-paths", nargs="+", default=None, help="training-step paths: pvtv2 timm hf pvtv2-bf16 "
                   "timm-bf16 (bf16: under CPU/CUDA autocast; default: pvtv2 timm)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default: 32)")
    p.add_argument("--train-size", type=int, default=None, help="training input side (default: 224)")
    p.add_argument("--dense-train", nargs="*", default=None, metavar="TASK",
                   help="dense scenes training steps to time: retinanet semantic_fpn (the default; none: no value)")
    p.add_argument("--train-repeats", type=int, default=None, help="timed training steps per path (default: 5)")
    p.add_argument("--depths", type=int, nargs=4, default=None, help="override the models' depths")
    p.add_argument("--no-tune-malloc", action="store_true", help="keep glibc's default large-allocation behaviour "
                   "(default: recycle freed memory, see pvtv2.runtime.tune_cpu_allocator)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that the benchmark runs")
    p.add_argument("--json", default="bench.json", help="where to write the results (default: bench.json)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark eager/compile/onnxruntime, fp32 and bf16, against timm, Hugging Face and OpenVINO "
        "(interleaved, medians, roofline)",
        description="Measure this project's inference paths beside timm, Hugging Face transformers and OpenVINO, in "
        "fp32 and bf16, in one "
        "interleaved run (warm-up, medians, spread), the machine's matmul GFLOP/s and each path's fraction of it, "
        "the training step against timm, and peak memory. Prints a table and writes JSON.",
    )
    add_arguments(p)
    p.set_defaults(func=run_bench)


def config_from_args(args: argparse.Namespace):  # -> BenchConfig (imported lazily)
    """The :class:`~pvtv2.bench.BenchConfig` the flags describe."""
    from dataclasses import replace

    from ..bench import SMOKE, BenchConfig
    from ..bench.run import parse_ints

    cfg = SMOKE if args.smoke else BenchConfig()
    changes = {
        "models": tuple(args.models) if args.models else None,
        "sizes": parse_ints(args.sizes),
        "batches": parse_ints(args.batches),
        "paths": tuple(args.paths) if args.paths else None,
        "precisions": tuple(args.precision) if args.precision else None,
        "train_paths": tuple(args.train_paths) if args.train_paths else None,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": args.device,
        "train_models": tuple(args.train_models) if args.train_models is not None else None,
        "train_batch": args.train_batch,
        "train_size": args.train_size,
        "train_repeats": args.train_repeats,
        "dense_train": tuple(args.dense_train) if args.dense_train is not None else None,
        "depths": tuple(args.depths) if args.depths else None,
        "tune_malloc": False if args.no_tune_malloc else None,
    }
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})


def run_bench(args: argparse.Namespace) -> int:
    from ..bench import run_benchmark, save_json
    from ..models import model_info

    cfg = config_from_args(args)
    for name in (*cfg.models, *cfg.train_models):
        model_info(name)  # unknown names fail before anything is measured
    result = run_benchmark(cfg)
    print(result.table())
    if args.json:
        print(f"wrote {save_json(result, args.json)}")
    return 0
