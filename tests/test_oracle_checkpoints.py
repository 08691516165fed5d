"""Released mmdet checkpoints of every published layout: RetinaNet and Mask R-CNN at every released backbone size
(built by mmdet on the meta device: key names, shapes and parameter counts straight from mmdet's modules), mmdet's
own PVT v2 backbone layout, files without a config, malformed files, and ``pvtv2 detect`` on such a file."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from PIL import Image

import mmdet_oracle as O
from pvtv2.cli import main as cli
from pvtv2.detection import build_detector, get_detector
from pvtv2.detection.interop.mmdet import load_mmdet_checkpoint
from pvtv2.errors import CheckpointError
from pvtv2.models.openmmlab import variant_from_config
from pvtv2.weights.openmmlab import parse_config

RELEASED = ["pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b2_li", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5"]
# parameters of the released configs as mmdet 2.13 counts them (80 classes), in the order of RELEASED
MMDET_PARAMS = {
    "retinanet": [12_947_028, 23_745_972, 35_099_828, 32_290_484, 54_975_668, 72_293_044, 91_692_980],
    "mask_rcnn": [23_446_096, 33_663_408, 45_017_264, 42_207_920, 64_893_104, 82_210_480, 101_610_416],
}
# torchvision's predictors keep the background's 4 box deltas (1024 x 4 + 4) and mask channel (256 + 1)
EXTRA = {"retinanet": 0, "mask_rcnn": 4 * 1024 + 4 + 256 + 1}
CONFIGS = {"retinanet": O.retinanet_config, "mask_rcnn": O.mask_rcnn_config}
# mmdet's own PyramidVisionTransformerV2 entries (mmdet configs/pvt/retinanet_pvtv2-b*_fpn_1x_coco.py)
MMDET_PVT = {"pvt_v2_b0": (32, [2, 2, 2, 2]), "pvt_v2_b1": (64, [2, 2, 2, 2]), "pvt_v2_b2": (64, [3, 4, 6, 3]),
             "pvt_v2_b3": (64, [3, 4, 18, 3]), "pvt_v2_b4": (64, [3, 8, 27, 3]), "pvt_v2_b5": (64, [3, 6, 40, 3])}


@pytest.mark.parametrize("arch", ["retinanet", "mask_rcnn"])
def test_every_released_config_converts_with_mmdets_counts(arch: str) -> None:
    from mmcv import Config
    from mmdet.models import build_detector as build_mmdet

    for name, count in zip(RELEASED, MMDET_PARAMS[arch], strict=True):
        with torch.device("meta"):
            theirs = build_mmdet(Config(CONFIGS[arch](O.oracle_backbone(name), O.stage_channels(name))).model)
            ours = build_detector(arch, backbone=name)
        assert O.param_count(theirs) == count, name
        assert O.param_count(ours) == count + EXTRA[arch], name
        converted = get_detector(arch).from_mmdet(O.mmdet_state_dict(theirs), ours)
        expected = ours.state_dict()
        assert set(converted) == set(expected), name
        assert all(converted[k].shape == expected[k].shape for k in expected), name
        assert variant_from_config(O.released_backbone(name)) == name
        if name in MMDET_PVT:
            width, depths = MMDET_PVT[name]
            entry = {"type": "PyramidVisionTransformerV2", "embed_dims": width, "num_layers": depths}
            assert variant_from_config(entry) == name


@pytest.fixture(scope="module")
def retinanet_b0(tmp_path_factory: Any) -> tuple[Any, dict[str, Any], Any]:
    cfg = O.retinanet_config(O.oracle_backbone("pvt_v2_b0"), O.stage_channels("pvt_v2_b0"))
    return O.build_mmdet(cfg, noise=0.02), cfg, tmp_path_factory.mktemp("ckpts")


def test_mmdets_own_backbone_layout(retinanet_b0: Any) -> None:
    """mmdet's RetinaNet-PVTv2 files: ``PyramidVisionTransformerV2`` in the config, ``layers.i.{0,1,2}`` weights."""
    theirs, cfg, folder = retinanet_b0
    entry = {"type": "PyramidVisionTransformerV2", "embed_dims": 32, "num_layers": [2, 2, 2, 2]}
    path = O.save_mmdet_checkpoint(theirs, folder / "mmdet_layout.pth", config=O.with_backbone(cfg, entry),
                                   backbone_layout="mmdet")
    sd = torch.load(path, weights_only=True)["state_dict"]
    # names and shapes from mmdet's backbones/pvt.py: PatchEmbed.projection, MultiheadAttention.attn (q, k, v in
    # one in_proj), MixFFN.layers = [1x1 conv, 3x3 depth-wise conv, GELU, dropout, 1x1 conv, dropout]
    for key, shape in {"backbone.layers.0.0.projection.weight": (32, 3, 7, 7),
                       "backbone.layers.0.1.0.attn.attn.in_proj_weight": (96, 32),
                       "backbone.layers.0.1.0.attn.attn.out_proj.weight": (32, 32),
                       "backbone.layers.0.1.0.attn.sr.weight": (32, 32, 8, 8),
                       "backbone.layers.0.1.0.ffn.layers.1.weight": (256, 1, 3, 3),
                       "backbone.layers.0.1.0.ffn.layers.4.weight": (32, 256, 1, 1),
                       "backbone.layers.3.2.weight": (256,)}.items():
        assert tuple(sd[key].shape) == shape, key
    ours, meta = load_mmdet_checkpoint(path)
    assert meta["backbone"] == "pvt_v2_b0"
    image = O.photo("astronaut", (320, 480))
    O.assert_same_detections(O.our_detect(ours, image), O.mmdet_detect(theirs, image))


def test_files_without_config_or_meta(retinanet_b0: Any) -> None:
    theirs, _, folder = retinanet_b0
    no_config = O.save_mmdet_checkpoint(theirs, folder / "no_config.pth", config=None)
    _, meta = load_mmdet_checkpoint(no_config)  # detector and backbone read from the weights
    assert (meta["arch"], meta["backbone"], meta["class_names"][80]) == ("retinanet", "pvt_v2_b0", "toothbrush")
    bare = folder / "bare.pth"
    torch.save({"state_dict": O.mmdet_state_dict(theirs)}, bare)
    model, meta = load_mmdet_checkpoint(bare)
    assert meta["class_names"][1:] == list(O.COCO_CLASSES)  # 80 classes without names: mmdet's COCO order
    assert model.score_thresh == 0.05 and model.detections_per_img == 100 and model.transform.min_size == (800,)


def test_malformed_files_fail_with_one_line(retinanet_b0: Any) -> None:
    theirs, cfg, folder = retinanet_b0
    sd = O.mmdet_state_dict(theirs)
    cases = {
        "missing head": ({k: v for k, v in sd.items() if not k.startswith("bbox_head.retina_cls.")}, "missing"),
        "other class count": ({**sd, "bbox_head.retina_cls.weight": sd["bbox_head.retina_cls.weight"][:180],
                               "bbox_head.retina_cls.bias": sd["bbox_head.retina_cls.bias"][:180]}, "class count"),
        "foreign key": ({**sd, "bbox_head.extra.weight": torch.zeros(1)}, "unexpected weight"),
    }
    for what, (state, message) in cases.items():
        path = folder / f"{what}.pth"
        torch.save({"meta": {"mmdet_version": "2.13.0", "CLASSES": O.COCO_CLASSES}, "state_dict": state}, path)
        with pytest.raises(CheckpointError, match=message) as err:
            load_mmdet_checkpoint(path)
        assert "\n" not in str(err.value), what
    good = O.save_mmdet_checkpoint(theirs, folder / "good.pth", config=cfg)
    truncated = folder / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_mmdet_checkpoint(truncated)
    fcos = O.with_backbone(cfg, O.released_backbone("pvt_v2_b0"))
    fcos["model"]["type"] = "FCOS"
    with pytest.raises(CheckpointError, match="'FCOS' is not supported"):
        load_mmdet_checkpoint(O.save_mmdet_checkpoint(theirs, folder / "fcos.pth", config=fcos))


def test_config_text_is_read_not_run() -> None:
    text = "model = dict(type='RetinaNet', backbone=dict(type='pvt_v2_b2', style='pytorch'), x=(1, -2))\n" \
           "evil = __import__('os').system('false')\n"
    assert parse_config(text) == {"model": {"type": "RetinaNet", "x": (1, -2),
                                            "backbone": {"type": "pvt_v2_b2", "style": "pytorch"}}}


def test_detect_cli_draws_coco_names(retinanet_b0: Any, tmp_path: Any, capsys: Any) -> None:
    theirs, cfg, folder = retinanet_b0
    path = O.save_mmdet_checkpoint(theirs, folder / "retinanet_pvt_v2_b0_fpn_1x_coco.pth",
                                   config=O.with_backbone(cfg, O.released_backbone("pvt_v2_b0")))
    image = tmp_path / "astronaut.png"
    Image.fromarray(O.photo("astronaut", (320, 480))).save(image)
    vis = tmp_path / "vis.png"
    assert cli(["detect", str(image), "--checkpoint", str(path), "--score-thresh", "0.2", "--test-size", "320",
                "--max-size", "480", "--json", "--save-vis", str(vis)]) == 0
    found = json.loads(capsys.readouterr().out.split("wrote")[0])
    expected = O.mmdet_detect(theirs, O.photo("astronaut", (320, 480)))
    names = [O.COCO_CLASSES[label - 1] for label, s in zip(expected["labels"].tolist(), expected["scores"]) if s >= 0.2]
    assert found and sorted(d["name"] for d in found) == sorted(names)
    assert vis.stat().st_size > 0
