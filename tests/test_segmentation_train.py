"""Semantic FPN training end to end on the labelme photos: a smoke run (loss goes down, evaluation fields),
Ctrl-C then exact resume, the CLI (seg train / seg eval / segment) and a two-process torchrun run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from pvtv2.cli import main as cli_main
from pvtv2.engine import InterruptGuard, Interrupted, read_train_checkpoint
from pvtv2.segmentation import evaluate, load_segmentor, voc
from pvtv2.segmentation import train as train_module
from pvtv2.segmentation.train import SegTrainConfig, train

LABELME = "/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc"
TINY = dict(data=LABELME, crop_size=64, scale=(256, 64), test_scale=(256, 64), batch_size=3, workers=0,
            log_interval=1, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: several times faster than two on this shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_smoke_run_loss_goes_down_and_eval_fields(tmp_path: Path) -> None:
    cfg = SegTrainConfig(**TINY, iterations=12, lr=1e-3, val_data=LABELME, eval_interval=12, ckpt_interval=12,
                         out=str(tmp_path / "run"))
    result = train(cfg)
    losses = result["losses"]
    assert len(losses) == 12 and all(l == l for l in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses  # starts near ln(21) = 3.04
    m = result["metrics"]
    assert {"miou", "miou_gt", "macc", "pixel_acc", "per_class", "images"} <= set(m) and m["images"] == 3
    assert 0.0 <= m["miou"] <= 1.0 and m["pixel_acc"] > 0.3 and len(m["per_class"]) == 21
    run = tmp_path / "run"
    assert {"last.pth", "metrics.jsonl", "metrics.csv", "curves.png", "config.json"} <= {p.name for p in run.iterdir()}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 12 and "val_miou" in records[-1] and "train_loss" in records[-1]
    ckpt = read_train_checkpoint(run / "last.pth")
    assert ckpt["step"] == 12 and ckpt["extra"]["data"]["class_names"][16] == "potted plant"


class _StopAfter(InterruptGuard):
    """Acts as if Ctrl-C arrived during the second iteration."""

    def check(self, loss, where=""):  # noqa: ANN001, ANN201
        status = super().check(loss, where)
        self.calls = getattr(self, "calls", 0) + 1
        return replace(status, stop=self.calls == 2)


def test_interrupt_then_exact_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SegTrainConfig(**TINY, iterations=4, lr=1e-3, ckpt_interval=100)
    straight = train(replace(cfg, out=str(tmp_path / "a")))
    with monkeypatch.context() as m:
        m.setattr(train_module, "InterruptGuard", _StopAfter)
        with pytest.raises(Interrupted, match="--resume"):
            train(replace(cfg, out=str(tmp_path / "b")))
    assert read_train_checkpoint(tmp_path / "b" / "last.pth")["step"] == 2  # the second step was finished
    resumed = train(replace(cfg, resume=str(tmp_path / "b" / "last.pth")))
    assert resumed["losses"] == straight["losses"][2:]
    a = read_train_checkpoint(tmp_path / "a" / "last.pth")["model"]
    b = read_train_checkpoint(tmp_path / "b" / "last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical weights and BN statistics
    with pytest.raises(Exception, match="different lr"):
        train(replace(cfg, lr=5e-4, resume=str(tmp_path / "b" / "last.pth")))


def test_cli_train_eval_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    tiny = ["--crop-size", "64", "--scale", "256,64", "--workers", "0", "--device", "cpu"]
    assert cli_main(["seg", "train", LABELME, "--iterations", "2", "--batch-size", "2", "--log-interval", "1",
                     "--out", str(run), *tiny, "--test-scale", "256,64"]) == 0
    assert "done: 2 iterations" in capsys.readouterr().out
    report = tmp_path / "eval.json"
    assert cli_main(["seg", "eval", LABELME, "--checkpoint", str(run / "last.pth"), "--test-scale", "256,64",
                     "--workers", "0", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "person" in out and json.loads(report.read_text())["images"] == 3
    vis, mask = tmp_path / "vis.png", tmp_path / "mask.png"
    image = f"{LABELME}/JPEGImages/2011_000025.jpg"
    assert cli_main(["segment", image, "--checkpoint", str(run / "last.pth"), "--test-scale", "256,64",
                     "--save-vis", str(vis), "--save-mask", str(mask)]) == 0
    assert "overlay written" in capsys.readouterr().out
    assert Image.open(vis).format == "PNG" and Image.open(vis).width > 500  # image plus legend
    assert Image.open(mask).size == (500, 375)
    assert cli_main(["segment", image, "--checkpoint", str(tmp_path / "missing.pth")]) == 2


def test_torchrun_two_processes(tmp_path: Path) -> None:
    """DDP on gloo: the total batch of 2 is split over 2 processes, rank 0 writes, every rank's RNG is saved,
    evaluation is sharded."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pvtv2", "seg", "train", LABELME, "--iterations", "2", "--batch-size", "2", "--crop-size", "64",
           "--scale", "256,64", "--workers", "0", "--device", "cpu", "--log-interval", "1",
           "--val-data", LABELME, "--test-scale", "256,64", "--out", str(tmp_path / "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2
    ckpt = read_train_checkpoint(tmp_path / "ddp" / "last.pth")
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2  # one RNG state per rank
    # the validation images were split over the ranks and the confusion matrices summed: same as one process
    ddp_miou = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[-1])["val_miou"]
    model, _ = load_segmentor(tmp_path / "ddp" / "last.pth")
    assert ddp_miou == pytest.approx(evaluate(model, voc(LABELME), scale=(256, 64))["miou"], abs=1e-9)
