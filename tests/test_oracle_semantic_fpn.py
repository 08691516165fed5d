"""Semantic FPN against the released segmentor run by mmseg 0.14 (whai362/PVTv2-Seg ``fpn_pvtv2_*_ade20k_40k``, BN
in place of SyncBN): the same seeded weights, saved as mmseg saves them and read by ``load_segmentor``, give the same
logits on photos; every released size converts; ``pvtv2 segment`` names ADE20K classes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

import mmdet_oracle as O
from pvtv2.cli import main as cli
from pvtv2.errors import CheckpointError
from pvtv2.segmentation import ADE20K_CLASSES, load_segmentor, semantic_fpn
from pvtv2.segmentation.inference import predict_logits
from pvtv2.segmentation.mmseg import from_mmseg

VARIANTS = [("pvt_v2_b0", {}), ("pvt_v2_b2_li", {"depths": [1, 1, 1, 1]})]
RELEASED = ["pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b2_li", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5"]


def _classes() -> tuple[str, ...]:
    from mmseg.datasets import ADE20KDataset

    return tuple(ADE20KDataset.CLASSES)


@pytest.fixture(scope="module", params=VARIANTS, ids=[v[0] for v in VARIANTS])
def pair(request: Any, tmp_path_factory: Any) -> tuple[Any, Any, Any]:
    name, overrides = request.param
    cfg = O.semantic_fpn_config(O.oracle_backbone(name, overrides), O.stage_channels(name))
    theirs = O.build_mmseg(cfg, noise=0.02)
    path = O.save_mmdet_checkpoint(theirs, tmp_path_factory.mktemp("seg") / f"fpn_{name}_ade20k_40k.pth",
                                   config=O.with_backbone(cfg, O.released_backbone(name)), classes=_classes(),
                                   version=f"mmseg_version={O.MMSEG_VERSION}")
    if overrides:
        from pvtv2.segmentation.mmseg import load_mmseg_checkpoint

        ours, meta = load_mmseg_checkpoint(path, backbone_overrides=overrides)
    else:
        ours, meta = load_segmentor(path)
    assert meta.class_names == ADE20K_CLASSES and meta.reduce_zero_label and meta.num_classes == 150
    return theirs, ours.eval(), path


@pytest.mark.parametrize("photo,size", [("astronaut", (320, 480)), ("chelsea", (300, 451))])
def test_same_logits_on_photos(pair: Any, photo: str, size: tuple[int, int]) -> None:
    theirs, ours, _ = pair
    x, metas = O.preprocess(O.photo(photo, size))
    x = x[..., : size[0], : size[1]]  # mmseg's test pipeline does not pad
    with torch.no_grad():
        expected = theirs.encode_decode(x, metas)  # (1, 150, H, W)
        got = ours(x)
    assert got.shape == expected.shape == (1, 150, *size)
    assert (got - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("pair", [VARIANTS[0]], indirect=True, ids=[VARIANTS[0][0]])
def test_segment_cli_names_ade20k_classes(pair: Any, tmp_path: Any, capsys: Any) -> None:
    """The CLI reads the file alone: a released size (B0)."""
    theirs, ours, path = pair
    image = tmp_path / "astronaut.png"
    Image.fromarray(O.photo("astronaut", (320, 480))).save(image)
    assert cli(["segment", str(image), "--checkpoint", str(path), "--test-scale", "480", "320",
                "--save-vis", str(tmp_path / "vis.png")]) == 0
    x, metas = O.preprocess(O.photo("astronaut", (320, 480)))
    with torch.no_grad():
        top = theirs.encode_decode(x, metas).argmax(1).flatten().mode().values.item()
    printed = capsys.readouterr().out
    assert f": 480x320; {ADE20K_CLASSES[top]} " in printed and (tmp_path / "vis.png").stat().st_size > 0


def test_every_released_size_converts() -> None:
    from mmcv import Config
    from mmseg.models import build_segmentor

    for name in RELEASED:
        with torch.device("meta"):
            theirs = build_segmentor(Config(O.semantic_fpn_config(O.oracle_backbone(name),
                                                                  O.stage_channels(name))).model)
            ours = semantic_fpn(backbone=name, num_classes=150)
        assert O.param_count(theirs) == O.param_count(ours), name
        converted, expected = from_mmseg(O.mmdet_state_dict(theirs), ours), ours.state_dict()
        assert set(converted) == set(expected), name
        assert all(converted[k].shape == expected[k].shape for k in expected), name


@pytest.mark.parametrize("pair", [VARIANTS[0]], indirect=True, ids=[VARIANTS[0][0]])
def test_other_segmentors_fail_with_one_line(pair: Any, tmp_path: Any) -> None:
    theirs, _, path = pair
    ckpt = torch.load(path, weights_only=True)
    ckpt["meta"]["config"] = ckpt["meta"]["config"].replace("FPNHead", "UPerHead")
    torch.save(ckpt, tmp_path / "uper.pth")
    with pytest.raises(CheckpointError, match="only Semantic FPN") as err:
        load_segmentor(tmp_path / "uper.pth")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("photo,size", [("astronaut", (320, 480)), ("chelsea", (300, 451))])
def test_same_probabilities_at_the_released_test_scale(pair: Any, photo: str, size: tuple[int, int]) -> None:
    """mmseg's test pipeline (``Resize(img_scale=(2048, 512), keep_ratio=True)`` by mmcv, ``Normalize``) and its
    ``whole`` inference rescaled to the photo, against ``predict_logits`` on the 8-bit photo: a released checkpoint
    resizes as mmcv does (``resampling="opencv"``)."""
    import mmcv
    import numpy as np

    theirs, ours, _ = pair
    assert ours.resampling == "opencv"
    image = O.photo(photo, size)
    resized = mmcv.imrescale(O.to_bgr(image), (2048, 512))  # uint8 BGR, keep ratio
    x = torch.from_numpy(mmcv.imnormalize(resized, np.array(O.IMG_NORM["mean"]), np.array(O.IMG_NORM["std"]),
                                          to_rgb=True)).permute(2, 0, 1)[None].float()
    meta = {"ori_shape": (*size, 3), "img_shape": resized.shape, "pad_shape": resized.shape, "flip": False}
    with torch.no_grad():
        expected = theirs.inference(x, [meta], rescale=True)  # (1, 150, H, W) softmax at the photo's size
        got = predict_logits(ours, torch.from_numpy(image).permute(2, 0, 1)[None], scale=(2048, 512)).softmax(1)
    assert got.shape == expected.shape == (1, 150, *size)
    assert (got - expected).abs().max() <= 1e-5
