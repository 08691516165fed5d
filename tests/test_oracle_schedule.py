"""The released training recipes' optimisation, step for step against mmcv 1.3 itself: the learning rate of every
step (mmcv's ``StepLrUpdaterHook`` / ``PolyLrUpdaterHook`` driven as its runner drives them, beside our recipes'
:func:`~pvtv2.engine.optim.schedule_from_config`), and which parameters get weight decay (mmcv's
``build_optimizer`` with the released ``optimizer`` / ``paramwise_cfg`` on mmdet's detector, beside our
``create_optimizer`` on ours). The mmcv settings below are the released configs' (``_base_/schedules`` of mmdet 2.13
and mmseg 0.14, and the PVT v2 detection configs' ``optimizer``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mmdet_oracle as O
from pvtv2.detection import build_detector
from pvtv2.detection import get_recipe as det_recipe
from pvtv2.engine.optim import create_optimizer, schedule_from_config
from pvtv2.segmentation import get_recipe as seg_recipe

LR = 1e-4


def _mmcv_lrs(hook: Any, epochs: int, steps_per_epoch: int) -> list[float]:
    """The lr of every step as mmcv's ``EpochBasedRunner`` / ``IterBasedRunner`` calls the hook."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    set_lr = O.mmcv_lr_driver(hook, opt, steps_per_epoch, epochs)
    lrs = []
    for i in range(epochs * steps_per_epoch):
        set_lr(i)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def _our_lrs(cfg: Any, total: int, steps_per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = schedule_from_config(cfg, opt, LR, total, steps_per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return lrs


@pytest.mark.parametrize(("recipe", "epochs", "steps"), [("1x", 12, [8, 11]), ("3x", 36, [27, 33])])
def test_detection_step_schedules_equal_mmcvs(recipe: str, epochs: int, steps: list[int]) -> None:
    """``lr_config = dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001, step=...)``."""
    from mmcv.runner.hooks.lr_updater import StepLrUpdaterHook

    steps_per_epoch = 250  # >= 42: our warm-up is capped at a fifth of a (test-sized) run, mmcv's is not
    cfg = det_recipe(recipe)
    assert cfg.epochs == epochs
    hook = StepLrUpdaterHook(step=steps, warmup="linear", warmup_iters=500, warmup_ratio=0.001)
    expected = _mmcv_lrs(hook, epochs, steps_per_epoch)
    got = _our_lrs(cfg, epochs * steps_per_epoch, steps_per_epoch)
    assert len(got) == len(expected) == epochs * steps_per_epoch
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-12 * LR
    assert expected[0] == pytest.approx(LR * 1e-3) and expected[-1] == pytest.approx(LR * 1e-2)  # a real schedule


def test_segmentation_poly_schedule_equals_mmcvs() -> None:
    """``lr_config = dict(policy='poly', power=0.9, min_lr=0.0, by_epoch=False)`` over 40k iterations."""
    from mmcv.runner.hooks.lr_updater import PolyLrUpdaterHook

    cfg = seg_recipe("ade20k_40k")
    total = cfg.steps
    hook = PolyLrUpdaterHook(power=0.9, min_lr=0.0, by_epoch=False)
    expected = _mmcv_lrs(hook, 1, total)
    got = _our_lrs(cfg, total, total)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-12 * LR


def _decay_of(opt: torch.optim.Optimizer) -> dict[float, int]:
    """Parameter elements per weight decay value."""
    out: dict[float, int] = {}
    for group in opt.param_groups:
        out[group["weight_decay"]] = out.get(group["weight_decay"], 0) + sum(p.numel() for p in group["params"])
    return out


@pytest.mark.parametrize("recipe", ["1x", "3x_mstrain"])
def test_weight_decay_groups_equal_mmcvs(recipe: str) -> None:
    """1x: ``optimizer = dict(type='AdamW', lr=0.0001, weight_decay=0.0001)`` (every parameter decayed); 3x_mstrain:
    ``weight_decay=0.05`` with ``paramwise_cfg=dict(custom_keys={'absolute_pos_embed': dict(decay_mult=0.),
    'relative_position_bias_table': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)})``."""
    from mmcv.runner import build_optimizer

    cfg = det_recipe(recipe)
    mm_cfg = {"type": "AdamW", "lr": LR, "weight_decay": cfg.weight_decay}
    if recipe == "3x_mstrain":
        mm_cfg["paramwise_cfg"] = {"custom_keys": {k: {"decay_mult": 0.0} for k in
                                                   ("absolute_pos_embed", "relative_position_bias_table", "norm")}}
    theirs = O.build_mmdet(O.retinanet_config(O.oracle_backbone("pvt_v2_b0"), O.stage_channels("pvt_v2_b0")))
    ours = build_detector("retinanet", backbone="pvt_v2_b0")
    expected = _decay_of(build_optimizer(theirs, mm_cfg))
    got = _decay_of(create_optimizer(ours, lr=LR, weight_decay=cfg.weight_decay, decay_norms=cfg.decay_norms,
                                     no_decay_keys=cfg.no_decay_keys))
    assert got == expected
    assert (0.0 in expected) == (recipe == "3x_mstrain")  # the custom keys do exclude the norms
