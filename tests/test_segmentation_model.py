"""Semantic FPN: the head's layout, shapes and strides, the one backbone, weights, Table 5 parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

import pvtv2
from pvtv2.segmentation import (
    PAPER_TABLE5,
    SemanticFPN,
    complexity_rows,
    load_segmentor,
    predict,
    save_segmentor,
    semantic_fpn,
)
from pvtv2.models.backbone import PVTBackbone
from pvtv2.segmentation.datasets import DatasetMeta
from pvtv2.segmentation.inference import _windows, predict_logits
from pvtv2.segmentation.model import build_from_spec


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: several times faster than two on this shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_head_layout_matches_mmseg_fpnhead() -> None:
    model = semantic_fpn(backbone="pvt_v2_b0", num_classes=21)
    assert isinstance(model.neck, FeaturePyramidNetwork)
    assert isinstance(model.backbone, PVTBackbone) and model.backbone.model.num_classes == 0
    convs = [[m for m in h.modules() if isinstance(m, nn.Conv2d)] for h in model.decode_head.scale_heads]
    ups = [[m for m in h.modules() if isinstance(m, nn.Upsample)] for h in model.decode_head.scale_heads]
    assert [len(c) for c in convs] == [1, 1, 2, 3] and [len(u) for u in ups] == [0, 1, 2, 3]
    assert all(c[0].in_channels == 256 and c[-1].out_channels == 128 and c[0].bias is None for c in convs)
    assert isinstance(model.decode_head.dropout, nn.Dropout2d) and model.decode_head.dropout.p == 0.1
    assert model.decode_head.conv_seg.in_channels == 128 and model.decode_head.conv_seg.out_channels == 21


@pytest.mark.parametrize("size", [(64, 96), (97, 130)])
def test_shapes_and_strides(size: tuple[int, int]) -> None:
    model = semantic_fpn(backbone="pvt_v2_b0", num_classes=5).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = model(x)
        stride4 = model.forward_logits(x)
        pyramid = model.neck(model.backbone(x))
    assert logits.shape == (2, 5, *size)
    assert stride4.shape == (2, 5, -(-size[0] // 4), -(-size[1] // 4))
    for level, stride in zip(pyramid.values(), (4, 8, 16, 32)):
        assert level.shape == (2, 256, -(-size[0] // stride), -(-size[1] // stride))


def test_backbone_weights_frozen_stages_and_overrides(tmp_path: Path) -> None:
    model = semantic_fpn(backbone="pvt_v2_b0", num_classes=3, trainable_stages=1, norm_eval=True,
                         backbone_overrides={"depths": (1, 1, 1, 1)})
    stages = model.backbone.model.stages
    assert [len(s.blocks) for s in stages] == [1, 1, 1, 1]
    assert not any(p.requires_grad for s in stages[:3] for p in s.parameters())
    assert not stages[3].norm.weight.requires_grad and stages[3].blocks[0].attn.q.weight.requires_grad
    again = build_from_spec(model.spec)  # a checkpoint's description keeps the frozen stages and norms
    assert again.backbone.frozen_stages == 3 and again.backbone.norm_eval
    source = pvtv2.create_model("pvt_v2_b0")
    pvtv2.save_weights(source, tmp_path / "b0.pth", format="official")
    loaded = semantic_fpn(backbone="pvt_v2_b0", num_classes=3, backbone_weights=tmp_path / "b0.pth")
    w = "stages.2.blocks.1.attn.kv.weight"
    assert torch.equal(loaded.backbone.model.state_dict()[w], source.state_dict()[w])
    assert loaded.backbone.model.cfg.drop_path_rate == 0.1  # the segmentation recipe's stochastic depth


def test_checkpoint_roundtrip_and_backbone_extraction(tmp_path: Path) -> None:
    model = semantic_fpn(backbone="pvt_v2_b0", num_classes=4, norm="gn").eval()
    meta = DatasetMeta(4, ("a", "b", "c", "d"))
    save_segmentor(model, meta, tmp_path / "seg.pth")
    again, meta2 = load_segmentor(tmp_path / "seg.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again.eval()(x))
    assert meta2 == meta
    backbone = pvtv2.create_model("pvt_v2_b0", num_classes=0)
    pvtv2.load_weights(backbone, tmp_path / "seg.pth")  # a segmentor checkpoint's backbone. keys
    assert torch.equal(backbone.state_dict()["stages.0.norm.weight"], model.backbone.model.state_dict()["stages.0.norm.weight"])
    pvtv2.save_weights(backbone, tmp_path / "bb.pth")
    with pytest.raises(pvtv2.CheckpointError, match="not a pvtv2 segmentation checkpoint"):
        load_segmentor(tmp_path / "bb.pth")


def test_whole_and_sliding_inference_at_test_scale() -> None:
    model = semantic_fpn(backbone="pvt_v2_b0", num_classes=3).eval()
    image = torch.randint(0, 256, (3, 75, 100), dtype=torch.uint8)
    whole = predict_logits(model, image[None], scale=(256, 64))
    slide = predict_logits(model, image[None], scale=(256, 64), mode="slide", crop=48, stride=32)
    assert whole.shape == slide.shape == (1, 3, 75, 100)
    assert predict(model, image, scale=None).shape == (75, 100)
    assert _windows(85, 48, 32) == [(0, 48), (32, 80), (37, 85)]  # mmseg's grid: last window flush with the edge
    same = predict_logits(model, image[None], scale=None, mode="slide", crop=128, stride=64)  # one window = whole
    assert torch.allclose(same, predict_logits(model, image[None], scale=None), atol=1e-5)


def test_params_within_table5() -> None:
    for name, (paper_params, _, _) in PAPER_TABLE5.items():
        with torch.device("meta"):
            model = semantic_fpn(backbone=name, num_classes=150)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(params - paper_params) < 0.2, (name, params, paper_params)
    assert isinstance(model, SemanticFPN)


def test_complexity_rows_against_table5() -> None:
    rows = complexity_rows(["pvt_v2_b0", "pvt_v2_b2_li"])
    assert [r["model"] for r in rows] == ["pvt_v2_b0", "pvt_v2_b2_li"]
    for r in rows:
        assert {"model", "head", "params_m", "gflops", "paper_params_m", "paper_gflops", "input_size", "note"} <= set(r)
        assert r["head"] == "semantic_fpn" and r["input_size"] == [512, 512]
        assert abs(r["params_m"] - r["paper_params_m"]) < 0.2
        assert abs(r["gflops"] - r["paper_gflops"]) < 0.1  # paper convention: mmcv MACs + attention products
