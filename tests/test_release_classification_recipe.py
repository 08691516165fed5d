"""The ImageNet recipe against what the released ``classification/main.py`` builds from its default arguments.

The release (whai362/PVT, ``classification/main.py`` and ``configs/pvt_v2/*.py``; timm 0.3.2) builds, for 8 GPUs x
128 images: ``args.lr = 5e-4 * 1024 / 512``; ``create_optimizer(args, model)``: AdamW, eps 1e-8, default betas,
weight decay 0.05 except on 1-D parameters, ``*.bias`` and ``model.no_weight_decay()``; ``create_scheduler(args,
optimizer)``: ``CosineLRScheduler(t_initial=300, lr_min=1e-5, warmup_lr_init=1e-6, warmup_t=5, cycle_limit=1,
t_in_epochs=True)``, stepped with ``lr_scheduler.step(epoch)`` after each epoch; ``Mixup(0.8, 1.0, prob 1.0,
switch 0.5, "batch", smoothing 0.1)``; drop path 0.1 (B0-B2) / 0.3 (B3-B5), gradient clipping 1.0 for B3-B5 only.
timm's own classes are the oracle here (its cosine scheduler and weight-decay grouping compute what 0.3.2's did for
these arguments: the same formula with ``k_decay=1``, the same ``ndim <= 1 or .bias or listed`` rule).

Where ours deliberately differs, a test below names the difference and measures it:
1. the learning rate changes every step (the release changes it once per epoch);
2. the release runs epoch ``e`` at its scheduler's value for ``e - 1`` (``step(epoch)`` is called *after* epoch
   ``e``, and the constructor already set the warm-up start), so its epochs 0 and 1 both run at 1e-6; ours does not lag;
3. our cosine spans the 295 epochs after the warm-up, the release's all 300 (``warmup_prefix=False``).
"""

from __future__ import annotations

import math

import pytest
import torch

from pvtv2 import create_model
from pvtv2.classification import get_recipe
from pvtv2.classification.recipes import CLIP_GRAD
from pvtv2.classification.transforms import AugmentConfig, mixup_fn
from pvtv2.engine.optim import create_optimizer, schedule_from_config

EPOCHS, WARMUP = 300, 5
STEPS_PER_EPOCH = 1251  # 1,281,167 ImageNet images, DeiT's repeated-augmentation sampler, 8 x 128 per step
RELEASED_NO_DECAY = {"pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4", "cls_token"}  # pvt_v2.py


def _released_lr_per_epoch(lr: float) -> tuple[list[float], list[float]]:
    """(the lr each epoch runs at in main.py's loop, the scheduler's own value for each epoch)."""
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = CosineLRScheduler(opt, t_initial=EPOCHS, lr_min=1e-5, cycle_mul=1.0, cycle_decay=0.1, cycle_limit=1,
                              warmup_t=WARMUP, warmup_lr_init=1e-6, t_in_epochs=True, noise_range_t=None)
    ran = []
    for epoch in range(EPOCHS):  # main.py: train_one_epoch(...); lr_scheduler.step(epoch)
        ran.append(opt.param_groups[0]["lr"])
        sched.step(epoch)
    return ran, [sched._get_lr(e)[0] for e in range(EPOCHS)]


def _ours(lr: float):
    cfg = get_recipe("imagenet")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return schedule_from_config(cfg, opt, lr, EPOCHS * STEPS_PER_EPOCH, STEPS_PER_EPOCH), opt


def test_learning_rate_and_batch_are_the_releases() -> None:
    cfg = get_recipe("imagenet")
    assert cfg.batch_size == 8 * 128 and cfg.epochs == EPOCHS and cfg.warmup_epochs == WARMUP
    assert cfg.base_lr * cfg.batch_size / cfg.base_batch == pytest.approx(5e-4 * 1024 / 512)
    lr = 1e-3
    assert lr * cfg.warmup_ratio == pytest.approx(1e-6) and lr * cfg.min_lr_ratio == pytest.approx(1e-5)
    assert cfg.weight_decay == 0.05 and cfg.clip_grad is None and cfg.repeated_aug == 3
    assert CLIP_GRAD == {"pvt_v2_b3": 1.0, "pvt_v2_b4": 1.0, "pvt_v2_b5": 1.0}  # configs/pvt_v2/pvt_v2_b{3,4,5}.py


def test_warm_up_equals_the_releases_at_every_epoch_start_and_runs_between_them() -> None:
    """Difference 1: per step. At the first step of each warm-up epoch ours equals the scheduler's value for that
    epoch; in between it rises linearly to the next epoch's value (the release holds it for the whole epoch), and it
    reaches the peak at epoch 5 (the release's epoch 5 is already on its cosine: difference 3)."""
    lr = 1e-3
    _, value = _released_lr_per_epoch(lr)
    schedule, opt = _ours(lr)
    for step in range((WARMUP + 1) * STEPS_PER_EPOCH):  # every step of the first six epochs, driven as the trainer does
        epoch, k = divmod(step, STEPS_PER_EPOCH)
        got = opt.param_groups[0]["lr"]
        if k == 0:
            assert got == pytest.approx(value[epoch] if epoch < WARMUP else lr, rel=1e-9), epoch
        elif epoch < WARMUP:
            end = value[epoch + 1] if epoch + 1 < WARMUP else lr
            expected = value[epoch] + (end - value[epoch]) * k / STEPS_PER_EPOCH
            assert got == pytest.approx(expected, rel=1e-9), step
        opt.step()
        schedule.step()


def test_the_releases_one_epoch_lag_is_named() -> None:
    """Difference 2: the release runs epoch e at its scheduler's value for e - 1 (two epochs at 1e-6)."""
    ran, value = _released_lr_per_epoch(1e-3)
    assert ran[0] == ran[1] == pytest.approx(1e-6)
    assert all(ran[e] == pytest.approx(value[e - 1], rel=1e-12) for e in range(1, EPOCHS))


def test_cosine_after_the_warm_up_is_within_two_percent_of_the_releases() -> None:
    """Difference 3: our cosine starts after the warm-up (295 epochs), the release's at epoch 0 (300 epochs). The
    measured gap, epoch by epoch against the scheduler's value, is at most 1.5% of the peak lr (mid-run), and both end
    at 1e-5 (this bound fails if either curve's shape, peak or floor changes)."""
    lr = 1e-3
    _, value = _released_lr_per_epoch(lr)
    schedule, _ = _ours(lr)
    ours = [lr * schedule.factor(e * STEPS_PER_EPOCH) for e in range(EPOCHS)]
    gap = max(abs(a - b) for a, b in zip(ours, value, strict=True)) / lr
    assert 0.01 < gap < 0.02  # 0.0151 measured: a real difference, and a small one
    assert ours[WARMUP] == pytest.approx(lr) and value[WARMUP] == pytest.approx(
        1e-5 + (lr - 1e-5) * 0.5 * (1 + math.cos(math.pi * WARMUP / EPOCHS)))
    assert lr * schedule.factor(EPOCHS * STEPS_PER_EPOCH) == pytest.approx(1e-5)
    assert value[-1] == pytest.approx(1e-5, rel=2e-2)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_weight_decay_groups_equal_timms_create_optimizer(name: str) -> None:
    from timm.optim import param_groups_weight_decay

    model = create_model(name)
    ours = create_optimizer(model, lr=1e-3, weight_decay=0.05)
    released = param_groups_weight_decay(model, 0.05, no_weight_decay_list=RELEASED_NO_DECAY)
    names = {id(p): n for n, p in model.named_parameters()}

    def by_decay(groups) -> dict[float, set[str]]:
        out: dict[float, set[str]] = {}
        for g in groups:
            out.setdefault(float(g["weight_decay"]), set()).update(names[id(p)] for p in g["params"])
        return out

    mine, theirs = by_decay(ours.param_groups), by_decay(released)
    assert {k: v for k, v in mine.items() if v} == theirs
    assert len(theirs[0.0]) > 50 and len(theirs[0.05]) > 20  # both groups are real
    assert all(g["eps"] == 1e-8 and g["betas"] == (0.9, 0.999) and g["lr"] == 1e-3 for g in ours.param_groups)


def test_mixup_is_timms_with_the_released_arguments() -> None:
    from timm.data import Mixup

    m = mixup_fn(get_recipe("imagenet").aug, 1000)
    ref = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5, mode="batch",
                label_smoothing=0.1, num_classes=1000)
    assert type(m) is Mixup and vars(m) == vars(ref)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    import numpy as np

    np.random.seed(0)
    a = m(x.clone(), y)
    np.random.seed(0)
    b = ref(x.clone(), y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert AugmentConfig().smoothing == 0.1 and AugmentConfig().interpolation == "bicubic"
