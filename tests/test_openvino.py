"""Our OpenVINO backend: equal to eager PyTorch, a one-line error without OpenVINO, in ``fastest`` and the bench."""

from __future__ import annotations

import sys

import pytest
from conftest import require
import torch

from pvtv2 import create_model, runtime
from pvtv2.bench import DEFAULT_PATHS, PATHS
from pvtv2.bench.paths import PRECISION_OF
from pvtv2.errors import PVTError
from pvtv2.precision import native
from pvtv2.runtime import BACKENDS, fastest, prepare

SHAPES = ((1, 3, 224, 224), (3, 3, 224, 224), (1, 3, 160, 288), (3, 3, 160, 288))


@pytest.fixture(scope="module")
def ov() -> object:
    return require("openvino")


def _diff(a: object, b: object) -> float:
    if isinstance(a, torch.Tensor):
        return (a - b).abs().max().item()  # type: ignore[operator]
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))  # type: ignore[call-overload]


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_openvino_fp32_equals_eager(ov: object, name: str) -> None:
    model = create_model(name).eval()  # full depth: the graph OpenVINO fuses is the real one
    run = prepare(model, "openvino", example_input=torch.randn(1, 3, 224, 224))
    assert run.backend == "openvino" and run.precision == "fp32"  # type: ignore[attr-defined]
    for shape in SHAPES:  # batch 1 and 3, square and not, one conversion (dynamic sizes)
        x = torch.randn(*shape)
        with torch.inference_mode():
            ref = model(x)
        out = run(x)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert _diff(out, ref) < 1e-4, shape


def test_every_runner_compiles_on_one_core(ov: object) -> None:
    """A second openvino.Core in a process can crash it later (openvinotoolkit/openvino#35338): one Core for all."""
    from pvtv2.export.openvino import OpenVINORunner, shared_core

    a = OpenVINORunner(torch.nn.Linear(4, 2), example_input=torch.randn(1, 4), per_shape=True)
    b = OpenVINORunner(torch.nn.Linear(4, 3), "bf16", example_input=torch.randn(1, 4), per_shape=True)
    assert a.core is b.core is shared_core()
    assert a(torch.randn(2, 4)).shape == (2, 2) and b(torch.randn(2, 4)).shape == (2, 3)


def test_openvino_backbone_gives_the_four_maps(ov: object) -> None:
    model = create_model("pvt_v2_b0", num_classes=0, depths=(1, 1, 1, 1)).eval()
    run = prepare(model, "openvino")
    x = torch.randn(2, 3, 96, 160)
    out = run(x)
    with torch.inference_mode():
        ref = model.forward_features(x)
    assert isinstance(out, list) and [o.shape for o in out] == [r.shape for r in ref]
    assert _diff(out, ref) < 1e-4


def test_openvino_bf16(ov: object, record_property: pytest.RecordProperty) -> None:
    model = create_model("pvt_v2_b0", num_classes=10).eval()
    x = torch.randn(8, 3, 224, 224)
    run = prepare(model, "openvino", precision="bf16", example_input=x)
    assert run.precision == ("bf16" if native("bf16", "cpu") else "fp32")  # type: ignore[attr-defined]
    with torch.inference_mode():
        ref = model(x)
    out = run(x)
    diff = _diff(out, ref)
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * diff  # images whose top-1 no rounding of that size can change
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    record_property("bf16_top1_agreement", agree)
    record_property("bf16_max_logit_diff", diff)
    ran = run.precision  # type: ignore[attr-defined]
    print(f"openvino {ran}: top-1 agreement {agree:.0%}, max logit diff {diff:.2e}")
    assert diff < 0.05 * ref.abs().max().item() + 1e-3
    assert (out.argmax(1) == ref.argmax(1))[clear].all()


def test_openvino_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    model = create_model("pvt_v2_b0", num_classes=3, depths=(1, 1, 1, 1))
    with pytest.raises(PVTError, match=r"pip install 'pvtv2\[openvino\]'") as e:
        prepare(model, "openvino")
    assert "\n" not in str(e.value)
    assert not runtime._available("openvino", torch.device("cpu"))
    assert fastest(model, device="cpu").backend != "openvino"  # type: ignore[attr-defined]


def test_openvino_backend_errors() -> None:
    model = create_model("pvt_v2_b0", num_classes=3, depths=(1, 1, 1, 1))
    assert "openvino" in BACKENDS
    with pytest.raises(PVTError, match="fp32 or bf16"):
        prepare(model, "openvino", precision="fp16")
    with pytest.raises(PVTError, match="runs on the CPU"):
        prepare(model, "openvino", device="cuda")


def test_fastest_considers_openvino(ov: object, monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("pvt_v2_b0", num_classes=3, depths=(1, 1, 1, 1))
    cpu = torch.device("cpu")
    assert runtime._available("openvino", cpu) and not runtime._available("openvino", torch.device("cuda"))
    assert runtime._measured_best(cpu, 1)[0] == "openvino" and runtime._measured_best(cpu, 16)[0] == "openvino"
    assert fastest(model, device="cpu").backend == "openvino"  # type: ignore[attr-defined]
    tried = []
    real = runtime.prepare

    def spy(model: object, backend: str = "torch", **kw: object) -> object:
        tried.append((backend, kw.get("precision", "fp32")))
        return real(model, backend, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "prepare", spy)
    monkeypatch.setattr(runtime, "_available", lambda b, dev: b in ("torch", "openvino"))
    monkeypatch.setattr(runtime, "_reduced_choice", lambda dev: "bf16")
    fastest(model, measure=True, repeats=1, example_input=torch.randn(1, 3, 64, 64), allow_reduced=True)
    assert ("openvino", "fp32") in tried and ("openvino", "bf16") in tried


def test_bench_has_the_openvino_paths() -> None:
    for path, precision in (("pvtv2-openvino", "fp32"), ("pvtv2-openvino-bf16", "bf16"), ("openvino", "fp32"),
                            ("openvino-bf16", "bf16")):
        assert path in PATHS and path in DEFAULT_PATHS and PRECISION_OF[path] == precision


def test_token_layer_norms_share_the_parameters_and_the_numbers() -> None:
    from pvtv2.export.openvino import TokenLayerNorm, with_token_layer_norms

    model = create_model("pvt_v2_b0", num_classes=5, depths=(1, 1, 1, 1)).eval()
    copy = with_token_layer_norms(model)
    assert all(a is b for a, b in zip(model.parameters(), copy.parameters(), strict=True))
    assert any(isinstance(m, TokenLayerNorm) for m in copy.modules())
    assert not any(isinstance(m, TokenLayerNorm) for m in model.modules())
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        assert _diff(copy(x), model(x)) < 1e-5


@pytest.fixture(scope="module")
def nncf(ov: object) -> object:
    return require("nncf")


def test_openvino_int8_is_quantized_and_close_to_eager(nncf: object, record_property: pytest.RecordProperty) -> None:
    from pvtv2.export.openvino import OpenVINORunner, with_token_layer_norms

    torch.manual_seed(0)
    model = create_model("pvt_v2_b0", num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(4, 3, 64, 64, generator=g) for _ in range(4)]  # 16 images, not the scored ones
    run = OpenVINORunner(with_token_layer_norms(model), "int8", example_input=torch.randn(2, 3, 64, 64),
                         calibration=calibration)
    ops = {op.get_type_name() for op in run.model.get_ops()}
    assert "FakeQuantize" in ops  # NNCF's quantize-dequantize pairs, which OpenVINO runs as int8 kernels
    x = torch.randn(8, 3, 64, 64, generator=g)
    with torch.inference_mode():
        ref = model(x)
    out = run(x)
    assert run.precision == "int8" and out.shape == ref.shape and out.dtype == torch.float32
    diff = _diff(out, ref)
    record_property("int8_max_logit_diff", diff)
    assert 0 < diff < 0.1 * ref.abs().max().item()  # quantized (not bit-equal), within a tenth of the logits' range
    assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.98
    # the same through prepare, at another size (one calibration, any shape)
    runner = prepare(model, "openvino", precision="int8", calibration=calibration,
                     example_input=torch.randn(1, 3, 96, 64))
    assert runner.precision == "int8"  # type: ignore[attr-defined]
    y = torch.randn(3, 3, 96, 64, generator=g)
    with torch.inference_mode():
        assert runner(y).shape == model(y).shape


def test_openvino_int8_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("pvt_v2_b0", num_classes=3, depths=(1, 1, 1, 1))
    images = [torch.randn(2, 3, 64, 64)]
    for backend in ("torch", "onnxruntime", "compile"):
        with pytest.raises(PVTError, match="int8 runs in the openvino backend"):
            prepare(model, backend, precision="int8", calibration=images)
    with pytest.raises(PVTError, match="calibration images are for precision int8"):
        prepare(model, "openvino", calibration=images)
    from pvtv2.export.openvino import OpenVINORunner, quantize_int8

    with pytest.raises(PVTError, match="int8 needs calibration images"):
        OpenVINORunner(model, "int8")
    with pytest.raises(PVTError, match="int8 needs calibration images"):
        quantize_int8(object(), [])
    with pytest.raises(PVTError, match=r"takes \(B, 3, H, W\) image batches"):
        quantize_int8(object(), [torch.randn(3, 64, 64)])
    monkeypatch.setitem(sys.modules, "nncf", None)  # `import nncf` now raises ImportError
    with pytest.raises(PVTError, match=r"pip install 'pvtv2\[int8\]'") as e:
        prepare(model, "openvino", precision="int8", calibration=images)
    assert "\n" not in str(e.value)


def test_bench_has_the_int8_path() -> None:
    assert PRECISION_OF["pvtv2-openvino-int8"] == "int8" and "pvtv2-openvino-int8" not in DEFAULT_PATHS
