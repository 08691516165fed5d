"""Every registered model: construction, shapes, forward/backward, parameter counts, the API contract."""

from __future__ import annotations

import pytest
import torch

import pvtv2
from pvtv2 import PVTConfig, PyramidVisionTransformer, create_model, list_models, model_info

ALL = list_models()
V2 = list_models("pvt_v2_*")

# Exact parameter counts with the 1000-class head, as the released models have them (whai362/PVT v2
# classification/pvt_v2.py and timm's pvt_v2 builders; the README's model table lists the same figures).
EXACT_PARAMS = {
    "pvt_v2_b0": 3_666_760,
    "pvt_v2_b1": 14_009_000,
    "pvt_v2_b2": 25_362_856,
    "pvt_v2_b2_li": 22_553_512,
    "pvt_v2_b3": 45_238_696,
    "pvt_v2_b4": 62_556_072,
    "pvt_v2_b5": 81_956_008,
    "pvt_v1_tiny": 13_229_288,
    "pvt_v1_small": 24_485_864,
    "pvt_v1_medium": 44_208_104,
    "pvt_v1_large": 61_369_320,
}
PAPER_V1_M = {"pvt_v1_tiny": 13.2, "pvt_v1_small": 24.5, "pvt_v1_medium": 44.2, "pvt_v1_large": 61.4}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_variant() -> None:
    expected = {f"pvt_v2_b{i}" for i in range(6)} | {"pvt_v2_b2_li"}
    expected |= {f"pvt_v1_{s}" for s in ("tiny", "small", "medium", "large")}
    expected |= {"pvt_v1_small_ope", "pvt_v1_small_ope_cffn", "pvt_v1_small_ope_cffn_lsra"}
    assert set(ALL) == expected
    assert list_models("pvt_v2_*") == [n for n in ALL if n.startswith("pvt_v2_")]


@pytest.mark.parametrize("name", list(EXACT_PARAMS))
def test_exact_parameter_count(name: str) -> None:
    with torch.device("meta"):
        assert n_params(create_model(name)) == EXACT_PARAMS[name]


@pytest.mark.parametrize("name", list(PAPER_V1_M))
def test_v1_sizes_match_the_paper(name: str) -> None:
    with torch.device("meta"):
        assert abs(n_params(create_model(name)) / 1e6 - PAPER_V1_M[name]) < 0.05


def test_table6_rows_are_data_not_copies() -> None:
    small, ope = model_info("pvt_v1_small").cfg, model_info("pvt_v1_small_ope").cfg
    assert ope == small.replace(overlap_patch_embed=True, pos_embed=False)
    assert model_info("pvt_v1_small_ope_cffn").cfg == model_info("pvt_v2_b2").cfg
    assert model_info("pvt_v1_small_ope_cffn_lsra").cfg == model_info("pvt_v2_b2_li").cfg
    assert model_info("pvt_v2_b2_li").cfg.attn_mode == "linear"


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_and_features(name: str) -> None:
    model = create_model(name, num_classes=7, depths=(1, 1, 1, 1))  # one block per stage keeps this fast
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    model.eval()
    with torch.no_grad():
        feats, cls = model.forward_tokens(x)
        maps = model.forward_features(x)
        assert torch.allclose(model.forward_head(maps, cls), model(x), atol=1e-6)
    for f, info, s in zip(maps, model.feature_info, (4, 8, 16, 32)):
        assert f.shape == (2, info["num_chs"], -(-64 // s), -(-96 // s))
        assert info["reduction"] == s


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (200, 328), (97, 65)])
def test_odd_input_sizes(size: tuple[int, int]) -> None:
    model = create_model("pvt_v2_b0").eval()
    with torch.no_grad():
        maps = model.forward_features(torch.randn(1, 3, *size))
    assert [tuple(m.shape[-2:]) for m in maps] == [(-(-size[0] // s), -(-size[1] // s)) for s in (4, 8, 16, 32)]


def test_linear_sra_handles_maps_smaller_than_its_pool() -> None:
    model = create_model("pvt_v2_b2_li", depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 40, 72))).all()


def test_input_errors_are_clear() -> None:
    model = create_model("pvt_v2_b0")
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))


def test_headless_backbone() -> None:
    model = create_model("pvt_v2_b1", num_classes=0, depths=(1, 1, 1, 1))
    assert not any(k.startswith("head.") for k in model.state_dict())
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    model.reset_classifier(5)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = create_model("pvt_v2_b0", drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    model(x).square().sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    assert max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), ref)) < 1e-5


def test_drop_path_defaults_follow_the_spec() -> None:
    rates = {n: model_info(n).cfg.drop_path_rate for n in V2}
    assert rates == {"pvt_v2_b0": 0.1, "pvt_v2_b1": 0.1, "pvt_v2_b2": 0.1, "pvt_v2_b2_li": 0.1,
                     "pvt_v2_b3": 0.3, "pvt_v2_b4": 0.3, "pvt_v2_b5": 0.3}
    model = create_model("pvt_v2_b0")
    assert model.stages[0].blocks[0].drop_path.__class__.__name__ == "Identity"  # first rate is 0
    assert abs(model.stages[3].blocks[1].drop_path.p - 0.1) < 1e-9  # last rate is drop_path_rate
    from pvtv2.classification.recipes import CLIP_GRAD

    assert CLIP_GRAD.get("pvt_v2_b3") == 1.0 and CLIP_GRAD.get("pvt_v2_b2") is None


def test_config_is_validated() -> None:
    with pytest.raises(TypeError, match="unknown PVTConfig field"):
        PVTConfig().replace(embed_dim=3)
    with pytest.raises(ValueError, match="4 entries"):
        PVTConfig(depths=(1, 2, 3))
    with pytest.raises(ValueError, match="divisible"):
        PVTConfig(embed_dims=(32, 64, 161, 256))
    with pytest.raises(KeyError, match="unknown model 'pvt_v3'"):
        create_model("pvt_v3")


def test_public_api_is_typed_and_exported() -> None:
    for name in ("create_model", "list_models", "load_weights", "save_weights", "PyramidVisionTransformer"):
        assert hasattr(pvtv2, name)
    assert isinstance(create_model("pvt_v2_b0"), PyramidVisionTransformer)
