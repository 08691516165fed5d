"""Semantic FPN against the released segmentor run by mmseg 0.14 (whai362/PVTv2-Seg ``fpn_pvtv2_*_ade20k_40k``, BN
in place of SyncBN): the same seeded weights, saved as mmseg saves them and read by ``load_segmentor``, give the same
logits on photos; every released size converts; ``pvtv2 segment`` names ADE20K classes."""

from __future__ import annotations

from types import SimpleNamespace
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


def _training_pair(tmp_path: Any) -> SimpleNamespace:
    """mmseg's released Semantic FPN-B0 (seeded noise) and ours read from its file, each with its optimizer as the
    ``ade20k_40k`` recipe builds it (mmcv's ``build_optimizer`` with the released ``AdamW, lr=1e-4,
    weight_decay=1e-4``; ours ``create_optimizer``), their learning rates set at iteration ``i`` by mmcv's own
    ``PolyLrUpdaterHook`` of the released ``lr_config`` (``set_lr``; poly, power 0.9, min_lr 0, by iteration over 40k)
    and by our recipe's schedule (``schedule``, stepped after each step), both from iteration 10,000 (lr 7.7e-5); the
    batch: two photos, mmseg's Normalize, learnable label maps with an ignored band."""
    from mmcv.runner import build_optimizer
    from mmcv.runner.hooks.lr_updater import PolyLrUpdaterHook

    from pvtv2.engine.optim import create_optimizer, schedule_from_config
    from pvtv2.segmentation import get_recipe
    from pvtv2.segmentation.mmseg import load_mmseg_checkpoint

    name, overrides = "pvt_v2_b0", {"drop_path_rate": 0.0}
    cfg = O.semantic_fpn_config(O.oracle_backbone(name, overrides), O.stage_channels(name))
    theirs = O.build_mmseg(cfg, noise=0.02)
    path = O.save_mmdet_checkpoint(theirs, tmp_path / f"fpn_{name}_ade20k_40k.pth",
                                   config=O.with_backbone(cfg, O.released_backbone(name)), classes=_classes(),
                                   version=f"mmseg_version={O.MMSEG_VERSION}")
    ours, _ = load_mmseg_checkpoint(path, backbone_overrides=overrides)
    recipe = get_recipe("ade20k_40k")
    their_opt = build_optimizer(theirs, {"type": "AdamW", "lr": 1e-4, "weight_decay": 1e-4})
    our_opt = create_optimizer(ours, lr=1e-4, weight_decay=recipe.weight_decay, decay_norms=recipe.decay_norms,
                               no_decay_keys=recipe.no_decay_keys)
    photos = [O.photo("astronaut", (160, 224)), O.photo("chelsea", (160, 224))]
    x = torch.cat([O.preprocess(p)[0] for p in photos])  # (2, 3, 160, 224), mmseg's Normalize
    labels = torch.zeros(2, 1, 160, 224, dtype=torch.long)  # learnable maps: quadrants, then stripes of 5 classes
    labels[0, 0, :80, 112:], labels[0, 0, 80:, :112], labels[0, 0, 80:, 112:] = 7, 12, 20
    labels[1, 0] = torch.arange(160)[:, None] // 32 * 9 + 3
    labels[:, :, :20] = 255  # an ignored band (ADE20K's "other" pixels are ignored)
    metas = [{"img_shape": (160, 224, 3), "ori_shape": (160, 224, 3), "pad_shape": (160, 224, 3), "flip": False}] * 2
    start, total = 10_000, recipe.steps
    assert total == 40_000
    driver = O.mmcv_lr_driver(PolyLrUpdaterHook(power=0.9, min_lr=0.0, by_epoch=False), their_opt, total, 1)
    schedule = O.fast_forward(schedule_from_config(recipe, our_opt, 1e-4, total, total), start)
    theirs.train()
    ours.train()
    return SimpleNamespace(theirs=theirs, ours=ours, their_opt=their_opt, our_opt=our_opt, x=x, labels=labels,
                           metas=metas, set_lr=lambda i: driver(start + i), schedule=schedule)


def _losses(pair: SimpleNamespace, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg's ``decode.loss_seg`` and ours (the trainer's ``pixel_cross_entropy``), ``Dropout2d`` drawing the same
    mask on both sides (the same seed before each forward)."""
    from pvtv2.segmentation.task import pixel_cross_entropy

    torch.manual_seed(step)
    expected = pair.theirs.forward_train(pair.x, pair.metas, pair.labels)["decode.loss_seg"]
    torch.manual_seed(step)
    return expected, pixel_cross_entropy(pair.ours(pair.x), pair.labels[:, 0])


def test_twenty_training_steps_follow_mmsegs(tmp_path: Any) -> None:
    """Twenty AdamW steps of the released optimizer (``lr=1e-4, weight_decay=1e-4``), its learning rate set at every
    step by mmcv's own ``PolyLrUpdaterHook`` of the released ``lr_config`` (iterations 10,000-10,019 of 40k; ours: the
    ``ade20k_40k`` recipe's schedule; every lr equal), on mmseg's ``forward_train`` and on ours (the trainer's
    :func:`~pvtv2.segmentation.task.pixel_cross_entropy`, mmseg 0.14's mean over all pixels), free-running from the
    same weights on the same normalised photos and label maps (an ignored band included), the decode head's
    ``Dropout2d`` drawing the same mask on each side. Measured (2026-12-04, with the poly lrs): the loss falls from
    4.238 to 1.327 and the two curves stay within 2.3e-5 relative at every step; the weights are within 6.3e-6
    relative (median tensor 1.8e-8) after 5 steps, and part further later (median tensor 2.1e-5, largest 8.0e-5
    after 20; at a constant 1e-4: 3.7e-5, 9.0e-6, 1.1e-4, 3.2e-4: AdamW's normalised
    steps move parameters whose gradients lie near zero by their sign, so rounding differences grow), as two runs of
    one library on two CPUs would. Before ``pixel_cross_entropy`` our loss divided by the pixels not ignored: 14% apart
    on this batch."""
    pair = _training_pair(tmp_path)
    theirs, ours, their_opt, our_opt = pair.theirs, pair.ours, pair.their_opt, pair.our_opt
    params = dict(ours.named_parameters())

    def weight_errors() -> list[float]:
        final = from_mmseg(O.mmdet_state_dict(theirs), ours)
        errors = [((params[n] - w).norm() / w.norm().clamp(min=1e-12)).item() for n, w in final.items() if n in params]
        assert len(errors) == len(params) > 100
        return sorted(errors)

    history, lrs = [], []
    for step in range(20):
        pair.set_lr(step)
        lrs.append(({g["lr"] for g in their_opt.param_groups}, {g["lr"] for g in our_opt.param_groups}))
        expected, got = _losses(pair, step)
        history.append((expected.item(), got.item()))
        for opt, loss in ((their_opt, expected), (our_opt, got)):
            opt.zero_grad()
            loss.backward()
            opt.step()
        pair.schedule.step()
        if step == 4:
            after_five = weight_errors()
    rel = [abs(o - t) / t for t, o in history]
    after_twenty = weight_errors()
    print(f"losses {history[0][0]:.4f} -> {history[-1][0]:.4f}, largest relative difference {max(rel):.1e}; weight "
          f"tensors after 5 steps: largest {after_five[-1]:.1e}, median {after_five[len(after_five) // 2]:.1e}; "
          f"after 20: largest {after_twenty[-1]:.1e}, median {after_twenty[len(after_twenty) // 2]:.1e}")
    for theirs_lr, our_lr in lrs:  # every group of each side at one lr, the same on both sides, falling
        assert len(theirs_lr) == len(our_lr) == 1 and min(our_lr) == pytest.approx(min(theirs_lr), rel=1e-12)
    assert min(lrs[0][0]) > min(lrs[-1][0]) > 7e-5
    assert history[-1][0] < 0.5 * history[0][0]  # it trained
    assert max(rel) <= 2e-4, rel
    assert after_five[-1] <= 1e-4 and after_five[len(after_five) // 2] <= 2e-5
    assert after_twenty[len(after_twenty) // 2] <= 2e-3


def test_every_step_of_a_twenty_step_trajectory_equals_mmsegs(tmp_path: Any) -> None:
    """The same twenty steps with ours put on mmseg's weights before every step (teacher forcing, as the detectors'
    trajectory tests): every lr, the loss, every gradient tensor and the weights our AdamW makes from mmseg's
    gradients equal mmseg's at every step, so the free-running curves above part only by accumulated rounding."""
    pair = _training_pair(tmp_path)
    run = O.teacher_forced_trajectory(pair.theirs, pair.ours, from_mmseg, pair.their_opt, pair.our_opt, range(20),
                                      their_lr=pair.set_lr, our_schedule=pair.schedule,
                                      losses_of=lambda theirs, ours, step: tuple(
                                          {"loss": loss} for loss in _losses(pair, step)))
    losses, lrs = run["losses"], run["lrs"]
    print(f"losses {losses[0][0]:.4f} -> {losses[-1][0]:.4f}; largest relative difference: loss "
          f"{run['worst_loss']:.1e}, gradient tensor {run['worst_grad'][0]:.1e} ({run['worst_grad'][1]}; median tensor "
          f"at most {max(run['medians']):.1e}), weight tensor after a step {run['worst_weight']:.1e}")
    for theirs_lr, our_lr in lrs:
        assert len(theirs_lr) == len(our_lr) == 1 and min(our_lr) == pytest.approx(min(theirs_lr), rel=1e-12)
    assert losses[-1][0] < 0.5 * losses[0][0]
    assert run["worst_loss"] <= 1e-5
    assert run["worst_grad"][0] <= 1e-3 and max(run["medians"]) <= 1e-5, (run["worst_grad"], max(run["medians"]))
    assert run["worst_weight"] <= 1e-5
