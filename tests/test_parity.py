"""Equivalence with independent implementations, same weights: timm (every v2 variant) and Hugging Face."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import max_abs, require

from pvtv2 import convert, create_model, list_models, load_weights

SIZES = [(224, 224), (200, 328)]  # square, and non-square not a multiple of 32


@pytest.fixture(scope="module")
def images() -> dict[tuple[int, int], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {s: torch.randn(1, 3, *s, generator=g) for s in SIZES}


@pytest.mark.parametrize("name", list_models("pvt_v2_*"))
def test_same_logits_and_features_as_timm(name: str, images: dict) -> None:
    ref = timm.create_model(name).eval()
    ours = create_model(name).eval()
    report = load_weights(ours, ref.state_dict())  # timm's random weights, through the timm converter
    assert report.format == "timm" and not report.missing
    with torch.inference_mode():
        for size, x in images.items():
            assert max_abs(ours(x), ref(x)) < 1e-4, size
            theirs = ref.forward_intermediates(x, intermediates_only=True)
            for a, b in zip(ours.forward_features(x), theirs):
                assert a.shape == b.shape
                assert max_abs(a, b) < 1e-4, size
    # and back: our weights in timm's format load strictly into timm
    ref.load_state_dict(convert(ours.state_dict(), "pvtv2", "timm"), strict=True)


def _hf_model(name: str, depths: tuple[int, ...]):
    require("transformers")
    from pvtv2.bench.peers import hf_classifier  # HF's model with the release's LayerNorm eps (see there)

    return hf_classifier(create_model(name, num_classes=10, depths=depths).cfg, 10).eval()


@pytest.mark.parametrize("name, depths", [("pvt_v2_b0", (2, 2, 2, 2)), ("pvt_v2_b2_li", (1, 1, 2, 1))])
def test_same_logits_as_hugging_face(name: str, depths: tuple[int, ...], images: dict) -> None:
    hf = _hf_model(name, depths)
    ours = create_model(name, num_classes=10, depths=depths).eval()
    assert load_weights(ours, hf.state_dict()).format == "hf"
    with torch.inference_mode():
        for x in images.values():
            assert max_abs(ours(x), hf(pixel_values=x).logits) < 1e-4
    # our weights, converted to HF names, load strictly into HF's model
    hf.load_state_dict(convert(ours.state_dict(), "pvtv2", "hf"), strict=True)
    backbone = {k: v for k, v in convert(ours.state_dict(), "pvtv2", "hf").items() if k.startswith("pvt_v2.")}
    assert load_weights(create_model(name, num_classes=0, depths=depths), {k[7:]: v for k, v in backbone.items()}).format == "hf"


def test_official_v1_layout_runs_like_the_released_forward() -> None:
    """PVT v1's class token and position embeddings, checked against a direct re-statement of the released
    forward pass (stage 4 concatenates the class token before adding its position embedding)."""
    model = create_model("pvt_v1_tiny", num_classes=5, depths=(1, 1, 1, 1)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        feats, cls = model.forward_tokens(x)
        s3 = model.stages[3]
        t = s3.patch_embed(feats[2].permute(0, 3, 1, 2)).flatten(1, 2)  # (B, 49, C)
        t = torch.cat([s3.cls_token.expand(2, -1, -1), t], 1) + s3.pos_embed  # released order
        for blk in s3.blocks:
            t = blk(t)
        t = s3.norm(t)
        assert max_abs(t[:, 0], cls) < 1e-5
        assert max_abs(model.head(t[:, 0]), model(x)) < 1e-5
