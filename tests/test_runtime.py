"""Inference backends and the fused CPU kernels: every path equals eager PyTorch within float rounding."""

from __future__ import annotations

import pytest
from conftest import require
import torch

from pvtv2 import create_model
from pvtv2.errors import PVTError
from pvtv2.layers import fused
from pvtv2.layers.fused import fused_kernels
from pvtv2 import runtime
from pvtv2.runtime import fastest, prepare

TINY = dict(depths=(1, 1, 1, 1), embed_dims=(8, 16, 40, 64))  # fast to compile and export


def _diff(a: object, b: object) -> float:
    if isinstance(a, torch.Tensor):
        return (a - b).abs().max().item()  # type: ignore[operator]
    return max((x - y).abs().max().item() for x, y in zip(a, b))  # type: ignore[call-overload]


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_v1_tiny"])
def test_fused_cpu_kernels_equal_the_plain_path(name: str) -> None:
    model = create_model(name, num_classes=7, depths=(1, 1, 1, 1)).eval()
    x = torch.randn(3, 3, 97, 161)
    with torch.inference_mode():
        out = model(x)
        maps = model.forward_features(x)
        with fused_kernels(False):
            ref = model(x)
            ref_maps = model.forward_features(x)
    assert _diff(out, ref) < 1e-5
    assert _diff(maps, ref_maps) < 1e-4


def test_batch_chunking_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("pvt_v2_b0", depths=(2, 1, 1, 1)).eval()
    x = torch.randn(5, 3, 64, 96)
    with torch.inference_mode():
        whole = model(x)
        monkeypatch.setattr(fused, "_CHUNK_BYTES", 1)  # the smallest chunks: 2 + 2 + 1 images in every stage
        assert fused.batch_chunk(x.permute(0, 2, 3, 1), 64) == 2
        assert _diff(model(x), whole) < 1e-5


def test_fused_path_stays_off_under_autograd_and_training() -> None:
    model = create_model("pvt_v2_b0", depths=(1, 1, 1, 1))
    block = model.stages[0].blocks[0]
    x = torch.randn(1, 8, 8, 32)
    assert not fused.use_fused(x, block.eval())  # autograd on: plain ops, so gradients flow
    with torch.no_grad():
        assert fused.use_fused(x, block)
        assert not fused.use_fused(x, block.train())
        assert not fused.use_fused(x.double(), block.eval())
    model.eval()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_onednn_training_path_gives_the_plain_gradients(name: str) -> None:
    model = create_model(name, num_classes=5, depths=(1, 1, 1, 1), drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    grads = []
    for enabled in (True, False):
        model.zero_grad()
        x.grad = None
        with fused_kernels(enabled):
            model(x).square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() <= 1e-5 * (1 + b.abs().max().item())


@pytest.mark.parametrize("backbone", [False, True])
def test_torch_backend(backbone: bool) -> None:
    """The eager backend: on the CPU it runs our fused kernels or the plain path, whichever measured faster for the
    shape on this machine (pvtv2.kernel_choice), so its outputs equal the plain path's within the fused kernels'
    tolerance, not bit for bit (seen: 2.4e-6 on a loaded AMD EPYC guest, where the fused kernels won)."""
    model = create_model("pvt_v2_b0", num_classes=0 if backbone else 10, depths=(1, 1, 1, 1))
    run = prepare(model, "torch")
    x = torch.randn(2, 3, 64, 64)
    out = run(x)
    if backbone:
        assert isinstance(out, list) and [o.shape[1] for o in out] == [32, 64, 160, 256]
        with torch.no_grad():
            assert _diff(out, model.forward_features(x)) < 1e-4
    else:
        assert out.shape == (2, 10) and not out.requires_grad
        with torch.no_grad():
            assert _diff(out, model(x)) < 1e-4
    assert not model.training


def test_compile_backend_matches_eager() -> None:
    model = create_model("pvt_v2_b2_li", num_classes=10, **TINY)
    x = torch.randn(2, 3, 64, 96)
    ref = prepare(model, "torch")(x)
    run = prepare(model, "compile", example_input=x)
    assert run.backend == "compile"  # type: ignore[attr-defined]
    assert _diff(run(x), ref) < 1e-4


def test_onnxruntime_backend_matches_eager() -> None:
    require("onnxruntime")
    model = create_model("pvt_v2_b0", num_classes=0, **TINY)  # a backbone: four maps
    run = prepare(model, "onnxruntime", example_input=torch.randn(2, 3, 64, 64))
    for shape in ((2, 3, 64, 64), (1, 3, 97, 161), (3, 3, 40, 72)):  # other batch and sizes than traced
        x = torch.randn(*shape)
        out, ref = run(x), prepare(model, "torch")(x)
        assert isinstance(out, list) and len(out) == 4
        assert _diff(out, ref) < 1e-4, shape


def test_backend_choice_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("pvt_v2_b0", num_classes=3, **TINY)
    with pytest.raises(PVTError, match="unknown backend 'tensorrt'"):
        prepare(model, "tensorrt")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime._measured_best(cpu, 1) == ("openvino", "onnxruntime", "torch")
    assert runtime._measured_best(cpu, 16) == runtime._measured_best(cpu, None) == ("openvino", "torch")
    assert runtime._measured_best(cuda, 1) == ("compile",)
    monkeypatch.setattr(runtime, "_available", lambda backend, dev: backend == "torch")  # as if ORT were missing
    run = fastest(model, device="cpu")
    assert run.backend == "torch"  # type: ignore[attr-defined]
    assert fastest(model, measure=True, repeats=1, example_input=torch.randn(1, 3, 64, 64)).backend == "torch"  # type: ignore[attr-defined]
