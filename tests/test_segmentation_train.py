"""Semantic FPN training end to end on the labelme photos: a smoke run (loss goes down, evaluation fields), the CLI
(seg train / seg eval / segment), evaluation sharded over two processes. (Resume, Ctrl-C, NaN and torchrun equality
are tested for every task at once in test_trainer.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require
from pvtv2.cli import main as cli_main
from pvtv2.engine import read_train_checkpoint
from pvtv2.engine import train as engine_train
from pvtv2.segmentation import SegmentationTask, evaluate, get_recipe, load_segmentor, voc

LABELME = "/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc"
TINY = dict(data=LABELME, crop_size=64, scale=(256, 64), test_scale=(256, 64), batch_size=3, workers=0,
            log_every=1, device="cpu", threads=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: several times faster than two on this shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_smoke_run_loss_goes_down_and_eval_fields(tmp_path: Path) -> None:
    cfg = get_recipe("ade20k_40k").replace(**TINY, steps=12, lr=1e-3, val_data=LABELME, eval_every=12)
    result = engine_train(SegmentationTask(cfg), out=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records]  # 3 images, batch 3: one step per epoch, one record per step
    assert len(losses) == 12 and all(l == l for l in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses  # starts near ln(21) = 3.04
    m = result.metrics
    assert set(m) == {"val_miou", "val_pixel_acc", "val_macc"} and 0.0 <= m["val_miou"] <= 1.0
    assert m["val_pixel_acc"] > 0.3 and result.best == m["val_miou"]
    assert {"last.pth", "best.pth", "metrics.jsonl", "metrics.csv", "curves.png", "config.json",
            "summary.json", "predictions.png"} <= {p.name for p in run.iterdir()}
    with Image.open(run / "predictions.png") as im:
        assert im.width > 2 * im.height / 3  # rows of image | ground truth | prediction
    assert records[-1]["step"] == 12 and "val_miou" in records[-1] and "val_miou" not in records[-2]
    ckpt = read_train_checkpoint(run / "last.pth")
    assert ckpt["step"] == 12 and ckpt["extra"]["data"]["class_names"][16] == "potted plant"


def test_cli_train_eval_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    tiny = ["--crop-size", "64", "--scale", "256", "64", "--workers", "0", "--device", "cpu", "--threads", "1"]
    assert cli_main(["seg", "train", "--data", LABELME, "--steps", "2", "--batch-size", "2", "--no-progress",
                     "--out", str(run), *tiny, "--test-scale", "256", "64"]) == 0
    assert read_train_checkpoint(run / "last.pth")["step"] == 2
    report = tmp_path / "eval.json"
    assert cli_main(["seg", "eval", LABELME, "--checkpoint", str(run / "last.pth"), "--test-scale", "256", "64",
                     "--workers", "0", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "person" in out and json.loads(report.read_text())["images"] == 3
    vis, mask = tmp_path / "vis.png", tmp_path / "mask.png"
    image = f"{LABELME}/JPEGImages/2011_000025.jpg"
    assert cli_main(["segment", image, "--checkpoint", str(run / "last.pth"), "--test-scale", "256", "64",
                     "--save-vis", str(vis), "--save-mask", str(mask)]) == 0
    assert "overlay written" in capsys.readouterr().out
    assert Image.open(vis).format == "PNG" and Image.open(vis).width > 500  # image plus legend
    assert Image.open(mask).size == (500, 375)
    assert cli_main(["segment", image, "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    # the network in OpenVINO: the same evaluation and label map as PyTorch's (fp32; resizing stays in PyTorch)
    require("openvino")
    report_ov, mask_ov = tmp_path / "eval_ov.json", tmp_path / "mask_ov.png"
    assert cli_main(["seg", "eval", LABELME, "--checkpoint", str(run / "last.pth"), "--test-scale", "256", "64",
                     "--workers", "0", "--json", str(report_ov), "--backend", "openvino"]) == 0
    torch_res, ov_res = json.loads(report.read_text()), json.loads(report_ov.read_text())
    assert ov_res["images"] == 3 and abs(ov_res["miou"] - torch_res["miou"]) < 1e-3, (ov_res, torch_res)
    assert cli_main(["segment", image, "--checkpoint", str(run / "last.pth"), "--test-scale", "256", "64",
                     "--save-mask", str(mask_ov), "--backend", "openvino"]) == 0
    same = (np.asarray(Image.open(mask_ov)) == np.asarray(Image.open(mask))).mean()
    assert same > 0.999, same  # argmax ties aside
    capsys.readouterr()
    assert cli_main(["segment", image, "--checkpoint", str(run / "last.pth"), "--backend", "openvino",
                     "--precision", "fp16"]) == 2
    assert "runs fp32 or bf16" in capsys.readouterr().err


def test_torchrun_two_processes_shard_the_evaluation(tmp_path: Path) -> None:
    """DDP on gloo: the validation images are split over the ranks and the confusion matrices summed; the BatchNorm
    statistics each CPU process keeps are rank 0's at evaluation."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pvtv2", "seg", "train", "--data", LABELME, "--steps", "2", "--batch-size", "2", "--crop-size", "64",
           "--scale", "256", "64", "--workers", "0", "--device", "cpu", "--no-progress",
           "--val-data", LABELME, "--test-scale", "256", "64", "--out", str(tmp_path / "ddp"),
           "--backbone-weights", "none"]  # a subprocess: the tests' tiny pretraining does not reach it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2
    ckpt = read_train_checkpoint(tmp_path / "ddp" / "last.pth")
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2  # one RNG state per rank
    # the validation images were split over the ranks and the confusion matrices summed: same as one process
    ddp_miou = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[-1])["val_miou"]
    model, _ = load_segmentor(tmp_path / "ddp" / "last.pth")
    assert ddp_miou == pytest.approx(evaluate(model, voc(LABELME), scale=(256, 64))["miou"], abs=1e-9)
