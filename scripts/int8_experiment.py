"""int8 in OpenVINO (NNCF post-training quantization) against our fp32 and bf16 paths: test top-1 and speed.

    python scripts/int8_experiment.py                          # the Fashion-MNIST main job's model (made if missing)
    python scripts/int8_experiment.py --checkpoint runs/fm/best.pth --calib 600 --threads 2

The run's model goes through :func:`pvtv2.runtime.prepare` (``backend="openvino"``, ``precision="int8"``, calibrated
on the first ``--calib`` *training* images; the test images are only scored). Reported: Fashion-MNIST test top-1 of
every path, then interleaved throughput (img/s, medians) of the same paths for each ``--models`` architecture with
random weights at 224x224, calibrated on random images (speed does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pvtv2 import create_model, precision  # noqa: E402
from pvtv2.bench.measure import interleaved  # noqa: E402
from pvtv2.runtime import prepare  # noqa: E402

Fn = Callable[[torch.Tensor], torch.Tensor]


def paths(model: torch.nn.Module, calibration: list[torch.Tensor], example: torch.Tensor) -> dict[str, Fn]:
    """Eager fp32, OpenVINO fp32 / bf16 (where native) / int8 (the rest in bf16 where native, and in f32)."""
    fns: dict[str, Fn] = {
        "pvtv2 fp32": prepare(model, "torch", example_input=example),  # type: ignore[dict-item]
        "openvino fp32": prepare(model, "openvino", example_input=example),  # type: ignore[dict-item]
    }
    native = precision.native("bf16")
    if native:
        fns["openvino bf16"] = prepare(model, "openvino", precision="bf16", example_input=example)  # type: ignore
    int8 = prepare(model, "openvino", precision="int8", calibration=calibration)
    fns["openvino int8" + (" (rest bf16)" if native else "")] = int8  # type: ignore[assignment]
    if native:  # the same quantized model with the rest in f32: what a CPU without bf16 runs
        f32 = prepare(model, "openvino", precision="int8", calibration=calibration)
        f32.openvino.config["INFERENCE_PRECISION_HINT"] = "f32"  # type: ignore[attr-defined]  # before any compile
        fns["openvino int8 (rest f32)"] = f32  # type: ignore[assignment]
    return fns


def speed(fns: dict[str, Fn], size: int, batches: tuple[int, ...], repeats: int) -> None:
    for batch in batches:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        t = interleaved({k: (lambda f=f: f(x)) for k, f in fns.items()}, repeats, 2, torch.device("cpu"))
        ref = fns["pvtv2 fp32"](x)
        fp32 = batch / t["openvino fp32"].median
        print(f"\n{size}x{size} batch {batch}: img/s (x openvino fp32), max |logit diff| to eager fp32")
        for k, v in t.items():
            diff = (fns[k](x) - ref).abs().max().item()
            print(f"  {k:26s} {batch / v.median:8.1f} ({batch / v.median / fp32:.2f}x)  {diff:.1e}", flush=True)


def fashion_mnist(checkpoint: str, calib: int) -> None:
    from pvtv2.classification.inference import load_classifier
    from pvtv2.classification.tensor_loader import TensorLoader, index_batches
    from pvtv2.data import load_fashion_mnist

    clf = load_classifier(checkpoint=checkpoint)
    pre = clf.preprocess
    if pre.get("kind") != "fashion_mnist":
        raise SystemExit(f"{checkpoint} is not a Fashion-MNIST run")

    def loader(split: str, n: int, batch: int) -> TensorLoader:
        data = load_fashion_mnist(split)
        return TensorLoader(data, index_batches(list(range(min(n, len(data)))), batch), size=int(pre["size"]),
                            channels=int(pre.get("channels", 3)), mean=pre["mean"][0], std=pre["std"][0])

    calibration = [x for x, _ in loader("train", calib, 64)]  # training images only
    test = list(loader("test", 10**9, 250))
    fns = paths(clf.model, calibration, test[0][0])
    print(f"{checkpoint}: Fashion-MNIST test top-1 ({sum(len(y) for _, y in test)} images), "
          f"int8 calibrated on {calib} training images")
    for name, fn in fns.items():
        right = sum((fn(x).argmax(1) == y).sum().item() for x, y in test)
        print(f"  {name:26s} {100.0 * right / sum(len(y) for _, y in test):.2f}%", flush=True)


def random_weights(name: str, size: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(8, 3, size, size, generator=g) for _ in range(4)]
    speed(paths(model, calibration, torch.randn(1, 3, size, size)), size, (1, 16), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None,
                    help="a Fashion-MNIST pvtv2 train run (default: the main job's B0, trained into the cache if missing)")
    ap.add_argument("--calib", type=int, default=600, help="calibration images (from the training split)")
    ap.add_argument("--models", nargs="*", default=["pvt_v2_b0", "pvt_v2_b2"], help="random-weight models timed at 224")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"bf16 native: {precision.native('bf16')}, threads: {torch.get_num_threads()}", flush=True)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from pvtv2.cli.pretrain import fashion_mnist_backbone

        checkpoint = str(fashion_mnist_backbone("pvt_v2_b0"))
    fashion_mnist(checkpoint, args.calib)
    for name in args.models:
        print(f"\n{name}, random weights")
        random_weights(name, 224, args.repeats)


if __name__ == "__main__":
    main()
