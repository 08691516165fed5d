"""The one trainer's promises, tested once for every task (classification, detection, segmentation):

- a run killed with SIGKILL mid-epoch and resumed from its last.pth ends with bit-identical weights;
- Ctrl-C finishes the step, writes a resumable checkpoint, and the resumed run is bit-identical too;
- a NaN loss stops the run before it touches the weights and names the last good checkpoint;
- two gloo processes under torchrun equal one process with the same global batch;
- a full disk stops with one line and keeps the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from test_detection_data import write_coco

from pvtv2.classification import ClassificationTask, get_recipe as cls_recipe
from pvtv2.cli import main as cli
from pvtv2.detection import DETECTORS, DetectionTask, get_recipe as det_recipe
from pvtv2.engine import Interrupted, read_train_checkpoint, train
from pvtv2.errors import CheckpointError, TrainingError
from pvtv2.segmentation import SegmentationTask, get_recipe as seg_recipe

TINY = "depths=1,1,1,1"
COMMON = ["--threads", "1", "--workers", "0", "--no-progress", "--seed", "3"]


@dataclass
class Case:
    """One task, sized to take a second or two per run on one thread."""

    name: str
    make_task: Callable[[Any], Any]
    base: Any  # the recipe
    changes: dict[str, Any]  # tiny sizes
    cli: list[str]  # the same as command-line arguments
    tol: float  # torchrun equality tolerance

    def cfg(self, **kw: Any) -> Any:
        return self.base.replace(**{**self.changes, **kw})


def _case(name: str, tmp: Path) -> Case:
    if name == "cls":
        ch = dict(train_subset=64, val_subset=32, batch_size=8, epochs=2, model_overrides={"depths": (1, 1, 1, 1)},
                  threads=1, seed=3)
        args = ["train", "--train-subset", "64", "--val-subset", "32", "--batch-size", "8", "--epochs", "2",
                "--model-overrides", TINY]
        return Case(name, ClassificationTask, cls_recipe("fashion_mnist"), ch, args, 1e-5)
    if name == "det":
        data = str(write_coco(tmp / "coco", n=4))
        ch = dict(data=data, val_data=data, batch_size=2, epochs=2, train_sizes=(64,), max_size=96, test_size=64,
                  warmup_steps=0, backbone_overrides={"depths": (1, 1, 1, 1)}, workers=0, threads=1, seed=3)
        args = ["det", "train", "--recipe", "1x", "--data", data, "--val-data", data, "--batch-size", "2",
                "--epochs", "2", "--train-sizes", "64", "--max-size", "96", "--test-size", "64", "--warmup-steps", "0",
                "--backbone-overrides", TINY]
        return Case(name, DetectionTask, det_recipe("1x"), ch, args, 1e-4)
    images, masks = _seg_folder(tmp / "seg")  # every pixel labelled: per-process loss means = the global mean
    ch = dict(data=images, masks=masks, num_classes=4, val_data=images, batch_size=2, steps=6, eval_every=3,
              crop_size=64, scale=(256, 64), ratio_range=(1.0, 1.0), test_scale=(256, 64),
              backbone_overrides={"depths": (1, 1, 1, 1)}, workers=0, threads=1, seed=3, head_norm="gn")
    args = ["seg", "train", "--recipe", "ade20k_40k", "--data", images, "--masks", masks, "--num-classes", "4",
            "--val-data", images,
            "--batch-size", "2", "--steps", "6", "--eval-every", "3", "--crop-size", "64", "--scale", "256", "64",
            "--ratio-range", "1", "1", "--test-scale", "256", "64", "--head-norm", "gn", "--backbone-overrides", TINY]
    return Case(name, SegmentationTask, seg_recipe("ade20k_40k"), ch, args, 1e-4)


def _seg_folder(root: Path, n: int = 4) -> tuple[str, str]:
    """Images (80 x 96) with a lighter rectangle per class 1..3 and their label masks (no ignored pixel)."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = np.zeros((80, 96), dtype=np.uint8)
        for c in (1, 2, 3):
            y, x = rng.integers(0, 50), rng.integers(0, 60)
            mask[y : y + 30, x : x + 36] = c
        pixels = (rng.integers(0, 40, (80, 96, 3)) + 60 * mask[..., None]).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return str(root / "images"), str(root / "masks")


@pytest.fixture(params=["cls", "det", "seg"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    return _case(request.param, tmp_path)


@pytest.fixture(autouse=True)
def _restore_threads():
    """train() sets the process's CPU threads (as a CLI run should); give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _env() -> dict[str, str]:
    # passive OpenMP waits: spinning threads make a busy machine many times slower (see docs/classification.md)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PVTV2_OFFLINE="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_train_checkpoint(path)["model"]


def _identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, different[:5]


def test_sigkill_then_resume_is_bit_identical(case: Case, tmp_path: Path) -> None:
    args = [*case.cli, *COMMON, "--ckpt-every", "1"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pvtv2", *args, "--out", str(killed)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last, deadline = killed / "last.pth", time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert last.exists(), err[-2000:]
    killed_at = read_train_checkpoint(last)
    step = killed_at["step"]
    ref = train(case.make_task(case.cfg()), out=tmp_path / "ref", progress=False)
    assert 1 <= step < ref.steps  # killed mid-run
    assert cli([*case.cli[: 2 if case.name != "cls" else 1], "--resume", str(last), "--threads", "1",
                "--no-progress"]) == 0
    assert read_train_checkpoint(last)["step"] == ref.steps
    _identical(ref.checkpoint, last)
    records = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # no duplicate after the resume
    # the run's clocks go on from the killed part's: minutes across sessions add up
    assert 0 < killed_at["run_seconds"] < records[-1]["run_minutes"] * 60
    assert 0 < killed_at["cpu_seconds"] < records[-1]["cpu_minutes"] * 60


def test_ctrl_c_checkpoints_the_step_and_resumes_exactly(case: Case, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from pvtv2.engine import loop

    real_step, calls = loop.Stepper.step, []

    def step(self: Any, loss: torch.Tensor) -> Any:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 2: seen at the next step's check
        return real_step(self, loss)

    ref = train(case.make_task(case.cfg()), out=tmp_path / "ref", progress=False)
    monkeypatch.setattr(loop.Stepper, "step", step)
    with pytest.raises(Interrupted, match="resume with --resume"):
        train(case.make_task(case.cfg()), out=tmp_path / "run", progress=False)
    assert read_train_checkpoint(tmp_path / "run/last.pth")["step"] == 3  # step 3 finished, then saved
    monkeypatch.setattr(loop.Stepper, "step", real_step)
    result = train(case.make_task(case.cfg()), resume=tmp_path / "run/last.pth", progress=False)
    assert result.run_dir == tmp_path / "run" and result.steps == ref.steps
    _identical(ref.checkpoint, result.checkpoint)


def test_nan_stops_and_keeps_the_last_good_checkpoint(case: Case, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pvtv2.engine import loop

    real_step, calls = loop.Stepper.step, []

    def step(self: Any, loss: torch.Tensor) -> Any:
        calls.append(1)
        out = real_step(self, loss)
        if len(calls) == 3:  # poison the weights after step 3: the loss of step 4 is NaN
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return out

    monkeypatch.setattr(loop.Stepper, "step", step)
    # caught by the next loss (step 4), or by the checkpoint of step 3 (segmentation evaluates there)
    with pytest.raises(TrainingError, match=r"(loss became nan at step 4 |weights became non-finite .* by step 3)"
                                            r".*last good checkpoint is .*last.pth"):
        train(case.make_task(case.cfg(ckpt_every=2)), out=tmp_path / "run", progress=False)
    state = read_train_checkpoint(tmp_path / "run/last.pth")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_two_gloo_processes_equal_one(case: Case, tmp_path: Path) -> None:
    no_noise = ["--stop-after", "3"]  # drop path / dropout draw per process: switch them off
    if case.name == "cls":
        no_noise += ["--drop-path", "0"]
    else:
        no_noise += ["--backbone-overrides", "drop_path_rate=0.0"] + (["--head-dropout", "0"] if case.name == "seg"
                                                                       else [])
    args = [*case.cli, *COMMON, *no_noise]
    assert cli([*args, "--out", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "pvtv2",
           *args, "--out", str(tmp_path / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one_w, two_w = _weights(tmp_path / "one/last.pth"), _weights(tmp_path / "two/last.pth")
    for k, v in one_w.items():
        torch.testing.assert_close(two_w[k], v, rtol=case.tol, atol=case.tol, msg=k)
    ckpt = read_train_checkpoint(tmp_path / "two/last.pth")
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 2  # every rank's RNG state, written once by rank 0
    config = json.loads((tmp_path / "two/config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and config["batch_size"] == case.cfg().batch_size
    assert not list((tmp_path / "two").glob(".*.tmp"))


def test_full_disk_stops_in_one_line_keeping_the_last_checkpoint(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    case = _case("cls", tmp_path)
    real_save, calls = torch.save, []

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError) as info:
        train(case.make_task(case.cfg()), out=tmp_path / "run", progress=False)
    msg = str(info.value)
    assert "no space left to write" in msg and "MB free" in msg and "\n" not in msg
    assert f"the last good checkpoint {tmp_path / 'run/last.pth'} is intact" in msg and "--resume" in msg
    assert read_train_checkpoint(tmp_path / "run/last.pth")["step"] == 8  # epoch 1's checkpoint survived


# Fewer RoIs / proposals than the released settings: seconds, not minutes, per CPU step.
SMALL_OPTIONS = {
    "mask_rcnn": {"rpn_post_nms_top_n_train": 64, "rpn_post_nms_top_n_test": 32, "box_batch_size_per_image": 32},
    "cascade_mask_rcnn": {"rpn_post_nms_top_n_train": 64, "rpn_post_nms_top_n_test": 32,
                          "box_batch_size_per_image": 32},
    "sparse_rcnn": {"num_proposals": 16, "detections_per_img": 16},
}


@pytest.mark.parametrize("arch", sorted(DETECTORS))
def test_every_registered_detector_trains_resumes_exactly_and_evaluates(arch: str, tmp_path: Path) -> None:
    case = _case("det", tmp_path)
    cfg = case.cfg(arch=arch, epochs=None, steps=2, eval_every=2, detector_options=SMALL_OPTIONS.get(arch, {}))
    ref = train(case.make_task(cfg), out=tmp_path / "ref", progress=False)
    assert {"bbox_AP", "bbox_AP50"} <= set(ref.metrics) and (tmp_path / "ref/predictions.png").is_file()
    stopped = train(case.make_task(cfg.replace(stop_after=1)), out=tmp_path / "run", progress=False)
    assert stopped.stopped and read_train_checkpoint(stopped.checkpoint)["step"] == 1
    resumed = train(case.make_task(cfg), resume=stopped.checkpoint, progress=False)
    assert resumed.steps == 2 and resumed.metrics == ref.metrics
    _identical(ref.checkpoint, resumed.checkpoint)


def test_a_new_run_never_replaces_a_finished_one(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every task's CLI: a second run into a folder holding a run is refused in one line (the first run intact);
    --overwrite replaces it; --resume is still welcome."""
    out = tmp_path / "run"
    assert cli([*case.cli, *COMMON, "--out", str(out)]) == 0
    before = {name: (out / name).read_bytes() for name in ("last.pth", "metrics.jsonl", "config.json")}
    capsys.readouterr()
    assert cli([*case.cli, *COMMON, "--out", str(out), "--seed", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "--resume" in err[0] and "--overwrite" in err[0], err
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing of the first run touched
    assert cli([*case.cli, *COMMON, "--out", str(out), "--seed", "4", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 4
    assert (out / "last.pth").read_bytes() != before["last.pth"]


def test_a_run_directory_in_use_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    from pvtv2.engine.run_guard import claim_run_dir

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pvtv2.engine.run_guard import claim_run_dir\n"
         f"with claim_run_dir({str(out)!r}):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match=rf"in use by another training process \(pid {holder.pid}\)"):
            with claim_run_dir(out):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs in the holder
        holder.wait()
    with claim_run_dir(out) as path:  # the kernel dropped the dead process's lock
        assert path == out
    # a second process under torchrun-style ranks: only the main one claims
    with claim_run_dir(out), claim_run_dir(out, main=False):
        pass


def test_hooks_task_optimizer_and_lower_is_better_metric(tmp_path: Path) -> None:
    """A writer of one's own is a hook (no trainer change); a task may bring its optimizer; a lower-is-better
    metric picks best.pth by its minimum."""
    from pvtv2.engine.hooks import Hook

    calls: list[str] = []

    class Recorder(Hook):
        def before_train(self, run):
            calls.append("before")

        def after_step(self, run, loss, losses):
            calls.append(f"step{run.state.step}")
            assert isinstance(run.optimizer, torch.optim.SGD) and torch.isfinite(loss)

        def after_report(self, run, record, metrics):
            calls.append(f"report{record['step']}")
            assert "test_loss" in metrics and record["test_loss"] == metrics["test_loss"]

        def on_checkpoint(self, run, path, best):
            calls.append("best" if best else "last")
            assert path.is_file()

        def after_train(self, run, summary):
            calls.append("after")
            assert summary["steps"] == run.total

    class LossPicked(ClassificationTask):
        metric, higher_is_better = "test_loss", False

        def build_optimizer(self, model, lr):
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    case = _case("cls", tmp_path)
    result = train(LossPicked(case.cfg(epochs=3)), out=tmp_path / "run", progress=False, hooks=[Recorder()])
    steps = result.steps
    assert calls[0] == "before" and calls[-1] == "after" and calls.count("after") == 1
    assert [c for c in calls if c.startswith("step")] == [f"step{i}" for i in range(1, steps + 1)]
    reports = [c for c in calls if c.startswith("report")]
    assert len(reports) == 3 and calls.count("last") >= 3
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["test_loss"] for r in records]
    assert result.best == min(losses)  # lower is better
    # best.pth written exactly when the loss reached a new minimum
    assert calls.count("best") == sum(1 for i, v in enumerate(losses) if v < min(losses[:i], default=float("inf")))
    assert read_train_checkpoint(tmp_path / "run" / "last.pth")["optimizer"]["param_groups"][0]["momentum"] == 0.9
