"""The benchmark's contestants: each path turns one PVT model into an ``images -> logits`` function."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..layers.fused import fused_kernels
from ..models import PyramidVisionTransformer
from ..runtime import prepare
from .peers import hf_model, onnxruntime_runner, timm_model

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
    def build(model: PyramidVisionTransformer, name: str, x: torch.Tensor) -> Fn | None:
        peer = make(model, name)
        if peer is None:
            return None
        peer.eval()
        if how == "onnxruntime":
            return onnxruntime_runner(peer, tuple(x.shape[-2:]))  # type: ignore[arg-type]
        if how == "compile":
            peer = torch.compile(peer, dynamic=False)

        def fn(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return peer(x)

        return fn

    return build


def _ours(backend: str) -> Builder:
    return lambda model, name, x: prepare(model, backend, example_input=x)  # type: ignore[return-value]


PATHS: dict[str, Builder] = {
    "pvtv2": _ours("torch"),  # eager, fused CPU kernels on
    "pvtv2-plain": _plain,  # eager, fused CPU kernels off: what the fusion buys
    "pvtv2-compile": _ours("compile"),
    "pvtv2-onnxruntime": _ours("onnxruntime"),
    "timm": _peer(timm_model, "eager"),
    "timm-compile": _peer(timm_model, "compile"),
    "timm-onnxruntime": _peer(timm_model, "onnxruntime"),
    "hf": _peer(lambda m, n: hf_model(m), "eager"),
}
DEFAULT_PATHS = ("pvtv2", "pvtv2-plain", "pvtv2-compile", "pvtv2-onnxruntime", "timm", "timm-onnxruntime", "hf")
# what the training-step comparison runs: name -> model factory (same weights)
TRAIN_PATHS: dict[str, Callable[[PyramidVisionTransformer, str], torch.nn.Module | None]] = {
    "pvtv2": lambda m, n: m,
    "timm": timm_model,
    "hf": lambda m, n: hf_model(m),
}
