"""Classification training end to end: loss goes down and the run directory is complete; DDP (gloo, 2 processes)
matches one process; SIGKILL + --resume matches an uninterrupted run; Ctrl-C and NaN guards; eval and predict on
an ImageNet-layout folder; fine-tuning with a new head."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pvtv2.engine import Interrupted, read_train_checkpoint
from pvtv2.engine.classification import train
from pvtv2.engine.recipes import get_recipe
from pvtv2.errors import TrainingError

TINY = {"depths": [1, 1, 1, 1]}
# A small, fast Fashion-MNIST run: 256 images, batch 32 -> 8 steps per epoch.
SMALL = ["--train-subset", "256", "--val-subset", "128", "--batch-size", "32", "--threads", "1", "--no-progress",
         "--set", f"model_overrides={json.dumps(TINY)}"]


@pytest.fixture(autouse=True)
def _restore_threads():
    """train() sets the process's CPU threads (as a CLI run should); give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """Run the ``pvtv2`` command line in this process (no interpreter start-up): (status, stdout, stderr)."""
    from pvtv2.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _env() -> dict[str, str]:
    # passive OpenMP waits: spinning threads make a busy machine many times slower (see docs/classification.md)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PVTV2_OFFLINE="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_train_checkpoint(path)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_small_run_lowers_the_loss_and_writes_the_run_directory(tmp_path):
    cfg = get_recipe("fashion_mnist").replace(train_subset=256, val_subset=128, batch_size=32, epochs=2, threads=1,
                                              model_overrides=TINY, lr=2e-3, warmup_epochs=0.5)
    result = train(cfg, out=tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    expected = {"config.json", "metrics.jsonl", "metrics.csv", "curves.png", "last.pth", "best.pth", "summary.json"}
    assert expected <= files
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["test_loss"] < math.log(10)  # better than chance
    assert result.steps == 16 and 0 <= result.best_top1 <= 100
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["model"] == "pvt_v2_b0" and config["batch_size"] == 32 and config["steps_per_epoch"] == 8
    ckpt = torch.load(tmp_path / "run/last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["extra"]["classes"][0] == "T-shirt/top"
    assert (tmp_path / "run/curves.png").read_bytes()[:4] == b"\x89PNG"


def test_two_gloo_processes_match_one_process(tmp_path, capsys, caplog):
    common = [*SMALL, "--max-steps", "3"]
    with caplog.at_level(logging.INFO, logger="pvtv2"):
        assert _main(capsys, "train", *common, "--out", str(tmp_path / "one"))[0] == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pvtv2",
           "train", *common, "--out", str(tmp_path / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=200)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stderr and "on 1 process(es)" in caplog.text
    diff = _max_diff(_weights(tmp_path / "one/last.pth"), _weights(tmp_path / "two/last.pth"))
    assert diff < 1e-5
    ckpt = read_train_checkpoint(tmp_path / "two/last.pth")
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 2  # every rank's RNG state, written once by rank 0
    assert not list((tmp_path / "two").glob(".*.tmp"))


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    args = [*SMALL, "--epochs", "2", "--ckpt-every", "3", "--set", "drop_path=0.1"]  # drop path: RNG must resume
    proc = subprocess.Popen([sys.executable, "-m", "pvtv2", "train", *args, "--out", str(tmp_path / "killed")],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed/last.pth"
    deadline = time.time() + 150
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = read_train_checkpoint(last)
    assert state["epoch"] == 0 and state["epoch_step"] in (3, 6)  # killed mid-epoch 1
    assert _main(capsys, "train", *args, "--out", str(tmp_path / "ref"))[0] == 0  # uninterrupted, same seed
    assert _main(capsys, "train", "--resume", str(last), "--threads", "1", "--no-progress")[0] == 0
    assert read_train_checkpoint(last)["step"] == 16
    assert _max_diff(_weights(tmp_path / "ref/last.pth"), _weights(last)) == 0.0
    metrics = [json.loads(x) for x in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]


def _small_cfg(**kw):
    return get_recipe("fashion_mnist").replace(train_subset=128, val_subset=64, batch_size=32, threads=1,
                                               model_overrides=TINY, **kw)


def test_ctrl_c_writes_a_resumable_checkpoint(tmp_path, monkeypatch):
    from pvtv2.engine import loop

    real_step, calls = loop.Stepper.step, []

    def step(self, loss):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 2: seen at the next step boundary
        return real_step(self, loss)

    monkeypatch.setattr(loop.Stepper, "step", step)
    with pytest.raises(Interrupted, match="resume"):
        train(_small_cfg(epochs=1), out=tmp_path / "run", progress=False)
    state = read_train_checkpoint(tmp_path / "run/last.pth")
    assert (state["epoch"], state["epoch_step"], state["step"]) == (0, 3, 3)
    monkeypatch.setattr(loop.Stepper, "step", real_step)
    result = train(_small_cfg(epochs=1), resume=tmp_path / "run/last.pth", progress=False)
    assert result.steps == 4 and result.run_dir == tmp_path / "run"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from pvtv2.engine import loop

    real_step, calls = loop.Stepper.step, []

    def step(self, loss):
        calls.append(1)
        out = real_step(self, loss)
        if len(calls) == 6:  # poison the weights in epoch 2: the next loss is NaN
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(loop.Stepper, "step", step)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2 step 3.*last good checkpoint is .*last.pth"):
        train(_small_cfg(epochs=3), out=tmp_path / "run", progress=False)
    state = read_train_checkpoint(tmp_path / "run/last.pth")
    assert state["epoch"] == 1 and state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# --- eval / predict on an ImageNet-layout folder ----------------------------------------------------------------
SYNSETS = {"n02123045": "chelsea", "n04266014": "rocket", "n07920052": "coffee"}  # tabby, space shuttle, espresso


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    """train/ and val/ in ImageNet's layout from skimage photos, plus the bad inputs of issue 4."""
    import skimage.data

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for syn, name in SYNSETS.items():
            (root / split / syn).mkdir(parents=True)
            photo = Image.fromarray(getattr(skimage.data, name)()).resize((96, 80))
            for i in range(n):
                a = np.clip(np.asarray(photo, dtype=np.int16) + rng.integers(-20, 20, (80, 96, 3)), 0, 255)
                Image.fromarray(a.astype(np.uint8)).save(root / split / syn / f"{name}_{i}.JPEG")
    val = root / "val"
    photo = Image.open(val / "n02123045/chelsea_0.JPEG")
    photo.convert("CMYK").save(val / "n02123045/cmyk.JPEG")
    photo.convert("RGBA").save(val / "n02123045/rgba.png")
    photo.convert("L").save(val / "n04266014/grey.png")
    Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257)).save(val / "n04266014/sixteen.png")
    data = (val / "n07920052/coffee_0.JPEG").read_bytes()
    (val / "n07920052/truncated.JPEG").write_bytes(data[: len(data) // 2])
    (root / "train" / "n01440764").mkdir()  # an empty class folder (tench)
    return root


@pytest.fixture(scope="module")
def folder_run(imagenet_folder, tmp_path_factory):
    """An epoch (3 steps) of the imagenet recipe (RandAugment, mixup/cutmix, erasing, RA sampler) at 64 px."""
    out = tmp_path_factory.mktemp("folder_run")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("pvtv2").addHandler(handler)
    try:
        cfg = get_recipe("imagenet").replace(data_dir=str(imagenet_folder), model="pvt_v2_b0", input_size=64,
                                             batch_size=4, epochs=1, workers=0, threads=1, model_overrides=TINY)
        n = torch.get_num_threads()
        train(cfg, out=out, progress=False)
        torch.set_num_threads(n)
    finally:
        logging.getLogger("pvtv2").removeHandler(handler)
    return out, "\n".join(records)


def test_imagenet_recipe_trains_on_a_folder(folder_run):
    out, logs = folder_run
    assert "empty class folder" in logs and "n01440764" in logs
    config = json.loads((out / "config.json").read_text())
    assert config["aug"]["auto_augment"] == "rand-m9-mstd0.5-inc1" and config["repeated_aug"] == 3
    assert config["peak_lr"] == pytest.approx(5e-4 * 4 / 512)
    ckpt = read_train_checkpoint(out / "last.pth")
    assert ckpt["extra"]["classes"] == ["n01440764", *SYNSETS] and ckpt["step"] == 3


def test_eval_and_predict_with_a_run_checkpoint(folder_run, imagenet_folder, tmp_path, capsys):
    out, _ = folder_run
    res_path = tmp_path / "eval.json"
    code, stdout, _ = _main(capsys, "eval", "--checkpoint", str(out / "best.pth"), str(imagenet_folder / "val"),
                            "--workers", "0", "--json", str(res_path))
    res = json.loads(res_path.read_text())
    assert code == 0 and res["n"] == 6 + 4 and res["skipped"] == 1  # 6 photos + CMYK/RGBA/grey/16-bit; 1 truncated
    assert res["protocol"] == "resize 73 bicubic, center-crop 64" and "top-1" in stdout
    assert 0 <= res["top1"] <= res["top5"] <= 100
    code, _, stderr = _main(capsys, "eval", "--checkpoint", str(out / "best.pth"), str(imagenet_folder / "val"),
                            "--workers", "0", "--on-bad-image", "error", "--json", str(tmp_path / "x.json"))
    assert code == 2 and stderr.startswith("error: ") and "truncated.JPEG" in stderr and "Traceback" not in stderr
    vis = tmp_path / "vis.png"
    code, stdout, _ = _main(capsys, "predict", "--checkpoint", str(out / "best.pth"),
                            str(imagenet_folder / "val/n02123045/cmyk.JPEG"), "--topk", "3", "--save-vis", str(vis))
    lines = [ln for ln in stdout.splitlines() if ln.strip().startswith(("1.", "2.", "3."))]
    assert len(lines) == 3 and all(any(s in ln for s in ["n0", "n1"]) for ln in lines)
    assert vis.read_bytes()[:4] == b"\x89PNG"
    good, bad = str(imagenet_folder / "val/n02123045/cmyk.JPEG"), str(next(imagenet_folder.rglob("truncated.JPEG")))
    code, stdout, stderr = _main(capsys, "predict", "--checkpoint", str(out / "best.pth"), bad, good)
    assert code == 0 and f"skipped {bad}" in stderr and good in stdout and bad not in stdout  # the others still answered
    code, _, stderr = _main(capsys, "predict", "--checkpoint", str(out / "best.pth"), bad, good, "--on-bad-image", "error")
    assert code == 2 and stderr.startswith("error: ") and "truncated.JPEG" in stderr


def test_predict_and_eval_with_1000_class_weights_use_imagenet_names(imagenet_folder, tmp_path):
    import pvtv2
    from pvtv2.engine.inference import evaluate_folder, imagenet_classes, load_classifier, predict

    pvtv2.save_weights(pvtv2.create_model("pvt_v2_b0"), tmp_path / "w.safetensors")
    synsets, names = imagenet_classes()
    assert len(synsets) == 1000 and names[synsets.index("n02123045")] == "tabby"
    clf = load_classifier(weights=str(tmp_path / "w.safetensors"), model="pvt_v2_b0")
    assert clf.preprocess["size"] == 224
    preds = predict(clf, [imagenet_folder / "val/n02123045/chelsea_0.JPEG"], topk=5)
    assert len(preds[0]) == 5 and all(n in names for n, _ in preds[0])
    res = evaluate_folder(clf, imagenet_folder / "val", workers=0)
    assert res["n"] == 10 and res["skipped"] == 1  # folders matched to ImageNet indices by synset


def test_fine_tuning_from_1000_class_weights_trains_a_new_head(tmp_path, caplog):
    import pvtv2

    pvtv2.save_weights(pvtv2.create_model("pvt_v2_b0", depths=(1, 1, 1, 1)), tmp_path / "w.pth")
    with caplog.at_level(logging.INFO):
        train(_small_cfg(epochs=1, max_steps=1, weights=str(tmp_path / "w.pth")), out=tmp_path / "run", progress=False)
    assert "1000-class head, this run has 10 classes: training a new head" in caplog.text
    assert _weights(tmp_path / "run/last.pth")["head.weight"].shape == (10, 256)


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, _, err = _main(capsys, "train", "--data-dir", str(tmp_path), "--no-progress")
    assert code == 2 and err.startswith("error: no Fashion-MNIST IDX files") and err.count("\n") == 1
    code, _, err = _main(capsys, "train", "--resume", str(tmp_path / "nope.pth"))
    assert code == 2 and "does not exist" in err
    code, _, err = _main(capsys, "train", "--resume", str(tmp_path / "nope.pth"), "--lr", "1")
    assert code == 2 and "cannot change: lr" in err
