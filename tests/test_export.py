"""ONNX export: dynamic batch/height/width, linear-SRA pooling at any size, onnxruntime parity, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require
import torch
import torch.nn.functional as F

from pvtv2 import create_model
from pvtv2.cli import main
from pvtv2.errors import PVTError
from pvtv2.export import check_onnx, export_spec, onnx_bytes, onnx_session
from pvtv2.layers import attention
from pvtv2.layers.attention import adaptive_avg_pool_tokens

require("onnxruntime")
require("onnxscript")

# 224 (a multiple of 7 and 32), then sizes that are multiples of neither: the classic export failures
SIZES = ((224, 224), (200, 328), (97, 161))


@pytest.mark.parametrize("h, w", [(56, 56), (3, 5), (7, 7), (13, 29), (50, 8), (1, 1)])
def test_matmul_pooling_equals_adaptive_avg_pool(h: int, w: int) -> None:
    x = torch.randn(2, h, w, 6)  # (B, H, W, C) tokens
    ref = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 7).permute(0, 2, 3, 1)
    out = adaptive_avg_pool_tokens(x, 7)
    assert out.shape == ref.shape == (2, 7, 7, 6)
    assert (out - ref).abs().max().item() < 1e-6


def test_traced_linear_sra_path_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("pvt_v2_b2_li", num_classes=5, depths=(1, 1, 1, 1)).eval()
    x = torch.randn(2, 3, 97, 161)
    with torch.no_grad():
        ref = model(x)
        monkeypatch.setattr(attention, "tracing", lambda: True)  # the matmul pooling the exporters see
        assert (model(x) - ref).abs().max().item() < 1e-5


# B0's logits are checked at full depth through the CLI below (one export per model keeps this file fast).
@pytest.mark.parametrize("name, backbone", [("pvt_v2_b2_li", True)])  # the four stage maps of B2-Li
def test_onnx_matches_pytorch_at_any_size(name: str, backbone: bool) -> None:
    model = create_model(name, num_classes=0 if backbone else 1000, depths=(1, 1, 1, 1)).eval()
    data = onnx_bytes(model, backbone=backbone)
    session = onnx_session(data)
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == ["images"] and inputs[0].shape == ["batch", 3, "height", "width"]
    names = [o.name for o in session.get_outputs()]
    assert names == (["stage1", "stage2", "stage3", "stage4"] if backbone else ["logits"])
    report = check_onnx(session, model, backbone=backbone, sizes=SIZES, batch=2)
    assert set(report.per_size) == set(SIZES)
    assert report.max_abs_diff < 1e-4, report
    out = session.run(None, {"images": torch.randn(1, 3, 33, 70).numpy()})  # batch 1, odd size
    expected = [(1, c, -(-33 // s), -(-70 // s)) for c, s in zip(model.cfg.embed_dims, (4, 8, 16, 32))]
    assert [o.shape for o in out] == (expected if backbone else [(1, 1000)])


def test_cli_exports_full_depth_b0_and_checks_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "b0.pth"
    model = create_model("pvt_v2_b0", num_classes=10).eval()
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "b0.onnx"
    assert main(["export", "pvt_v2_b0", "--weights", str(ckpt), "--format", "onnx", "-o", str(out),
                 "--input-size", "224", "224"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "logits (10 classes)" in text  # head size read from the checkpoint
    diff = float(text.split("max abs difference ")[1].split()[0])
    assert diff < 1e-4 and "224x224" in text and "200x328" in text
    report = check_onnx(out, model, sizes=((97, 161),), batch=3)  # the third size, another batch
    assert report.max_abs_diff < 1e-4, report


def test_cli_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "pvt_v2_b9", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "unknown model 'pvt_v2_b9'" in capsys.readouterr().err
    assert main(["export", "pvt_v2_b0", "--input-size", "16", "224", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "at least 32 px" in capsys.readouterr().err
    with pytest.raises(PVTError, match="no ONNX file"):
        onnx_session(tmp_path / "missing.onnx")


def test_missing_onnxruntime_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(PVTError, match=r"pip install 'pvtv2\[deploy\]'"):
        onnx_session(b"")


def test_export_spec_kinds() -> None:
    model = create_model("pvt_v2_b0", depths=(1, 1, 1, 1))
    assert export_spec(model).output_names == ("logits",)
    assert export_spec(model, backbone=True).output_names == ("stage1", "stage2", "stage3", "stage4")
    assert export_spec(create_model("pvt_v2_b0", num_classes=0, depths=(1, 1, 1, 1))).output_names[0] == "stage1"
    seg_like = torch.nn.Conv2d(3, 4, 1)  # any images -> tensor module exports as is
    assert export_spec(seg_like).output_names == ("output",)


TINY = {"depths": (1, 1, 1, 1)}


@pytest.mark.parametrize("arch, outputs", [
    ("retinanet", ["cls_logits", "bbox_regression"]),
    ("mask_rcnn", ["p2", "p3", "p4", "p5", "p6"] + [f"objectness_{i}" for i in range(5)]
     + [f"rpn_deltas_{i}" for i in range(5)]),
])
def test_cli_exports_a_detection_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str], arch: str,
                                            outputs: list[str]) -> None:
    from pvtv2.detection.interop.export import DenseDetector
    from pvtv2.detection.inference import build_from_meta, detector_meta, save_detector

    meta = detector_meta(arch, backbone="pvt_v2_b0", class_names=["bg", "a", "b"], min_size=64, max_size=96,
                         backbone_overrides=TINY)
    detector = build_from_meta(meta).eval()
    ckpt = save_detector(detector, meta, tmp_path / "det.pth")
    assert main(["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "det.onnx"), "--input-size", "96", "128"]) == 0
    text = capsys.readouterr().out
    assert float(text.split("max abs difference ")[1].split()[0]) < 1e-4 and "200x328" in text
    session = onnx_session(tmp_path / "det.onnx")
    assert [o.name for o in session.get_outputs()] == outputs
    x = torch.randn(1, 3, 160, 96)  # another size, batch 1
    with torch.no_grad():
        expected = DenseDetector(detector, arch)(x)
    got = session.run(None, {"images": x.numpy()})
    assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
    if arch == "retinanet":  # 9 anchors per location on P3-P7, 2 object classes
        locations = sum(-(-160 // s) * -(-96 // s) for s in (8, 16, 32, 64, 128))
        assert got[0].shape == (1, 9 * locations, 2)


def test_cli_exports_a_segmentation_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pvtv2.segmentation import save_segmentor, semantic_fpn
    from pvtv2.segmentation.datasets import DatasetMeta

    model = semantic_fpn(backbone="pvt_v2_b0", num_classes=4, backbone_overrides=TINY).eval()
    ckpt = save_segmentor(model, DatasetMeta(4, ("a", "b", "c", "d")), tmp_path / "seg.pth")
    assert main(["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "seg.onnx"), "--input-size", "64", "96"]) == 0
    text = capsys.readouterr().out
    assert "logits (4 classes" in text and float(text.split("max abs difference ")[1].split()[0]) < 1e-4
    out = onnx_session(tmp_path / "seg.onnx").run(None, {"images": torch.randn(2, 3, 97, 161).numpy()})
    assert out[0].shape == (2, 4, 97, 161)  # logits at the input size, any size


def test_cli_export_checkpoint_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a checkpoint")
    assert main(["export", "--checkpoint", str(text_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a PyTorch checkpoint" in err
    assert main(["export", "pvt_v2_b0", "--checkpoint", str(text_file)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["export"]) == 2
    assert "name a MODEL" in capsys.readouterr().err


def test_ort_spinning_switch() -> None:
    from pvtv2.export.onnx import ort_spinning

    data = onnx_bytes(create_model("pvt_v2_b0", depths=(1, 1, 1, 1)).eval(), input_size=(64, 64))
    key = "session.intra_op.allow_spinning"
    assert onnx_session(data).get_session_options().get_session_config_entry(key) == "1"  # onnxruntime's default
    with ort_spinning(False):  # what pvtv2 bench uses, so that interleaved paths do not wait for spinning threads
        assert onnx_session(data).get_session_options().get_session_config_entry(key) == "0"
    assert onnx_session(data).get_session_options().get_session_config_entry(key) == "1"


def test_fp16_export_runs_in_onnxruntime_close_to_fp32(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    model = create_model("pvt_v2_b0", num_classes=10, depths=(1, 1, 1, 1)).eval()
    data = onnx_bytes(model, precision="fp16", input_size=(64, 64))
    proto = onnx.load_from_string(data)
    weights = {i.name: i.data_type for i in proto.graph.initializer if i.name.startswith("module.")}
    fp32 = {n for n, t in weights.items() if t != onnx.TensorProto.FLOAT16}
    assert fp32 <= {"module.head.weight", "module.head.bias"} and len(weights) > 20 + len(fp32)  # the rest: fp16
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 images in
    report = check_onnx(data, model, sizes=((64, 64), (97, 161)))
    assert 1e-6 < report.max_abs_diff < 5e-2, report  # float16 rounding, not float32's
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself is left as it was
    assert main(["export", "pvt_v2_b0", "--precision", "bf16", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "bf16 is a run-time choice" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_too_old_torch_for_the_exporter_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.4 (the lowest declared) has no Dim.DYNAMIC: export says so instead of failing inside torch."""
    from torch.export import Dim

    monkeypatch.delattr(Dim, "DYNAMIC", raising=False)
    model = create_model("pvt_v2_b0", num_classes=10).eval()
    with pytest.raises(PVTError, match=r"ONNX export needs a newer torch.*Dim.DYNAMIC"):
        onnx_bytes(model, input_size=(64, 64))
