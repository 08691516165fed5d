"""``--backbone-weights fashion-mnist``: the classification main job as the dense tasks' pretraining, trained on
first use into the cache, reused afterwards, continued when interrupted (tiny recipe here; users get the main job)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_PRETRAINING as TINY

import pvtv2.engine
from pvtv2.cli import main
from pvtv2.cli import pretrain
from pvtv2.engine import read_train_checkpoint
from pvtv2.weights.io import PRETRAININGS

pytestmark = pytest.mark.usefixtures("one_thread")
DEPTHS = {"depths": (1, 1, 1, 1)}


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(pretrain, "RECIPE_CHANGES", TINY)
    monkeypatch.setenv("PVTV2_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_pretrained_once_then_reused(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    best = pretrain.fashion_mnist_backbone("pvt_v2_b0", DEPTHS, progress=False)
    assert best.is_file() and best.parent.parent == tiny / "pretrained"
    assert json.loads((best.parent / "summary.json").read_text())["task"] == "cls"
    before = best.stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("trained again although the cache holds the pretraining")

    monkeypatch.setattr(pvtv2.engine, "train", no_training)
    assert pretrain.fashion_mnist_backbone("pvt_v2_b0", DEPTHS, progress=False) == best
    assert best.stat().st_mtime_ns == before
    # another architecture is another pretraining (its own key)
    other = pretrain.pretraining_config("pvt_v2_b0", {"depths": (1, 1, 2, 1)})
    assert other.backbone_overrides != pretrain.pretraining_config("pvt_v2_b0", DEPTHS).backbone_overrides


def test_an_interrupted_pretraining_continues(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrain, "RECIPE_CHANGES", {**TINY, "stop_after": 2})
    best = pretrain.fashion_mnist_backbone("pvt_v2_b0", DEPTHS, progress=False)
    assert not best.exists() and read_train_checkpoint(best.parent / "last.pth")["step"] == 2  # stopped: no best
    monkeypatch.setattr(pretrain, "RECIPE_CHANGES", TINY)  # the same pretraining, not stopped this time
    assert pretrain.fashion_mnist_backbone("pvt_v2_b0", DEPTHS, progress=False) == best and best.is_file()
    steps = read_train_checkpoint(best.parent / "last.pth")["step"]
    records = [json.loads(line) for line in (best.parent / "metrics.jsonl").read_text().splitlines()]
    assert steps == records[-1]["step"] > 2  # continued from step 2 to the end in the same folder


def test_two_jobs_started_together_pretrain_once(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two trainings started side by side on a new machine: one pretrains, the other waits for it and reuses it
    (without the lock both would train into the same folder)."""
    trained: list[Path] = []
    both_started = threading.Barrier(2)

    def slow_training(task, out, **kw):  # writes what a finished pretraining leaves, slowly enough to overlap
        trained.append(Path(out))
        time.sleep(0.5)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "best.pth").write_bytes(b"weights")
        (Path(out) / "summary.json").write_text("{}")

    monkeypatch.setattr(pvtv2.engine, "train", slow_training)
    results: list[Path] = []

    def job() -> None:
        both_started.wait()
        results.append(pretrain.fashion_mnist_backbone("pvt_v2_b0", DEPTHS, progress=False))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2 and results[0] == results[1]
    assert len(trained) == 1, trained


def test_det_train_with_fashion_mnist_backbone(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "det"
    argv = ["det", "train", "--out", str(out), "--no-progress", "--scenes", "8", "4", "64", "--steps", "2",
            "--batch-size", "2", "--workers", "0", "--threads", "1", "--backbone-overrides", "depths=1,1,1,1",
            "--train-sizes", "64", "--max-size", "64", "--test-size", "64", "--warmup-steps", "0",
            "--backbone-weights", "fashion-mnist"]
    assert main(argv) == 0
    used = json.loads((out / "config.json").read_text())["backbone_weights"]
    assert used.endswith("best.pth") and Path(used).parent.parent == tiny / "pretrained"
    assert read_train_checkpoint(used)["config"]["backbone_overrides"] == {"depths": [1, 1, 1, 1]}  # same backbone


def test_the_scenes_recipes_start_from_the_pretraining_and_none_means_random(tiny: Path, tmp_path: Path) -> None:
    from pvtv2.detection import get_recipe as det_recipe
    from pvtv2.segmentation import get_recipe as seg_recipe

    assert det_recipe("scenes").backbone_weights == seg_recipe("scenes").backbone_weights == pretrain.PRETRAINED
    assert pretrain.PRETRAINED in PRETRAININGS  # the checkpoint reader's hint knows the name
    out = tmp_path / "seg"
    argv = ["seg", "train", "--out", str(out), "--no-progress", "--scenes", "8", "4", "64", "--steps", "1",
            "--batch-size", "2", "--workers", "0", "--threads", "1", "--backbone-overrides", "depths=1,1,1,1",
            "--crop-size", "64", "--scale", "64", "64", "--test-scale", "64", "64", "--warmup-steps", "0",
            "--backbone-weights", "none"]
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["backbone_weights"] is None
    assert not (tiny / "pretrained").exists()  # nothing pretrained for a random start
    # from Python, an unresolved name fails in one line that says how to make it
    from pvtv2.errors import CheckpointError
    from pvtv2.weights import read_checkpoint

    with pytest.raises(CheckpointError, match="resolve_backbone_weights"):
        read_checkpoint(pretrain.PRETRAINED)
