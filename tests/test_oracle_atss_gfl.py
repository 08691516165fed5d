"""ATSS and GFL against mmdet 2.13 itself (tests/mmdet_oracle.py): the released configs' parameter counts, equal raw
head outputs and detections on real photos at two sizes (one not a multiple of 32), equal losses on a small batch,
and the released checkpoint layout read by our converter.

The configs below carry the facts of whai362/PVT ``detection/configs/{atss,gfl}_pvt_v2_b2[_li]_fpn_3x_mstrain_fp16.py``
(neck, head, assigner, losses, test settings); the heads, assigner, losses and decoding then come from mmdet.
Backbones keep B2 / B2-Li widths with one block per stage (the backbone is proven equal to the released one
elsewhere); parameter counts use the full models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import mmdet_oracle as O
from pvtv2.detection import build_detector, get_detector
from pvtv2.weights import read_checkpoint

SHALLOW = {"depths": [1, 1, 1, 1], "drop_path_rate": 0.0}
STRIDES = [8, 16, 32, 64, 128]
ARCHS = ("atss", "gfl")


pytestmark = pytest.mark.usefixtures("one_thread")


def head_config(arch: str, num_classes: int = 80) -> dict[str, Any]:
    """The released ``bbox_head`` of ATSS / GFL."""
    head = {"num_classes": num_classes, "in_channels": 256, "stacked_convs": 4, "feat_channels": 256,
            "anchor_generator": {"type": "AnchorGenerator", "ratios": [1.0], "octave_base_scale": 8,
                                 "scales_per_octave": 1, "strides": STRIDES}}
    if arch == "atss":
        return {"type": "ATSSHead", **head, "bbox_coder": O.delta_coder([0.1, 0.1, 0.2, 0.2]),
                "loss_cls": {"type": "FocalLoss", "use_sigmoid": True, "gamma": 2.0, "alpha": 0.25, "loss_weight": 1.0},
                "loss_bbox": {"type": "GIoULoss", "loss_weight": 2.0},
                "loss_centerness": {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 1.0}}
    return {"type": "GFLHead", **head, "reg_max": 16,
            "loss_cls": {"type": "QualityFocalLoss", "use_sigmoid": True, "beta": 2.0, "loss_weight": 1.0},
            "loss_dfl": {"type": "DistributionFocalLoss", "loss_weight": 0.25},
            "loss_bbox": {"type": "GIoULoss", "loss_weight": 2.0}}


def config(arch: str, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{atss,gfl}_pvt_v2_*_fpn_3x_mstrain_fp16.py`` with our backbone: FPN on stages 2-4, P6/P7 on the P5 output."""
    return {"model": {
        "type": arch.upper(),
        "backbone": O.oracle_backbone(name, overrides),
        "neck": O.fpn_neck(O.stage_channels(name, overrides), start_level=1, add_extra_convs="on_output"),
        "bbox_head": head_config(arch),
        "train_cfg": {"assigner": {"type": "ATSSAssigner", "topk": 9}, "allowed_border": -1, "pos_weight": -1,
                      "debug": False},
        "test_cfg": {"nms_pre": 1000, "min_bbox_size": 0, "score_thr": 0.05,
                     "nms": {"type": "nms", "iou_threshold": 0.6}, "max_per_img": 100},
    }, "data": {"test": {"pipeline": O.detection_pipeline()}}}


def pair(arch: str, name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """mmdet's detector (seeded noise on every weight) and ours with its weights through ``from_mmdet``."""
    mm = O.build_mmdet(config(arch, name, SHALLOW), seed=seed, noise=0.02)
    if arch == "gfl":  # the noise also hit GFL's constant bins (a buffer in mmdet); a real checkpoint has 0..16
        mm.bbox_head.integral.project.copy_(torch.linspace(0, 16, 17))
    ours = build_detector(arch, backbone=name, backbone_overrides=SHALLOW).eval()
    ours.load_state_dict(get_detector(arch).from_mmdet(O.mmdet_state_dict(mm), ours))
    return mm, ours


def _image(photo: np.ndarray) -> torch.Tensor:
    return torch.tensor(photo).permute(2, 0, 1).float() / 255  # (H, W, 3) uint8 -> (3, H, W) in 0..1


def assert_same_detections(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """The same detections one to one: label equal, score within 1e-5, box within 1e-3 px. Matched as sets, since
    two detections whose scores differ by ~1e-7 may come in either order."""
    assert len(got["boxes"]) == len(expected["boxes"])
    same = ((got["boxes"][:, None] - expected["boxes"][None]).abs().amax(-1) <= 1e-3) \
        & ((got["scores"][:, None] - expected["scores"][None]).abs() <= 1e-5) \
        & (got["labels"][:, None] == expected["labels"][None])  # (N, N)
    assert same.any(dim=1).all() and same.any(dim=0).all() and same.sum() == len(same)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts_equal_mmdets(arch: str) -> None:
    for name in ("pvt_v2_b2", "pvt_v2_b2_li"):
        mm = O.build_mmdet(config(arch, name))
        with torch.device("meta"):
            ours = build_detector(arch, backbone=name)
        assert O.param_count(ours) == O.param_count(mm)


@pytest.mark.parametrize(("arch", "name"), [(a, n) for a in ARCHS for n in ("pvt_v2_b2", "pvt_v2_b2_li")])
def test_outputs_and_detections_equal_mmdets(arch: str, name: str) -> None:
    mm, ours = pair(arch, name)
    x, _ = O.preprocess(O.photo("astronaut", (200, 300)))
    with torch.no_grad():
        theirs = [t for level_maps in mm.forward_dummy(x) for t in level_maps]
        mine = get_detector(arch).dense(ours, x)
    assert len(theirs) == len(mine)
    for a, b in zip(theirs, mine.values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    for photo_name, size in (("astronaut", (200, 300)), ("coffee", (256, 384))):  # 200 is no multiple of 32
        photo = O.photo(photo_name, size)
        expected = O.mmdet_detect(mm, photo)
        ours.transform.min_size, ours.transform.max_size = (min(size),), max(size)  # no resizing, as mmdet's call
        with torch.no_grad():
            got = ours([_image(photo)])[0]
        assert len(expected["boxes"]) > 10
        assert_same_detections(got, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_losses_equal_mmdets(arch: str) -> None:
    """Two photos of different sizes in one padded batch (the smaller one's anchors beyond its own padded extent get
    no loss in mmdet), three boxes and one."""
    mm, ours = pair(arch, "pvt_v2_b2_li", seed=1)
    photos = [O.photo("astronaut", (224, 320)), O.photo("coffee", (160, 250))]
    boxes = [[30.0, 20.0, 200.0, 210.0], [150.0, 40.0, 300.0, 120.0], [10.0, 10.0, 40.0, 50.0]]
    targets = [{"boxes": torch.tensor(boxes), "labels": torch.tensor([1, 5, 80])},
               {"boxes": torch.tensor([[20.0, 30.0, 120.0, 150.0]]), "labels": torch.tensor([42])}]
    batch, metas = [], []
    for photo in photos:
        x, meta = O.preprocess(photo)
        batch.append(x[0])
        metas += meta
    h, w = max(x.shape[1] for x in batch), max(x.shape[2] for x in batch)
    padded = torch.zeros(len(batch), 3, h, w)
    for i, x in enumerate(batch):
        padded[i, :, : x.shape[1], : x.shape[2]] = x
        metas[i]["batch_input_shape"] = (h, w)
    expected = O.forward_train(mm, padded, metas, targets)
    ours.train()
    ours.transform._skip_resize = True  # as the trainer does: the images are already at their training size
    got = ours([_image(p) for p in photos], targets)
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value.reshape(()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_released_checkpoint_loads(arch: str, tmp_path) -> None:
    """A checkpoint as mmdet saves it (the authors' backbone names and config text) loads through
    ``load_mmdet_checkpoint``, which picks the detector and backbone from the config, strictly; same outputs."""
    from pvtv2.detection.interop.mmdet import load_mmdet_checkpoint

    name = "pvt_v2_b2_li"
    cfg = config(arch, name, SHALLOW)
    mm = O.build_mmdet(cfg, seed=2, noise=0.02)
    if arch == "gfl":
        mm.bbox_head.integral.project.copy_(torch.linspace(0, 16, 17))
    path = O.save_mmdet_checkpoint(mm, tmp_path / f"{arch}.pth", config=O.with_backbone(cfg, O.released_backbone(name)))
    assert "backbone.patch_embed1.proj.weight" in read_checkpoint(path)["state_dict"]
    ours, meta = load_mmdet_checkpoint(path, backbone_overrides=SHALLOW)
    assert (meta["arch"], meta["backbone"], meta["class_names"][1]) == (arch, name, "person")
    x, _ = O.preprocess(O.photo("chelsea", (160, 224)))
    with torch.no_grad():
        theirs = [t for level_maps in mm.forward_dummy(x) for t in level_maps]
        mine = get_detector(arch).dense(ours, x)
    for a, b in zip(theirs, mine.values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_resnet50_comparison_backbone_equals_mmdets() -> None:
    """Table 4's ResNet-50 column: mmdet's own ResNet-50 (frozen_stages=1, norm_eval, style pytorch) under ATSS has
    our parameter count and, with its weights (torchvision's names), our outputs. (mmdet 2.13 has no Swin.)"""
    cfg = config("atss", "pvt_v2_b0")
    cfg["model"]["backbone"] = {"type": "ResNet", "depth": 50, "num_stages": 4, "out_indices": (0, 1, 2, 3),
                                "frozen_stages": 1, "norm_cfg": {"type": "BN", "requires_grad": True},
                                "norm_eval": True, "style": "pytorch"}
    cfg["model"]["neck"] = O.fpn_neck([256, 512, 1024, 2048], start_level=1, add_extra_convs="on_output")
    mm = O.build_mmdet(cfg, seed=3, noise=0.02)
    ours = build_detector("atss", backbone="resnet50").eval()
    assert O.param_count(ours) == O.param_count(mm) == 32_295_322
    ours.load_state_dict(get_detector("atss").from_mmdet(mm.state_dict(), ours))
    x, _ = O.preprocess(O.photo("chelsea", (160, 224)))
    with torch.no_grad():
        theirs = [t for level_maps in mm.forward_dummy(x) for t in level_maps]
        mine = get_detector("atss").dense(ours, x)
    for a, b in zip(theirs, mine.values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_released_file_at_the_released_test_scale(arch: str, tmp_path: Any) -> None:
    """A released-layout file read by ``load_mmdet_checkpoint`` (released test settings, 1333 x 800, mmcv's resize)
    against mmdet's ``inference_detector`` at the released test scale."""
    from pvtv2.detection.interop.mmdet import load_mmdet_checkpoint

    name = "pvt_v2_b2_li"
    mm, _ = pair(arch, name)
    path = O.save_mmdet_checkpoint(mm, tmp_path / f"{arch}.pth",
                                   config=O.with_backbone(config(arch, name, SHALLOW), O.released_backbone(name)))
    ours, _ = load_mmdet_checkpoint(path, backbone_overrides={"depths": (1, 1, 1, 1), "drop_path_rate": 0.0})
    assert ours.transform.resampling == "opencv"
    photo = O.photo("coffee", (250, 371))
    expected = O.mmdet_detect(mm, photo, img_scale=(1333, 800))
    assert len(expected["boxes"]) > 10
    assert_same_detections(O.our_detect(ours, photo, test_scale=True), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_detections_on_a_padded_batch(arch: str) -> None:
    """Two photos of different sizes in one padded batch on each side: mmdet's ``simple_test`` on its collated batch
    (astronaut 200 x 300, its own padded extent 224 x 320, beside coffee 256 x 384: both in 256 x 384) against one
    call of ours (``keep_size``: scale 1, normalised and padded). Per image: the same detections, boxes within
    1e-2 px, scores within 1e-4 (the released test settings: 1000 per level, score 0.05, NMS 0.6, 100 per image).
    Measured (astronaut, coffee): ATSS boxes within 8.4e-5 / 1.1e-4 px, scores 2.3e-7 / 3.0e-7; GFL boxes
    3.9e-5 / 4.6e-5 px, scores 3.0e-7 / 4.2e-7; 100 detections each."""
    mm, ours = pair(arch, "pvt_v2_b2_li")
    images = [O.photo("astronaut", (200, 300)), O.photo("coffee", (256, 384))]
    expected, got = O.mmdet_detect_batch(mm, images), O.our_detect_batch(ours, images)
    assert len(expected) == len(got) == 2
    for mine, theirs in zip(got, expected, strict=True):
        assert len(theirs["scores"]) >= 5 and len(mine["scores"]) == len(theirs["scores"])
        O.assert_same_detections(mine, theirs, box_tol=1e-2, score_tol=1e-4)


def test_every_step_of_a_twenty_step_3x_mstrain_trajectory_equals_mmdets() -> None:
    """ATSS-B2-Li (one block per stage) with the released ``3x_mstrain`` optimisation on mmdet's side: mmcv's
    ``build_optimizer`` with ``AdamW, lr=1e-4, weight_decay=0.05`` and the ``paramwise_cfg`` custom keys (no decay on
    norms), and mmcv's ``StepLrUpdaterHook`` (linear warm-up over 500 iterations from 0.001, steps at epochs 27 and
    33) at iterations 490-509, across the end of the warm-up; ours: ``create_optimizer`` and ``schedule_from_config``
    of the ``3x_mstrain`` recipe. Ten multi-scale batches of two photos (three scales, every other batch flipped),
    twice over, the same on both sides; at every step ours is put on mmdet's weights (teacher forcing, as the
    RetinaNet test):
    the lr of every group, the losses, the gradients and our AdamW's new weights must equal mmdet's.
    Not compared: fp16 (the release trains with mmcv's fp16 hook on GPUs; both sides run fp32 here) and the
    augmentation itself (tests/test_oracle_pipeline.py and tests/test_mstrain_recipe.py).
    Measured (2026-12-04): the loss 3.15 -> 2.45; losses within 1.4e-7, gradient tensors within 2.5e-6 (median
    tensor 7.2e-7), weights after each step within 1.0e-8, every lr equal."""
    from mmcv.runner import build_optimizer
    from mmcv.runner.hooks.lr_updater import StepLrUpdaterHook

    from pvtv2.detection import get_recipe
    from pvtv2.engine.optim import create_optimizer, schedule_from_config

    mm, ours = pair("atss", "pvt_v2_b2_li", seed=2)
    cfg = get_recipe("3x_mstrain")
    no_decay = {k: {"decay_mult": 0.0} for k in ("absolute_pos_embed", "relative_position_bias_table", "norm")}
    their_opt = build_optimizer(mm, {"type": "AdamW", "lr": 1e-4, "weight_decay": cfg.weight_decay,
                                     "paramwise_cfg": {"custom_keys": no_decay}})
    our_opt = create_optimizer(ours, lr=1e-4, weight_decay=cfg.weight_decay, decay_norms=cfg.decay_norms,
                               no_decay_keys=cfg.no_decay_keys)
    steps_per_epoch, start = 7330, 490  # COCO train2017's 117,266 images in batches of 16
    hook = StepLrUpdaterHook(step=[27, 33], warmup="linear", warmup_iters=500, warmup_ratio=0.001)
    set_lr = O.mmcv_lr_driver(hook, their_opt, steps_per_epoch, 36)
    schedule = O.fast_forward(schedule_from_config(cfg, our_opt, 1e-4, 36 * steps_per_epoch, steps_per_epoch), start)
    run = O.teacher_forced_trajectory(mm, ours, get_detector("atss").from_mmdet, their_opt, our_opt,
                                      O.multiscale_batches(10) * 2, their_lr=lambda i: set_lr(start + i),
                                      our_schedule=schedule)
    losses, lrs = run["losses"], run["lrs"]
    print(f"losses {losses[0][0]:.4f} -> {losses[-1][0]:.4f}; largest relative difference: loss "
          f"{run['worst_loss']:.1e}, gradient tensor {run['worst_grad'][0]:.1e} ({run['worst_grad'][1]}; median tensor "
          f"at most {max(run['medians']):.1e}), weight tensor after a step {run['worst_weight']:.1e}")
    for theirs_lr, our_lr in lrs:  # every group of each side at one lr, the same on both sides
        assert len(theirs_lr) == len(our_lr) == 1 and min(our_lr) == pytest.approx(min(theirs_lr), rel=1e-12)
    assert lrs[0] != lrs[9] and lrs[10:] == [({1e-4}, {1e-4})] * 10  # warming up, then the peak from iteration 500
    first, second = sum(t for t, _ in losses[:10]), sum(t for t, _ in losses[10:])
    assert second < 0.95 * first  # a real trajectory: the same ten batches score lower the second time round
    assert run["worst_loss"] <= 1e-5
    assert run["worst_grad"][0] <= 1e-3 and max(run["medians"]) <= 1e-5, (run["worst_grad"], max(run["medians"]))
    assert run["worst_weight"] <= 1e-6
