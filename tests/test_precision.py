"""Reduced-precision inference: native-support detection and fallback, the converted bf16 model, autocast paths."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from pvtv2 import create_model, precision, runtime
from pvtv2.errors import PVTError
from pvtv2.layers import fused
from pvtv2.layers.fused import fused_kernels
from pvtv2.runtime import fastest, prepare

ONEDNN_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
REAL_FLAGS = precision.cpu_flags
needs_bf16 = pytest.mark.skipif(not ONEDNN_BF16, reason="oneDNN has no bf16 kernels on this CPU")


@pytest.fixture
def bf16_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as on a CPU with native bf16 (the kernels are the same, emulated here when it has none)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def test_native_detection_and_one_line_fallback(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("PVTV2_FORCE_REDUCED", raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    monkeypatch.setattr(precision, "_warned", set())
    assert precision.native("fp32") and not precision.native("bf16") and not precision.native("fp16")
    with caplog.at_level(logging.WARNING, logger="pvtv2.precision"):
        assert precision.resolve("bf16", "cpu") == "fp32"
        assert precision.resolve("bf16", "cpu") == "fp32"
    assert len(caplog.records) == 1 and "no native bf16" in caplog.records[0].getMessage()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert precision.native("bf16") == ONEDNN_BF16
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    monkeypatch.setenv("PVTV2_FORCE_REDUCED", "1")
    assert precision.native("bf16") == ONEDNN_BF16
    with pytest.raises(PVTError, match="unknown precision 'int4'"):
        precision.resolve("int4")
    assert isinstance(REAL_FLAGS.__wrapped__(), frozenset)  # the real reader runs anywhere


@needs_bf16
def test_converted_copy_keeps_norms_and_head_in_fp32_and_the_model_untouched() -> None:
    model = create_model("pvt_v2_b0", num_classes=7, depths=(1, 1, 1, 1)).eval()
    reduced = precision.to_reduced(model, torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert reduced.head.weight.dtype == torch.float32
    assert all(m.weight.dtype == torch.float32 for m in reduced.modules() if isinstance(m, nn.LayerNorm))
    fc1 = reduced.stages[0].blocks[0].mlp.fc1
    assert fc1.weight.dtype == torch.bfloat16 and fc1.packed_weight.is_mkldnn
    assert reduced.stages[0].patch_embed.proj.weight.dtype == torch.bfloat16
    assert set(reduced.state_dict()) == set(model.state_dict())  # packed weights are not state
    with pytest.raises(PVTError, match="bfloat16 or float16"):
        precision.to_reduced(model, torch.float64)


@needs_bf16
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_v1_tiny"])
def test_bf16_fused_path_matches_fp32_and_the_plain_bf16_path(name: str, bf16_native: None) -> None:
    model = create_model(name, num_classes=10, depths=(1, 1, 1, 1)).eval()
    run = prepare(model, "torch", precision="bf16")
    assert run.precision == "bf16"  # type: ignore[attr-defined]
    x = torch.randn(6, 3, 97, 161, generator=torch.Generator().manual_seed(0))
    out = run(x)
    with torch.inference_mode():
        ref = model(x)
        with fused_kernels(False):
            plain = run(x)  # the same bf16 weights through the plain operators
    assert out.dtype == torch.float32 and out.shape == ref.shape
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() < 0.03 * scale  # bf16 keeps 8 bits of mantissa
    assert (out - plain).abs().max().item() < 0.03 * scale
    assert _agreement(out, ref) >= 5 / 6


@needs_bf16
def test_packed_weights_serve_any_batch_and_backbones_give_fp32_maps(bf16_native: None) -> None:
    model = create_model("pvt_v2_b0", num_classes=0, depths=(2, 1, 1, 1)).eval()
    run = prepare(model, "torch", precision="bf16")
    for shape in ((1, 3, 64, 64), (5, 3, 40, 72)):
        x = torch.randn(*shape)
        maps = run(x)
        with torch.inference_mode():
            ref = model.forward_features(x)
        assert isinstance(maps, list) and [m.dtype for m in maps] == [torch.float32] * 4
        for m, r in zip(maps, ref):
            assert m.shape == r.shape and (m - r).abs().max().item() < 0.05 * r.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_wrapper_is_the_cuda_path_on_cpu(dtype: torch.dtype) -> None:
    """CUDA runs ``Autocast(module)``; the same module under CPU autocast checks it without a GPU."""
    model = create_model("pvt_v2_b0", num_classes=10, depths=(1, 1, 1, 1)).eval()
    wrapped = precision.Autocast(model, "cpu", dtype)
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        out = wrapped(x)
        with torch.autocast("cpu", dtype=dtype):
            assert not fused.use_fused(x, model)  # autocast decides the types: the plain operators run
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 0.03 * ref.abs().max().item()
    assert runtime._in_precision(model, "fp16", torch.device("cuda")).__class__ is precision.Autocast


def test_autocast_helper_for_detectors_and_segmentors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PVTV2_FORCE_REDUCED", raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    with precision.autocast("bf16", "cpu"):
        assert not torch.is_autocast_enabled("cpu")  # no native bf16: fp32
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    with precision.autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") == ONEDNN_BF16
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_precision_choice_in_prepare_and_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PVTV2_FORCE_REDUCED", raising=False)
    model = create_model("pvt_v2_b0", num_classes=3, depths=(1, 1, 1, 1))
    with pytest.raises(PVTError, match="onnxruntime backend runs fp32"):
        prepare(model, "onnxruntime", precision="bf16")
    with pytest.raises(PVTError, match="unknown precision"):
        prepare(model, "torch", precision="fp8")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    assert prepare(model, "torch", precision="bf16").precision == "fp32"  # type: ignore[attr-defined]
    monkeypatch.setattr(runtime, "_available", lambda backend, dev: backend == "torch")
    assert fastest(model, device="cpu", allow_reduced=True).precision == "fp32"  # type: ignore[attr-defined]
    if ONEDNN_BF16:
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
        assert fastest(model, device="cpu").precision == "fp32"  # type: ignore[attr-defined]
        run = fastest(model, device="cpu", allow_reduced=True)
        assert run.precision == "bf16" and run.backend == "torch"  # type: ignore[attr-defined]


def test_autocast_module_wraps_a_part_and_returns_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    class Features(nn.Module):  # a detector backbone's shape of output: a dict of maps
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            y = self.conv(x)
            return {"p2": y, "p3": y[..., ::2, ::2], "ids": torch.arange(3)}

    part = Features().eval()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    monkeypatch.delenv("PVTV2_FORCE_REDUCED", raising=False)
    assert precision.autocast_module(part, "bf16") is part  # no native bf16: unchanged
    monkeypatch.setenv("PVTV2_FORCE_REDUCED", "1")
    wrapped = precision.autocast_module(part, "bf16")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        out, ref = wrapped(x), part(x)
    if ONEDNN_BF16:
        assert isinstance(wrapped, precision.Autocast)
        assert 0 < (out["p2"] - ref["p2"]).abs().max().item() < 0.05
    assert out["p2"].dtype == out["p3"].dtype == torch.float32 and out["ids"].dtype == torch.int64


def test_padding_only_taps_counts_the_taps_that_never_see_the_image() -> None:
    from pvtv2.layers.conv import padding_only_taps

    assert padding_only_taps(1, 3, 2, 1) and padding_only_taps(3, 7, 4, 3)  # P7 of a small image; stage 1 on 3 px
    assert padding_only_taps(2, 3, 2, 1) and not padding_only_taps(3, 3, 2, 1) and not padding_only_taps(8, 7, 4, 3)
    assert padding_only_taps(1, 3, 1, 1) and not padding_only_taps(3, 3, 1, 1)


@pytest.mark.parametrize("size", [(1, 1), (3, 1), (2, 3)])
def test_bf16_training_on_maps_under_the_kernels_reach_gets_zero_not_garbage(size: tuple[int, int]) -> None:
    """oneDNN's CPU bf16 weight gradient leaves padding-only taps unwritten (NaN where the memory held NaN): the patch
    embeddings and the detectors' P6/P7 convs run those calls in fp32 (pvtv2.layers.conv)."""
    from pvtv2.layers import OverlapPatchEmbed
    from pvtv2.layers.conv import padding_safe_conv

    torch.manual_seed(0)
    for conv, stride in ((nn.Conv2d(16, 16, 3, 2, 1), 2), (OverlapPatchEmbed(16, 16, 4).proj, 4)):
        ref = None
        for _ in range(4):  # freed memory full of NaN before each backward: unwritten gradients would show it
            junk = torch.full((1 << 16,), float("nan"))
            del junk
            conv.zero_grad(set_to_none=True)
            x = torch.randn(2, 16, *size, generator=torch.Generator().manual_seed(1), requires_grad=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = padding_safe_conv(conv, x)
            assert y.dtype == torch.bfloat16
            y.float().square().sum().backward()
            grad = conv.weight.grad
            assert torch.isfinite(grad).all(), f"stride {stride}, map {size}"
            ref = grad.clone() if ref is None else ref
            torch.testing.assert_close(grad, ref, rtol=0, atol=0)  # the same every time: nothing read from garbage
        k, p = conv.kernel_size[0], conv.padding[0]
        dead = [t for t in range(k) if all(not 0 <= o * stride - p + t < size[0] for o in range(y.shape[-2]))]
        assert all((grad[:, :, t] == 0).all() for t in dead)
