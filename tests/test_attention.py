"""Attention maps: key grids of SRA / linear SRA at square and non-square sizes, rows that sum to 1, agreement
with Hugging Face transformers' ``output_attentions``, an untouched forward pass, and ``pvtv2 attention``."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require
import torch

from pvtv2 import create_model
from pvtv2.analysis import attention_maps
from pvtv2.analysis.attention import attention_probs
from pvtv2.cli import main as cli
from pvtv2.layers import fused

SMALL = dict(depths=(1, 1, 2, 1))
SIZES = [(224, 224), (200, 312)]
# (model, size) -> (mode, query grid, key grid) of stages 1-4: SRA keys are the (h // R) x (w // R) cells of a
# stride-R convolution (R = 8, 4, 2, 1), linear SRA keys the 7 x 7 cells of an adaptive pool
EXPECTED = {
    ("pvt_v2_b0", (224, 224)): [("sra", (56, 56), (7, 7)), ("sra", (28, 28), (7, 7)), ("sra", (14, 14), (7, 7)),
                                ("full", (7, 7), (7, 7))],
    ("pvt_v2_b0", (200, 312)): [("sra", (50, 78), (6, 9)), ("sra", (25, 39), (6, 9)), ("sra", (13, 20), (6, 10)),
                                ("full", (7, 10), (7, 10))],
    ("pvt_v2_b2_li", (224, 224)): [("linear", (56 >> i, 56 >> i), (7, 7)) for i in range(4)],
    ("pvt_v2_b2_li", (200, 312)): [("linear", g, (7, 7)) for g in [(50, 78), (25, 39), (13, 20), (7, 10)]],
}


def _model(name: str) -> torch.nn.Module:
    return create_model(name, **SMALL).eval()


@pytest.mark.parametrize("name, size", list(EXPECTED))
def test_shapes_and_rows_sum_to_one(name: str, size: tuple[int, int]) -> None:
    model = _model(name)
    x = torch.randn(2, 3, *size)
    for query in (None, (size[0] - 1, 5)):
        maps = attention_maps(model, x, query=query)
        heads = model.cfg.num_heads
        got = [(s.mode, s.query_grid, s.key_grid) for s in maps.stages]
        assert got == EXPECTED[name, size]
        for s in maps.stages:
            assert s.weights.shape == (2, heads[s.stage], *s.key_grid)
            assert s.block == len(model.stages[s.stage].blocks) - 1
            assert torch.allclose(s.weights.sum((-1, -2)), torch.ones(2, heads[s.stage]), atol=1e-5)
        heat = maps.upsampled()
        assert [h.shape for h in heat] == [(2, *size)] * 4
    # an SRA convolution drops the last h mod R token rows: its map is zero over the pixels no key covers
    if name == "pvt_v2_b0" and size == (200, 312):
        h = heat[0]
        assert maps.stages[0].key_extent == (192, 288) and h[:, :192, :288].min() > 0
        assert h[:, 192:].abs().max() == 0 and h[:, :, 288:].abs().max() == 0


def test_query_picks_the_row_of_the_token_under_it() -> None:
    model = _model("pvt_v2_b0")
    x = torch.randn(1, 3, 96, 160)
    captured = []
    hook = model.stages[1].blocks[-1].attn.register_forward_hook(lambda m, a, o: captured.append(a[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    probs = attention_probs(model.stages[1].blocks[-1].attn, captured[0])  # (1, heads, N, Nk)
    assert torch.allclose(probs.sum(-1), torch.ones_like(probs[..., 0]), atol=1e-5)
    maps = attention_maps(model, x, query=(50, 130))  # stage 2 (stride 8): token (6, 16) of a 12 x 20 grid
    assert torch.equal(maps.stages[1].weights.flatten(2), probs[:, :, 6 * 20 + 16])
    assert torch.allclose(attention_maps(model, x).stages[1].weights.flatten(2), probs.mean(2))
    with pytest.raises(ValueError, match="outside the 96x160 input"):
        attention_maps(model, x, query=(96, 0))


def test_v1_class_token_takes_its_share() -> None:
    model = create_model("pvt_v1_tiny", depths=(1, 1, 1, 1)).eval()
    maps = attention_maps(model, torch.randn(1, 3, 128, 96), query=(70, 20))
    last = maps.stages[3]
    assert last.key_grid == (4, 3) and last.cls_weight is not None and maps.stages[0].cls_weight is None
    assert torch.allclose(last.weights.sum((-1, -2)) + last.cls_weight, torch.ones(1, 8), atol=1e-5)


def test_forward_and_fused_path_untouched() -> None:
    model = _model("pvt_v2_b2_li")
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        before = model(x)  # CPU float32, no autograd, eval: the fused kernels when oneDNN is there
        with fused.fused_kernels(False):
            plain = model(x)
    attention_maps(model.train(), x, query=(10, 10))
    assert model.training  # mode restored
    model.eval()
    assert all(not m._forward_hooks for m in model.modules())  # every hook removed
    with torch.no_grad():
        assert torch.equal(model(x), before)
        with fused.fused_kernels(False):
            assert torch.equal(model(x), plain)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_same_attention_as_hugging_face(name: str) -> None:
    require("transformers")
    from pvtv2 import convert
    from pvtv2.bench.peers import hf_classifier  # HF's model with the release's LayerNorm eps

    ours = _model(name)
    hf = hf_classifier(ours.cfg, ours.num_classes).eval()
    hf.load_state_dict(convert(ours.state_dict(), "pvtv2", "hf"))
    for size in SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            theirs = hf(pixel_values=x, output_attentions=True).attentions  # per stage, per block (B, h, N, Nk)
        maps = attention_maps(ours, x)
        for s, stage in zip(maps.stages, theirs):
            assert (stage[-1].mean(2).reshape(s.weights.shape) - s.weights).abs().max() < 1e-6


def test_attention_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.effect_noise((150, 100), 60).convert("RGB").save(photo)  # 150 wide, 100 high
    out = tmp_path / "attn.png"
    assert cli(["attention", str(photo), "--model", "pvt_v2_b0", "--save-vis", str(out), "--query", "50,140"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "stage 1: 56x84 queries -> 7x10 keys (sra)" in text  # shorter side 224, aspect kept
    assert cli(["attention", str(photo), "--model", "pvt_v2_b2_li", "--save-vis", str(out), "--input-size", "64", "96",
                "--query", "mean"]) == 0
    assert "stage 4: 2x3 queries -> 7x7 keys (linear)" in capsys.readouterr().out
    assert cli(["attention", str(photo), "--model", "pvt_v2_b0", "--save-vis", str(out), "--query", "100,10"]) == 2
    assert "outside the 100x150 photo" in capsys.readouterr().err
