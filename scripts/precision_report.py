"""Accuracy of bf16 inference against fp32: logits on seeded inputs per variant, and a trained run's test top-1.

    python scripts/precision_report.py --variants pvt_v2_b0 pvt_v2_b2 --n 1000   # random weights, seeded images
    python scripts/precision_report.py --checkpoint runs/fm/best.pth             # the run's own test set

Both paths are ``pvtv2.runtime.prepare(model, "torch", precision=...)``. On a CPU without native bf16 the script
sets ``PVTV2_FORCE_REDUCED=1`` so that the bf16 kernels run anyway (emulated by oneDNN: the same bf16 inputs and
weights with float32 accumulation as the native instructions, only slower), and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pvtv2 import create_model, list_models, precision  # noqa: E402
from pvtv2.runtime import prepare  # noqa: E402


def _force_bf16() -> str:
    if precision.native("bf16"):
        return "native bf16"
    os.environ["PVTV2_FORCE_REDUCED"] = "1"
    return "bf16 emulated by oneDNN (this CPU has no avx512_bf16/amx_bf16): same numbers as native, not its speed"


def variants(names: list[str], n: int, size: int, batch: int) -> None:
    """Max |logit difference| and top-1 agreement, bf16 vs fp32, on ``n`` seeded images per variant."""
    print(f"{'model':14s} {'images':>6s} {'max |diff|':>10s} {'max |logit|':>11s} {'top-1 agree':>11s} {'s':>6s}")
    for name in names:
        torch.manual_seed(0)
        model = create_model(name).eval()
        runs = {p: prepare(model, "torch", precision=p) for p in ("fp32", "bf16")}
        g = torch.Generator().manual_seed(0)
        diff = scale = 0.0
        agree = 0
        t = time.perf_counter()
        for start in range(0, n, batch):
            x = torch.randn(min(batch, n - start), 3, size, size, generator=g)
            ref, out = runs["fp32"](x), runs["bf16"](x)
            diff = max(diff, (out - ref).abs().max().item())  # type: ignore[operator]
            scale = max(scale, ref.abs().max().item())  # type: ignore[union-attr]
            agree += int((out.argmax(1) == ref.argmax(1)).sum())  # type: ignore[union-attr]
        print(f"{name:14s} {n:6d} {diff:10.2e} {scale:11.2e} {100 * agree / n:10.1f}% "
              f"{time.perf_counter() - t:6.0f}", flush=True)


def checkpoint_accuracy(path: str) -> None:
    """Test top-1 of a ``pvtv2 train`` run in fp32 and bf16, on the run's own test loader."""
    from pvtv2.engine.checkpoint import checkpoint_config
    from pvtv2.engine.cls_data import build_data
    from pvtv2.engine.distributed import DistEnv
    from pvtv2.engine.evaluate import evaluate
    from pvtv2.engine.inference import load_classifier
    from pvtv2.engine.recipes import ClassificationConfig

    clf = load_classifier(checkpoint=path)
    known = set(ClassificationConfig().to_dict())
    cfg = ClassificationConfig.from_dict({k: v for k, v in checkpoint_config(path).items() if k in known})
    data = build_data(cfg, DistEnv())
    for p in ("fp32", "bf16"):
        t = time.perf_counter()
        res = evaluate(prepare(clf.model, "torch", precision=p), data.val, torch.device("cpu"),
                       num_classes=len(clf.class_names))
        print(f"{p}: test top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
              f"({res['n']} images, {time.perf_counter() - t:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", default=None, help="registered names (default: every pvt_v2_*)")
    ap.add_argument("--n", type=int, default=1000, help="seeded images per variant")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--checkpoint", default=None, help="a pvtv2 train checkpoint: test top-1 in fp32 and bf16")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(_force_bf16(), flush=True)
    if args.checkpoint:
        checkpoint_accuracy(args.checkpoint)
    if args.variants is None or args.variants:
        variants(args.variants or list_models("pvt_v2_*"), args.n, args.size, args.batch)


if __name__ == "__main__":
    main()
