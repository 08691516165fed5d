"""Our builders' defaults are the released configs' settings (the ``train_cfg`` / ``test_cfg`` / test pipeline of each
``*_pvt_v2_*`` config, as the oracle tests hand them to mmdet 2.13), read from the built models: the oracle tests
shrink proposal and detection counts for speed, so without this test nothing would check the defaults a user gets."""

from __future__ import annotations

from typing import Any

import pytest

import mmdet_oracle as O
from pvtv2.detection import build_detector
from test_oracle_atss_gfl import config as atss_gfl_config
from test_oracle_cascade_sparse import cascade_config, sparse_config

SHALLOW = {"depths": (1, 1, 1, 1)}  # the settings do not depend on depth
CHANNELS = [32, 64, 160, 256]


def _ours(arch: str) -> Any:
    return build_detector(arch, backbone="pvt_v2_b0", num_classes=80, backbone_overrides=SHALLOW)


def _test_scale(cfg: dict[str, Any]) -> tuple[int, int]:
    scale = next(s for s in cfg["data"]["test"]["pipeline"] if s["type"] == "MultiScaleFlipAug")["img_scale"]
    return max(scale), min(scale)  # (1333, 800): longer side at most, shorter side


def _transform_sizes(model: Any) -> tuple[int, int]:
    t = model.transform
    return t.max_size, (t.min_size[0] if isinstance(t.min_size, (tuple, list)) else t.min_size)


def _nms_settings(test_cfg: dict[str, Any]) -> tuple[float, float, int]:
    return test_cfg["score_thr"], test_cfg["nms"]["iou_threshold"], test_cfg["max_per_img"]


def test_retinanet_defaults_are_the_released_config() -> None:
    cfg = O.retinanet_config({}, CHANNELS)
    model, test, train = _ours("retinanet"), cfg["model"]["test_cfg"], cfg["model"]["train_cfg"]
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img) == _nms_settings(test)
    assert model.topk_candidates == test["nms_pre"]
    assignment = train["assigner"]
    assert (model.proposal_matcher.high_threshold, model.proposal_matcher.low_threshold) == \
        (assignment["pos_iou_thr"], assignment["neg_iou_thr"])
    anchors = cfg["model"]["bbox_head"]["anchor_generator"]
    smallest = anchors["octave_base_scale"] * anchors["strides"][0]  # 4 x 8 = 32 px on P3
    assert model.anchor_generator.sizes[0][0] == pytest.approx(smallest)
    assert len(model.anchor_generator.sizes[0]) == anchors["scales_per_octave"]
    assert _transform_sizes(model) == _test_scale(cfg)


def test_mask_rcnn_defaults_are_the_released_config() -> None:
    cfg = O.mask_rcnn_config({}, CHANNELS)
    model, test, train = _ours("mask_rcnn"), cfg["model"]["test_cfg"], cfg["model"]["train_cfg"]
    rpn, heads = model.rpn, model.roi_heads
    assert (rpn.pre_nms_top_n["testing"], rpn.post_nms_top_n["testing"], rpn.nms_thresh) == \
        (test["rpn"]["nms_pre"], test["rpn"]["max_per_img"], test["rpn"]["nms"]["iou_threshold"])
    assert (rpn.pre_nms_top_n["training"], rpn.post_nms_top_n["training"]) == \
        (train["rpn_proposal"]["nms_pre"], train["rpn_proposal"]["max_per_img"])
    assert (rpn.fg_iou_thresh, rpn.bg_iou_thresh) == (train["rpn"]["assigner"]["pos_iou_thr"],
                                                      train["rpn"]["assigner"]["neg_iou_thr"])
    assert (rpn.batch_size_per_image, rpn.positive_fraction, rpn.allowed_border) == \
        (train["rpn"]["sampler"]["num"], train["rpn"]["sampler"]["pos_fraction"], train["rpn"]["allowed_border"])
    assert rpn.smooth_l1_beta == 0 and cfg["model"]["rpn_head"]["loss_bbox"]["type"] == "L1Loss"
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == _nms_settings(test["rcnn"])
    assert (heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction) == \
        (train["rcnn"]["sampler"]["num"], train["rcnn"]["sampler"]["pos_fraction"])
    assert heads.proposal_matcher.high_threshold == train["rcnn"]["assigner"]["pos_iou_thr"]
    assert _transform_sizes(model) == _test_scale(cfg)


@pytest.mark.parametrize("arch", ["atss", "gfl"])
def test_atss_gfl_defaults_are_the_released_config(arch: str) -> None:
    cfg = atss_gfl_config(arch, "pvt_v2_b0", {"depths": [1, 1, 1, 1]})
    model, test = _ours(arch), cfg["model"]["test_cfg"]
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img) == _nms_settings(test)
    assert model.topk_candidates == test["nms_pre"] and model.topk == cfg["model"]["train_cfg"]["assigner"]["topk"]
    assert _transform_sizes(model) == _test_scale(cfg)


def test_cascade_defaults_are_the_released_config() -> None:
    cfg = cascade_config({}, CHANNELS)
    model, test, train = _ours("cascade_mask_rcnn"), cfg["model"]["test_cfg"], cfg["model"]["train_cfg"]
    rpn, heads = model.rpn, model.roi_heads
    assert (rpn.pre_nms_top_n["testing"], rpn.post_nms_top_n["testing"]) == \
        (test["rpn"]["nms_pre"], test["rpn"]["max_per_img"])
    assert (rpn.pre_nms_top_n["training"], rpn.post_nms_top_n["training"]) == \
        (train["rpn_proposal"]["nms_pre"], train["rpn_proposal"]["max_per_img"])
    assert (rpn.allowed_border, rpn.smooth_l1_beta) == (train["rpn"]["allowed_border"],
                                                        cfg["model"]["rpn_head"]["loss_bbox"]["beta"])
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == _nms_settings(test["rcnn"])
    assert list(heads.stage_ious) == [s["assigner"]["pos_iou_thr"] for s in train["rcnn"]]
    assert list(heads.stage_weights) == cfg["model"]["roi_head"]["stage_loss_weights"]
    assert (heads.batch_size_per_image, heads.positive_fraction) == \
        (train["rcnn"][0]["sampler"]["num"], train["rcnn"][0]["sampler"]["pos_fraction"])
    assert _transform_sizes(model) == _test_scale(cfg)


def test_sparse_rcnn_defaults_are_the_released_config() -> None:
    cfg = sparse_config({}, CHANNELS)
    model = _ours("sparse_rcnn")
    assert model.rpn.init_proposal_bboxes.num_embeddings == cfg["model"]["rpn_head"]["num_proposals"]
    assert len(model.roi_heads.box_head) == cfg["model"]["roi_head"]["num_stages"]
    assert model.roi_heads.detections_per_img == cfg["model"]["test_cfg"]["rcnn"]["max_per_img"]
    assert _transform_sizes(model) == _test_scale(cfg)
