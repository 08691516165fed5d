"""Mask R-CNN against the released detector run by mmdet 2.13 (``mask_rcnn_pvt_v2_*_fpn_1x_coco``): the same seeded
weights, saved as mmdet saves them and read by :func:`pvtv2.detection.interop.mmdet.load_mmdet_checkpoint`, give the same
FPN maps, RPN outputs, final boxes and masks on photos and training losses."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mmdet_oracle as O
from pvtv2.detection.interop.mmdet import load_mmdet_checkpoint
from pvtv2.detection.registry import get_detector

VARIANTS = [("pvt_v2_b0", {}), ("pvt_v2_b2_li", {"depths": [1, 1, 1, 1]})]
PHOTOS = [("coffee", (256, 384)), ("chelsea", (250, 371))]  # a multiple of 32 and not
# Fewer proposals and detections than released (1000 / 100) on both sides: the heads run on CPU in seconds.
PROPOSALS, DETECTIONS = 300, 30
SAMPLE_ALL = 100_000  # sampler sizes above every candidate count: both sides train on all anchors / RoIs


def _config(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = O.mask_rcnn_config(O.oracle_backbone(name, overrides), O.stage_channels(name))
    cfg["model"]["test_cfg"]["rpn"]["max_per_img"] = PROPOSALS
    cfg["model"]["test_cfg"]["rcnn"]["max_per_img"] = DETECTIONS
    cfg["model"]["train_cfg"]["rpn_proposal"]["max_per_img"] = PROPOSALS
    for stage in ("rpn", "rcnn"):
        cfg["model"]["train_cfg"][stage]["sampler"]["num"] = SAMPLE_ALL
    return cfg


@pytest.fixture(scope="module", params=VARIANTS, ids=[v[0] for v in VARIANTS])
def pair(request: Any, tmp_path_factory: Any) -> tuple[Any, Any]:
    name, overrides = request.param
    overrides = {**overrides, "drop_path_rate": 0.0}
    cfg = _config(name, overrides)
    theirs = O.build_mmdet(cfg, noise=0.02)
    path = O.save_mmdet_checkpoint(theirs, tmp_path_factory.mktemp("ckpt") / f"mask_rcnn_{name}.pth",
                                   config=O.with_backbone(cfg, O.released_backbone(name)))
    ours, meta = load_mmdet_checkpoint(path, backbone_overrides=overrides, rpn_post_nms_top_n_test=PROPOSALS,
                                       rpn_post_nms_top_n_train=PROPOSALS,
                                       box_detections_per_img=DETECTIONS, rpn_batch_size_per_image=SAMPLE_ALL,
                                       box_batch_size_per_image=SAMPLE_ALL)
    assert (meta["arch"], meta["backbone"], meta["num_classes"]) == ("mask_rcnn", name, 80)
    return theirs, ours


def test_same_maps_and_rpn_outputs(pair: Any) -> None:
    theirs, ours = pair
    x, _ = O.preprocess(O.photo(*PHOTOS[1]))
    with torch.no_grad():
        their_maps, our_maps = theirs.extract_feat(x), list(ours.backbone(x).values())
        cls, reg = theirs.rpn_head(their_maps)
        dense = get_detector("mask_rcnn").dense(ours, x)
    assert len(their_maps) == len(our_maps) == 5
    for i, (a, b) in enumerate(zip(their_maps, our_maps, strict=True)):  # P2..P6
        assert (a - b).abs().max() <= 1e-4
        assert (cls[i] - dense[f"objectness_{i}"]).abs().max() <= 1e-4
        assert (reg[i] - dense[f"rpn_deltas_{i}"]).abs().max() <= 1e-4


def test_same_roi_head_outputs(pair: Any) -> None:
    """Class scores (background moved from last to first), class-specific deltas and mask logits on the same RoIs
    (the three land on different FPN levels)."""
    theirs, ours = pair
    x, _ = O.preprocess(O.photo(*PHOTOS[0]))
    boxes = torch.tensor([[10.0, 20.0, 200.0, 150.0], [0.0, 0.0, 40.0, 30.0], [100.0, 60.0, 380.0, 250.0]])
    rois = torch.cat([torch.zeros(3, 1), boxes], dim=1)
    heads = ours.roi_heads
    with torch.no_grad():
        res = theirs.roi_head._bbox_forward(theirs.extract_feat(x), rois)
        masks = theirs.roi_head._mask_forward(theirs.extract_feat(x), rois)["mask_pred"]  # (3, 80, 28, 28)
        feats = ours.backbone(x)
        our_cls, our_reg = heads.box_predictor(heads.box_head(heads.box_roi_pool(feats, [boxes], [x.shape[-2:]])))
        our_masks = heads.mask_logits(feats, [boxes], [x.shape[-2:]])  # (3, 81, 28, 28)
    assert (torch.cat([res["cls_score"][:, -1:], res["cls_score"][:, :-1]], 1) - our_cls).abs().max() <= 1e-4
    assert (res["bbox_pred"] - our_reg[:, 4:]).abs().max() <= 1e-4 and our_reg[:, :4].abs().max() == 0
    assert (masks - our_masks[:, 1:]).abs().max() <= 1e-4


@pytest.mark.parametrize("photo,size", PHOTOS)
def test_same_detections_and_masks_on_photos(pair: Any, photo: str, size: tuple[int, int]) -> None:
    theirs, ours = pair
    image = O.photo(photo, size)
    expected = O.mmdet_detect(theirs, image)
    assert len(expected["scores"]) == DETECTIONS and expected["masks"].any()
    O.assert_same_detections(O.our_detect(ours, image), expected)


def test_same_losses(pair: Any) -> None:
    theirs, ours = pair
    images = [O.photo("coffee", (256, 384)), O.photo("chelsea", (250, 371))]  # both padded to 256 x 384

    def blob(h: int, w: int, box: list[float]) -> torch.Tensor:  # the box minus its top-left quarter
        m = torch.zeros(h, w, dtype=torch.uint8)
        x1, y1, x2, y2 = (int(v) for v in box)
        m[y1:y2, x1:x2] = 1
        m[y1:(y1 + y2) // 2, x1:(x1 + x2) // 2] = 0
        return m

    boxes = [[[100.0, 50.0, 300.0, 230.0], [20.0, 30.0, 80.0, 120.0]], [[50.0, 40.0, 360.0, 240.0]]]
    targets = [{"boxes": torch.tensor(b), "labels": torch.tensor(lab),
                "masks": torch.stack([blob(*im.shape[:2], box) for box in b])}
               for b, lab, im in zip(boxes, [[1, 17], [16]], images)]
    expected, got = O.train_losses(theirs, ours, images, targets)
    assert set(got) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"}  # mmdet's names
    for name in got:
        assert got[name].item() == pytest.approx(expected[name].item(), rel=1e-4, abs=1e-6), name


def test_same_detections_and_masks_on_a_padded_batch(pair: Any) -> None:
    """Both photos in one padded batch (250 x 371 padded to 256 x 384 beside 256 x 384) on each side."""
    theirs, ours = pair
    images = [O.photo(*PHOTOS[1]), O.photo(*PHOTOS[0])]
    expected, got = O.mmdet_detect_batch(theirs, images), O.our_detect_batch(ours, images)
    assert len(expected) == len(got) == 2
    for mine, their in zip(got, expected, strict=True):
        assert len(their["scores"]) == DETECTIONS and their["masks"].any()
        O.assert_same_detections(mine, their)


def test_same_detections_and_masks_at_the_released_test_scale(pair: Any) -> None:
    """mmcv's resize to fit 1333 x 800 (ours: ``resampling="opencv"``, set for released checkpoints), masks pasted
    back on the photo."""
    theirs, ours = pair
    t = ours.transform
    assert t.resampling == "opencv" and (t.min_size, t.max_size) == ((800,), 1333)
    image = O.photo(*PHOTOS[1])
    expected = O.mmdet_detect(theirs, image, img_scale=(1333, 800))
    assert len(expected["scores"]) == DETECTIONS and expected["masks"].any()
    O.assert_same_detections(O.our_detect(ours, image, test_scale=True), expected, score_tol=1e-5)


# --- the released test settings at the released test scale ------------------------------------------------------------
@pytest.fixture(scope="module")
def released(tmp_path_factory: Any) -> tuple[Any, Any]:
    """B0 with the released test settings on both sides: mmdet's from the released config, ours from our builder's
    defaults as ``load_mmdet_checkpoint`` gives them (nothing passed)."""
    name, overrides = "pvt_v2_b0", {"drop_path_rate": 0.0}
    cfg = O.mask_rcnn_config(O.oracle_backbone(name, overrides), O.stage_channels(name))
    theirs = O.build_mmdet(cfg, noise=0.02)
    path = O.save_mmdet_checkpoint(theirs, tmp_path_factory.mktemp("released") / f"mask_rcnn_{name}.pth",
                                   config=O.with_backbone(cfg, O.released_backbone(name)))
    ours, _ = load_mmdet_checkpoint(path, backbone_overrides=overrides)
    rpn, rcnn, heads = cfg["model"]["test_cfg"]["rpn"], cfg["model"]["test_cfg"]["rcnn"], ours.roi_heads
    ours_rpn = (ours.rpn.pre_nms_top_n["testing"], ours.rpn.post_nms_top_n["testing"], ours.rpn.nms_thresh)
    assert (rpn["nms_pre"], rpn["max_per_img"], rpn["nms"]["iou_threshold"]) == ours_rpn == (1000, 1000, 0.7)
    assert (rcnn["score_thr"], rcnn["nms"]["iou_threshold"], rcnn["max_per_img"]) == \
        (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.05, 0.5, 100)
    return theirs, ours


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_released_test_settings_at_the_released_test_scale(released: Any, photo: str) -> None:
    """mmdet's ``inference_detector`` path at 1333 x 800 with 1000 proposals and 100 detections against our public
    path on the photo at its own size (300 x 451 -> 800 x 1203, 400 x 600 -> 800 x 1200): the same 100 detections in
    the photo's pixels, masks pasted at its size. Measured (chelsea, coffee): boxes within 3.1e-5 / 0 px, scores
    within 1.2e-7, labels equal, no mask pixel differs (26,116 / 21,335 mask pixels)."""
    theirs, ours = released
    image = O.photo(photo)
    expected = O.mmdet_detect(theirs, image, img_scale=(1333, 800))
    assert len(expected["scores"]) == 100 and expected["masks"].shape[1:] == image.shape[:2]
    assert expected["masks"].sum() > 1000
    O.assert_same_detections(O.our_detect(ours, image, test_scale=True), expected)
