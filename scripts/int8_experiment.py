"""Static (calibrated) int8 against our fp32/bf16 path: accuracy on a trained run's test set, and speed.

    python scripts/int8_experiment.py --checkpoint runs/fm/best.pth            # the default Fashion-MNIST model

The run's model is exported to ONNX (``pvtv2.export.onnx_bytes``), quantised by onnxruntime's ``quantize_static``
(QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on training images) and run in onnxruntime
and in OpenVINO (which reads the QDQ graph and runs its own int8 kernels). Reported: test top-1 of every path, then
interleaved throughput at the run's input size and, for the same architecture with random weights calibrated on
random images, at 224x224.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pvtv2 import create_model, precision  # noqa: E402
from pvtv2.bench.measure import interleaved  # noqa: E402
from pvtv2.export import onnx_bytes, onnx_session  # noqa: E402
from pvtv2.runtime import prepare  # noqa: E402

Fn = Callable[[torch.Tensor], torch.Tensor]


def quantize(model: torch.nn.Module, size: int, calibration: list[torch.Tensor], workdir: Path) -> Path:
    """``model`` as a static int8 QDQ ONNX file calibrated on ``calibration`` batches."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    fp32, pre, int8 = workdir / "fp32.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    fp32.write_bytes(onnx_bytes(model, input_size=(size, size)))
    # graph clean-up and ONNX shape inference, as onnxruntime recommends (its symbolic pass stops at dynamic H, W)
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {"images": x.numpy()}

    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm", "Conv"], calibrate_method=CalibrationMethod.MinMax)
    return int8


def ort_fn(path: Path) -> Fn:
    session = onnx_session(path)
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def openvino_fn(path: Path) -> Fn | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled: dict[tuple[int, ...], object] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) not in compiled:
            model = core.read_model(str(path))
            model.reshape({"images": list(x.shape)})
            compiled[tuple(x.shape)] = core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": torch.get_num_threads(), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            }).create_infer_request()
        req = compiled[tuple(x.shape)]
        req.infer({0: x.numpy()})  # type: ignore[attr-defined]
        return torch.from_numpy(req.get_output_tensor(0).data.copy())  # type: ignore[attr-defined]

    return run


def paths(model: torch.nn.Module, size: int, calibration: list[torch.Tensor], workdir: Path) -> dict[str, Fn]:
    int8 = quantize(model, size, calibration, workdir)
    fns: dict[str, Fn] = {
        "pvtv2 fp32": prepare(model, "torch"),  # type: ignore[dict-item]
        "pvtv2 bf16": prepare(model, "torch", precision="bf16"),  # type: ignore[dict-item]
        "onnxruntime fp32": ort_fn(workdir / "fp32.onnx"),
        "onnxruntime int8": ort_fn(int8),
    }
    ov = openvino_fn(int8)
    if ov is not None:
        fns["openvino int8"] = ov
        fns["openvino fp32"] = openvino_fn(workdir / "fp32.onnx")  # type: ignore[assignment]
    return fns


def speed(fns: dict[str, Fn], size: int, batches: tuple[int, ...], repeats: int) -> None:
    for batch in batches:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        t = interleaved({k: (lambda f=f: f(x)) for k, f in fns.items()}, repeats, 2, torch.device("cpu"))
        ref = fns["pvtv2 fp32"](x)
        best = max(batch / v.median for k, v in t.items() if k.startswith("pvtv2"))
        print(f"\n{size}x{size} batch {batch}: img/s (x our best), max |logit diff| to fp32")
        for k, v in t.items():
            diff = (fns[k](x) - ref).abs().max().item()
            print(f"  {k:18s} {batch / v.median:9.1f} ({batch / v.median / best:.2f}x)  {diff:.1e}", flush=True)


def fashion_mnist(checkpoint: str, calib: int, repeats: int) -> None:
    from pvtv2.data import fashion_mnist as fm
    from pvtv2.data.samplers import EpochSampler
    from pvtv2.data.tensor_loader import TensorLoader
    from pvtv2.engine.checkpoint import checkpoint_config
    from pvtv2.engine.cls_data import build_data
    from pvtv2.engine.distributed import DistEnv
    from pvtv2.engine.evaluate import evaluate
    from pvtv2.engine.inference import load_classifier
    from pvtv2.engine.recipes import ClassificationConfig

    clf = load_classifier(checkpoint=checkpoint)
    known = set(ClassificationConfig().to_dict())
    cfg = ClassificationConfig.from_dict({k: v for k, v in checkpoint_config(checkpoint).items() if k in known})
    data = build_data(cfg, DistEnv())
    train = fm.load_fashion_mnist("train", cfg.data_dir).subset(calib)  # calibration: training images only
    calib_loader = TensorLoader(train, EpochSampler(len(train), shuffle=False, pad=False), 64,
                                size=cfg.input_size, mean=fm.MEAN, std=fm.STD)
    calibration = [x for x, _ in calib_loader]
    with tempfile.TemporaryDirectory() as tmp:
        fns = paths(clf.model, cfg.input_size, calibration, Path(tmp))
        print(f"{checkpoint}: test top-1 (10000 images), calibrated on {len(train)} training images")
        for name, fn in fns.items():
            t = time.perf_counter()
            res = evaluate(fn, data.val, torch.device("cpu"), num_classes=len(clf.class_names))
            print(f"  {name:18s} {res['top1']:.2f}%  ({time.perf_counter() - t:.0f} s)", flush=True)
        speed(fns, cfg.input_size, (1, 256), repeats)


def random_weights(name: str, size: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(8, 3, size, size, generator=g) for _ in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        speed(paths(model, size, calibration, Path(tmp)), size, (1, 16), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a pvtv2 train run (Fashion-MNIST by default)")
    ap.add_argument("--calib", type=int, default=1024, help="calibration images (from the training split)")
    ap.add_argument("--models", nargs="*", default=["pvt_v2_b0"], help="random-weight models timed at 224")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"bf16 native: {precision.native('bf16')}", flush=True)
    if args.checkpoint:
        fashion_mnist(args.checkpoint, args.calib, args.repeats)
    for name in args.models:
        print(f"\n{name}, random weights")
        random_weights(name, 224, args.repeats)


if __name__ == "__main__":
    main()
