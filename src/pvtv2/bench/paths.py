"""The benchmark's contestants: each path turns one PVT model into an ``images -> logits`` function."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from ..layers.fused import fused_kernels
from ..models import PyramidVisionTransformer
from ..runtime import prepare
from .peers import hf_model, onnxruntime_runner, openvino_runner, timm_model

Fn = Callable[[torch.Tensor], torch.Tensor]
# name -> builder(model, registry name, example batch); a builder returns None when its library is missing.
Builder = Callable[[PyramidVisionTransformer, str, torch.Tensor], "Fn | None"]


def _plain(model: PyramidVisionTransformer, name: str, x: torch.Tensor) -> Fn:
    run = prepare(model, "torch")

    def fn(x: torch.Tensor) -> torch.Tensor:
        with fused_kernels(False):
            return run(x)  # type: ignore[return-value]

    return fn


def _peer(make: Callable[[PyramidVisionTransformer, str], torch.nn.Module | None], how: str) -> Builder:
    """A peer run eagerly, compiled, under CPU/CUDA bf16 autocast, in onnxruntime or in OpenVINO (fp32/bf16)."""

    def build(model: PyramidVisionTransformer, name: str, x: torch.Tensor) -> Fn | None:
        peer = make(model, name)
        if peer is None:
            return None
        peer.eval()
        if how == "onnxruntime":
            return onnxruntime_runner(peer, tuple(x.shape[-2:]))  # type: ignore[arg-type]
        if how.startswith("openvino"):
            return openvino_runner(peer, "bf16" if how.endswith("bf16") else "fp32")
        if how == "compile":
            peer = torch.compile(peer, dynamic=False)
        autocast = how == "autocast-bf16"

        def fn(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
                return peer(x).float()

        fn.precision = "bf16" if autocast else "fp32"  # type: ignore[attr-defined]
        return fn

    return build


def _ours(backend: str, precision: str = "fp32") -> Builder:
    return lambda model, name, x: prepare(model, backend, precision=precision,  # type: ignore[return-value]
                                          example_input=x)


def _int8(model: PyramidVisionTransformer, name: str, x: torch.Tensor) -> Fn:
    """Ours in OpenVINO after NNCF's int8 quantization, calibrated on 32 seeded random images of the example's size
    (enough to time it; for accuracy calibrate on real images, as docs/speed.md did)."""
    g = torch.Generator().manual_seed(0)
    calibration = [torch.randn(1, 3, *x.shape[-2:], generator=g) for _ in range(32)]
    run = prepare(model, "openvino", precision="int8", example_input=x, calibration=calibration)
    return run  # type: ignore[return-value]


def _hf(model: PyramidVisionTransformer, name: str) -> torch.nn.Module | None:
    return hf_model(model)


PATHS: dict[str, Builder] = {
    "pvtv2": _ours("torch"),  # eager, fused CPU kernels on
    "pvtv2-plain": _plain,  # eager, fused CPU kernels off: what the fusion buys
    "pvtv2-compile": _ours("compile"),
    "pvtv2-onnxruntime": _ours("onnxruntime"),
    "pvtv2-openvino": _ours("openvino"),  # our model in OpenVINO (same runner as the "openvino" peer path), f32
    "timm": _peer(timm_model, "eager"),
    "timm-compile": _peer(timm_model, "compile"),
    "timm-onnxruntime": _peer(timm_model, "onnxruntime"),
    "hf": _peer(_hf, "eager"),
    "openvino": _peer(timm_model, "openvino"),  # timm's model in OpenVINO, f32
    # reduced precision: ours converted (fp32 where the CPU has no native bf16), the peers as their users turn it on
    "pvtv2-bf16": _ours("torch", "bf16"),
    "pvtv2-compile-bf16": _ours("compile", "bf16"),
    "pvtv2-openvino-bf16": _ours("openvino", "bf16"),  # bf16 hint where the CPU has native bf16, else f32
    "timm-bf16": _peer(timm_model, "autocast-bf16"),
    "hf-bf16": _peer(_hf, "autocast-bf16"),
    "openvino-bf16": _peer(timm_model, "openvino-bf16"),  # OpenVINO's bf16 inference-precision hint
    "pvtv2-openvino-int8": _int8,  # NNCF post-training int8 (opt-in: --precision int8)
}
# the precision each path asks for (what it ran in is in each result row)
PRECISION_OF = {name: name.rsplit("-", 1)[-1] if name.endswith(("-bf16", "-int8")) else "fp32" for name in PATHS}
DEFAULT_PATHS = ("pvtv2", "pvtv2-plain", "pvtv2-compile", "pvtv2-onnxruntime", "pvtv2-openvino", "timm",
                 "timm-onnxruntime", "hf", "openvino", "pvtv2-bf16", "pvtv2-openvino-bf16", "timm-bf16", "hf-bf16",
                 "openvino-bf16")


def autocast_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` whose forward runs under bf16 autocast (the training comparison's reduced-precision paths)."""
    from ..precision import Autocast

    return Autocast(model, next(model.parameters()).device.type, torch.bfloat16)


# what the training-step comparison runs: name -> model factory (same weights)
TRAIN_PATHS: dict[str, Callable[[PyramidVisionTransformer, str], torch.nn.Module | None]] = {
    "pvtv2": lambda m, n: m,
    "timm": timm_model,
    "hf": _hf,
    "pvtv2-bf16": lambda m, n: autocast_bf16(copy.deepcopy(m)),
    "timm-bf16": lambda m, n: None if (t := timm_model(m, n)) is None else autocast_bf16(t),
}
