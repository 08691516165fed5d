"""Checkpoint formats: detection, exact round trips, loading from files, and the errors users see."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import max_abs

import pvtv2
from pvtv2 import CheckpointError, convert, create_model, detect_format, load_weights, save_weights
from pvtv2.cli import main as cli
from pvtv2.weights import read_checkpoint

SMALL = dict(depths=(1, 1, 1, 1))
FOREIGN = ["official", "timm", "hf", "mmdet"]


def small(name: str = "pvt_v2_b0", **kw) -> pvtv2.PyramidVisionTransformer:
    return create_model(name, **{**SMALL, **kw}).eval()


ROUND_TRIPS = [(n, f) for n in ("pvt_v2_b0", "pvt_v2_b2_li") for f in FOREIGN]
ROUND_TRIPS += [(n, "official") for n in ("pvt_v1_tiny", "pvt_v1_small_ope")]  # timm, HF and mmdet carry v2 only


@pytest.mark.parametrize("name, fmt", ROUND_TRIPS)
def test_round_trip_is_exact(name: str, fmt: str) -> None:
    sd = small(name, num_classes=0 if fmt == "mmdet" else 1000).state_dict()
    there = convert(sd, "pvtv2", fmt)
    assert detect_format(there) == fmt
    back = convert(there, fmt, "pvtv2")
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_official_names_follow_the_release() -> None:
    off = convert(small().state_dict(), "pvtv2", "official")
    for key in ("patch_embed1.proj.weight", "patch_embed4.norm.bias", "block1.0.attn.q.weight", "block1.0.attn.kv.weight",
                "block1.0.attn.sr.weight", "block1.0.attn.norm.weight", "block2.0.mlp.dwconv.dwconv.weight",
                "norm1.weight", "norm4.bias", "head.weight"):
        assert key in off, key
    v1 = convert(small("pvt_v1_tiny").state_dict(), "pvtv2", "official")
    assert {"pos_embed1", "pos_embed4", "cls_token", "norm.weight"} <= v1.keys()
    assert v1["pos_embed4"].shape[1] == 7 * 7 + 1  # the class token's slot, as released
    assert not any(k.startswith(("norm1.", "norm4.")) or "dwconv" in k for k in v1)


def test_mmdet_layout() -> None:
    sd = convert(small(num_classes=0).state_dict(), "pvtv2", "mmdet")
    assert sd["layers.0.1.0.attn.attn.in_proj_weight"].shape == (3 * 32, 32)  # q and kv rows, concatenated
    assert sd["layers.0.1.0.ffn.layers.0.weight"].shape == (256, 32, 1, 1)  # fc1 as a 1x1 conv
    assert {"layers.0.0.projection.weight", "layers.0.1.0.ffn.layers.1.weight", "layers.0.2.weight",
            "layers.3.1.0.attn.attn.out_proj.weight", "layers.0.1.0.ffn.layers.4.bias"} <= sd.keys()


@pytest.mark.parametrize("fmt", FOREIGN)
def test_every_format_loads_and_gives_the_same_outputs(fmt: str) -> None:
    src = small(num_classes=0)
    dst = create_model("pvt_v2_b0", num_classes=0, **SMALL).eval()
    report = load_weights(dst, convert(src.state_dict(), "pvtv2", fmt))
    assert report.format == fmt and report.loaded == len(src.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs(dst(x), src(x)) == 0


def test_wrappers_and_prefixes_are_unwrapped(tmp_path: Path) -> None:
    src = small(num_classes=0)
    sd = src.state_dict()
    detector = {f"backbone.{k}": v for k, v in convert(sd, "pvtv2", "mmdet").items()}
    detector["neck.fpn_convs.0.conv.weight"] = torch.zeros(1)
    sources = [
        {"model": convert(sd, "pvtv2", "official"), "epoch": 3},  # the authors' training checkpoints
        {"meta": {"epoch": 12}, "state_dict": detector},  # an mmdet detector checkpoint
        {f"module.{k}": v for k, v in sd.items()},  # DistributedDataParallel
        {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
    ]
    for source in sources:
        dst = create_model("pvt_v2_b0", num_classes=0, **SMALL)
        load_weights(dst, source)
        assert all(torch.equal(dst.state_dict()[k], sd[k]) for k in sd)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin"])
def test_files_of_every_suffix(tmp_path: Path, suffix: str) -> None:
    model = small()
    path = save_weights(model, tmp_path / f"w{suffix}")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    other = create_model("pvt_v2_b0", **SMALL)
    assert load_weights(other, path).format == "pvtv2"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs(other.eval()(x), model(x)) == 0


def test_hf_safetensors_file(tmp_path: Path) -> None:
    path = save_weights(small(), tmp_path / "model.safetensors", format="hf")
    assert detect_format(read_checkpoint(path)) == "hf"
    assert load_weights(create_model("pvt_v2_b0", **SMALL), path).format == "hf"


def test_wrong_variant_names_format_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "b1.pth"
    torch.save(convert(create_model("pvt_v2_b1").state_dict(), "pvtv2", "official"), path)
    with pytest.raises(CheckpointError) as e:
        load_weights(create_model("pvt_v2_b2"), path)
    msg = str(e.value)
    assert "official format" in msg and "missing" in msg and "b1.pth" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_weights(create_model("pvt_v2_b0"), path)


def test_head_of_another_size_needs_ignore_head() -> None:
    sd = small(num_classes=1000).state_dict()
    target = create_model("pvt_v2_b0", num_classes=10, **SMALL)
    head_before = target.head.weight.clone()
    with pytest.raises(CheckpointError, match="ignore_head=True"):
        load_weights(target, sd)
    report = load_weights(target, sd, ignore_head=True)
    assert report.dropped_head and torch.equal(target.head.weight, head_before)
    assert torch.equal(target.stages[0].patch_embed.proj.weight, sd["stages.0.patch_embed.proj.weight"])


def test_non_strict_load_says_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    sd = small().state_dict()
    del sd["stages.3.norm.weight"]
    with caplog.at_level(logging.WARNING):
        report = load_weights(create_model("pvt_v2_b0", **SMALL), sd, strict=False)
    assert report.missing == ["stages.3.norm.weight"]
    assert "stages.3.norm.weight" in caplog.text


def test_unreadable_files(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save(small().state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 10)
    model = create_model("pvt_v2_b0", **SMALL)
    for path, pattern in [(truncated, "truncated or corrupt"), (text, "not a PyTorch checkpoint"),
                          (bad_st, "not a readable safetensors"), (tmp_path / "missing.pth", "does not exist")]:
        with pytest.raises(CheckpointError, match=pattern):
            load_weights(model, path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_weights(model, {"foo.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_weights(model, {"epoch": 3, "args": "x"})


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    path = tmp_path / "evil.pth"
    payload = {"stages.0.patch_embed.proj.weight": torch.zeros(1), "x": exploit}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_weights(create_model("pvt_v2_b0"), path)
    assert not marker.exists()


def test_released_weights_offline_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("PVTV2_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"put https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b0.pth at"):
        create_model("pvt_v2_b0", weights="official")
    with pytest.raises(CheckpointError, match="no released weights for pvt_v1_small_ope"):
        create_model("pvt_v1_small_ope", weights="official")
    released = create_model("pvt_v2_b0")
    (tmp_path / "checkpoints").mkdir()
    torch.save(convert(released.state_dict(), "pvtv2", "official"), tmp_path / "checkpoints" / "pvt_v2_b0.pth")
    model = create_model("pvt_v2_b0", weights="official", num_classes=10)  # new 10-class head, released body
    assert torch.equal(model.stages[2].blocks[1].attn.kv.weight, released.stages[2].blocks[1].attn.kv.weight)
    assert model.head.out_features == 10


def test_convert_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "ours.safetensors"
    save_weights(small(), src)
    for fmt in ("official", "timm", "hf"):
        dst = tmp_path / f"{fmt}.pth"
        assert cli(["convert", str(src), str(dst), "--to", fmt]) == 0
        assert detect_format(read_checkpoint(dst)) == fmt
    (tmp_path / "junk.pth").write_text("junk")
    assert cli(["convert", str(tmp_path / "junk.pth"), str(tmp_path / "o.pth"), "--to", "timm"]) == 2
    assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()


def test_models_command(capsys: pytest.CaptureFixture) -> None:
    assert cli(["models", "pvt_v2_*"]) == 0
    out = capsys.readouterr().out
    assert "pvt_v2_b2_li" in out and "22.55" in out and "82.1" in out and "pvt_v1" not in out
    assert cli(["models", "nothing*"]) == 2


def test_backbone_of_our_own_dense_models_loads_into_a_classifier() -> None:
    from pvtv2.detection import retinanet
    from pvtv2.segmentation import semantic_fpn

    for dense in (retinanet(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=SMALL),
                  semantic_fpn(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=SMALL)):
        classifier = create_model("pvt_v2_b0", num_classes=0, **SMALL)
        assert load_weights(classifier, {"model": dense.state_dict()}).format == "pvtv2"
        ref = next(v for k, v in dense.state_dict().items() if k.endswith("stages.2.blocks.0.attn.kv.weight"))
        assert torch.equal(classifier.stages[2].blocks[0].attn.kv.weight, ref)
