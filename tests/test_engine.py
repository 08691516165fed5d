"""The task-agnostic engine: checkpoints + RNG, guards, metrics, optimizer and schedule, EMA, precision."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from pvtv2.engine import (
    InterruptGuard,
    LRSchedule,
    MetricsLogger,
    Precision,
    RunDir,
    Stepper,
    TrainState,
    capture_rng_state,
    create_ema,
    create_optimizer,
    load_checkpoint,
    param_groups,
    restore_rng_state,
    save_checkpoint,
    scale_lr,
)
from pvtv2.errors import CheckpointError, TrainingError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x)) + self.pos_embed

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_rng_state_round_trip_is_weights_only_loadable(tmp_path):
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    a = _draws()
    restore_rng_state(loaded)
    b = _draws()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = Tiny()
    opt = create_optimizer(model, lr=0.1, weight_decay=0.05)
    sched = LRSchedule(opt, total_steps=10, warmup_steps=2, warmup_lr=0.01, min_lr=0.001)
    ema = create_ema(model, decay=0.9)
    stepper = Stepper(model, opt, sched, Precision.resolve("fp32", "cpu"), clip_grad=1.0, ema=ema)
    return model, opt, sched, ema, stepper


def _train(stepper: Stepper, model: nn.Module, steps: range) -> None:
    for _ in steps:
        x = torch.randn(8, 4)  # drawn from the global RNG: restored on resume
        stepper.step(model(x).pow(2).mean())


def test_checkpoint_resume_is_exact(tmp_path):
    model, opt, sched, ema, stepper = _setup()
    _train(stepper, model, range(6))
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    ref_ema = {k: v.clone() for k, v in ema.state_dict().items()}

    model, opt, sched, ema, stepper = _setup()
    _train(stepper, model, range(3))
    path = save_checkpoint(tmp_path / "last.pth", model=model, optimizer=opt, scheduler=sched, ema=ema,
                           scaler=stepper.scaler, state=TrainState(epoch=1, epoch_step=3, step=3),
                           config={"size": (32, 32), "out": tmp_path})
    assert torch.load(path, weights_only=True)["config"]["size"] == [32, 32]
    _draws()  # disturb every generator: the checkpoint must bring them back

    model, opt, sched, ema, stepper = _setup(seed=123)
    state = load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, ema=ema, scaler=stepper.scaler)
    assert (state.epoch, state.epoch_step, state.step) == (1, 3, 3)
    assert sched.last_epoch == 3
    _train(stepper, model, range(3, 6))
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    for k, v in ema.state_dict().items():
        assert torch.equal(v, ref_ema[k]), k


def test_resume_from_weights_file_is_refused(tmp_path):
    torch.save(Tiny().state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="--weights instead of --resume"):
        load_checkpoint(tmp_path / "w.pth", model=Tiny())


def test_training_checkpoint_is_a_weights_file_for_load_weights(tmp_path):
    from pvtv2 import create_model, load_weights

    model = create_model("pvt_v2_b0", num_classes=3, depths=(1, 1, 1, 1))
    save_checkpoint(tmp_path / "c.pth", model=model, state=TrainState())
    other = create_model("pvt_v2_b0", num_classes=3, depths=(1, 1, 1, 1))
    load_weights(other, tmp_path / "c.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_param_groups_skip_norms_biases_and_embeddings():
    groups = param_groups(Tiny(), weight_decay=0.05)
    decayed = [g for g in groups if g["weight_decay"] > 0]
    assert len(decayed) == 1 and len(decayed[0]["params"]) == 1  # fc.weight only
    assert sum(len(g["params"]) for g in groups) == 5
    assert scale_lr(5e-4, 1024) == pytest.approx(1e-3)
    everything = param_groups(Tiny(), weight_decay=0.05, decay_norms=True)
    assert len(everything) == 1 and everything[0]["weight_decay"] == 0.05
    keyed = param_groups(Tiny(), weight_decay=0.05, no_decay_keys=("norm",))  # mmdet's custom_keys: by name only
    assert [len(g["params"]) for g in keyed if g["weight_decay"] == 0] == [2]  # norm.weight, norm.bias; fc.bias decays


def test_lr_schedule_warmup_cosine_and_state():
    opt = torch.optim.AdamW(Tiny().parameters(), lr=1e-3)
    sched = LRSchedule(opt, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(100):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone after warm-up
    assert set(sched.state_dict()) >= {"last_epoch", "base_lrs"}
    poly = LRSchedule(torch.optim.SGD(Tiny().parameters(), lr=1.0), total_steps=10, kind="poly", power=1.0)
    assert poly.factor(5) == pytest.approx(0.5)
    step = LRSchedule(torch.optim.SGD(Tiny().parameters(), lr=1.0), total_steps=12, kind="step", milestones=[8, 11])
    assert [step.factor(s) for s in (7, 8, 11)] == pytest.approx([1.0, 0.1, 0.01])


def test_guard_stops_on_nan_naming_the_last_checkpoint():
    guard = InterruptGuard(last_checkpoint="runs/x/last.pth")
    assert guard.check(torch.tensor(1.0)).stop is False
    with pytest.raises(TrainingError, match="loss became nan at epoch 2.*runs/x/last.pth"):
        guard.check(torch.tensor(float("nan")), where="epoch 2 step 5")
    with pytest.raises(TrainingError, match="inf"):
        guard.check(torch.tensor(float("inf")))


@pytest.mark.parametrize("before", [signal.SIG_IGN, "custom"])
def test_guard_turns_sigint_into_a_stop_flag_and_restores_the_handler_it_found(before):
    """Also when the suite runs with SIGINT ignored (``nohup make test &``, background CI jobs)."""
    handler = (lambda *_: None) if before == "custom" else before
    previous = signal.signal(signal.SIGINT, handler)
    try:
        with InterruptGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert guard.check(torch.tensor(0.5)).stop is True
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun's SIGTERM after the terminal's SIGINT: ignored
            with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C aborts at once
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_metrics_files_and_curves(tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.write_config({"model": "pvt_v2_b0", "size": (32, 32)})
    log = MetricsLogger(run)
    for e in range(3):
        log.log({"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_top1": 50.0 + e})
    png = log.plot({"loss": ["train_loss"], "accuracy (%)": ["val_top1"]})
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "run/config.json").read_text())["size"] == [32, 32]
    assert len((tmp_path / "run/metrics.csv").read_text().splitlines()) == 4
    resumed = MetricsLogger(run, resume=True)
    resumed.log({"epoch": 2, "train_loss": 0.4})  # a resume from epoch 1 replaces epochs 2 and 3
    assert [r["epoch"] for r in resumed.records] == [1, 2]
    assert not list(tmp_path.glob("run/.*.tmp"))


def test_precision_rules():
    assert Precision.resolve("auto", "cpu").name == "fp32"
    assert not Precision.resolve("bf16", "cpu").grad_scaler().is_enabled()
    with pytest.raises(TrainingError, match="CUDA"):
        Precision.resolve("fp16", "cpu")
    with Precision.resolve("bf16", "cpu").autocast():
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.bfloat16


def test_native_precision_is_bf16_only_on_cpus_that_have_it(monkeypatch):
    """``native``: bf16 autocast where the CPU computes bf16 natively, fp32 where it would be emulated."""
    import pvtv2.engine.amp as amp

    for has_bf16, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(amp, "native", lambda precision, device, has=has_bf16: has)
        assert Precision.resolve("native", "cpu").name == expected
    with pytest.raises(TrainingError, match="native"):
        Precision.resolve("fastest", "cpu")


def test_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    from pvtv2._io import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "config.json", "{}")
        assert (path.stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (atomic_write_text(tmp_path / "private.json", "{}").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_full_disk_keeps_the_previous_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch):
    import errno
    import shutil

    from pvtv2 import _io

    model, opt, sched, ema, stepper = _setup()
    first = save_checkpoint(tmp_path / "last.pth", model=model, optimizer=opt, state=TrainState(step=1))
    before = first.read_bytes()
    real_save = torch.save

    def full(obj, f, *args, **kwargs):  # the disk fills up half way through the write
        with open(f, "wb") as fh:
            fh.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(_io.OutOfSpace, match=r"no space left to write .*last.pth \(about .* MB needed, .* MB free"):
        save_checkpoint(tmp_path / "last.pth", model=model, optimizer=opt, state=TrainState(step=2))
    assert first.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))  # intact, nothing half-written
    monkeypatch.setattr(torch, "save", real_save)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(_io.shutil, "disk_usage", lambda p: usage._replace(free=10))  # refused before writing
    with pytest.raises(_io.OutOfSpace, match="0.0 MB free"):
        save_checkpoint(tmp_path / "last.pth", model=model, optimizer=opt, state=TrainState(step=2))
    assert first.read_bytes() == before


def test_best_is_a_snapshot_that_costs_no_space_and_survives_the_next_last(tmp_path, monkeypatch):
    from pvtv2 import _io
    from pvtv2._io import atomic_copy

    model, opt, *_ = _setup()
    last = save_checkpoint(tmp_path / "last.pth", model=model, optimizer=opt, state=TrainState(step=1))
    best = atomic_copy(last, tmp_path / "best.pth")
    assert best.stat().st_ino == last.stat().st_ino  # a hard link, not a second copy
    kept = best.read_bytes()
    save_checkpoint(last, model=model, optimizer=opt, state=TrainState(step=2))  # the next last.pth
    assert best.read_bytes() == kept and last.read_bytes() != kept
    assert best.stat().st_ino != last.stat().st_ino

    def no_links(src, dst):  # e.g. a file system without hard links: a real copy instead
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(_io.os, "link", no_links)
    atomic_copy(last, best)
    assert best.read_bytes() == last.read_bytes() and best.stat().st_ino != last.stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]  # no temporary left behind


def test_loader_workers_default_to_the_usable_cpus(monkeypatch) -> None:
    """`pvtv2 eval` on a 2-core machine used to start 4 workers (torch warned); the default follows the CPUs."""
    import os

    from pvtv2.engine.sampling import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert loader_workers() == 2 and loader_workers(0) == 0 and loader_workers(6) == 6
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader_workers() == 4 and loader_workers(most=8) == 8


def test_the_three_tasks_name_their_backbone_fields_alike() -> None:
    """``backbone``, ``backbone_weights``, ``backbone_overrides`` in every task's config; classification's earlier
    names (``model``, ``weights``, ``model_overrides``) still read from older checkpoints, ``replace`` and the CLI."""
    import argparse
    import dataclasses

    from pvtv2.classification import ClassificationConfig
    from pvtv2.cli.options import add_config_options, given_options
    from pvtv2.detection import DetectionConfig
    from pvtv2.segmentation import SegmentationConfig

    shared = {"backbone", "backbone_weights", "backbone_overrides"}
    for cls in (ClassificationConfig, DetectionConfig, SegmentationConfig):
        assert shared <= {f.name for f in dataclasses.fields(cls)}, cls.__name__
    old = ClassificationConfig.from_dict({"model": "pvt_v2_b1", "weights": "official",
                                          "model_overrides": {"depths": [1, 1, 1, 1]}})  # a 0.1 checkpoint's config
    assert (old.backbone, old.backbone_weights) == ("pvt_v2_b1", "official")
    assert list(old.backbone_overrides["depths"]) == [1, 1, 1, 1]
    assert ClassificationConfig().replace(model="pvt_v2_b2").backbone == "pvt_v2_b2"
    parser = argparse.ArgumentParser()
    add_config_options(parser, ClassificationConfig())
    for flags in (["--model", "pvt_v2_b1", "--weights", "x.pth"],
                  ["--backbone", "pvt_v2_b1", "--backbone-weights", "x.pth"]):
        given = given_options(parser.parse_args(flags), ClassificationConfig())
        assert given == {"backbone": "pvt_v2_b1", "backbone_weights": "x.pth"}, flags
