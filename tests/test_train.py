"""Classification training end to end: loss goes down and the run directory is complete; the ImageNet recipe on
an ImageNet-layout folder; eval and predict; fine-tuning with a new head; one-line CLI errors. (Resume, Ctrl-C,
NaN and torchrun are tested for every task at once in test_trainer.py.)"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pvtv2.classification import ClassificationTask, get_recipe
from pvtv2.engine import read_train_checkpoint
from pvtv2.engine import train as engine_train


def train(cfg, **kw):
    return engine_train(ClassificationTask(cfg), **kw)


TINY = {"depths": (1, 1, 1, 1)}


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


def test_small_run_lowers_the_loss_and_writes_the_run_directory(tmp_path):
    cfg = get_recipe("fashion_mnist").replace(train_subset=256, val_subset=128, batch_size=32, epochs=2, threads=1,
                                              model_overrides=TINY, lr=2e-3, warmup_epochs=0.25)
    result = train(cfg, out=tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    expected = {"config.json", "metrics.jsonl", "metrics.csv", "curves.png", "last.pth", "best.pth", "summary.json"}
    assert expected <= files
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["test_loss"] < math.log(10)  # better than chance
    assert result.steps == 16 and 0 <= result.best <= 100 and result.best == max(r["test_top1"] for r in records)
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["backbone"] == "pvt_v2_b0" and config["batch_size"] == 32 and config["resolved"]["steps_per_epoch"] == 8
    ckpt = torch.load(tmp_path / "run/last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["extra"]["classes"][0] == "T-shirt/top"
    assert (tmp_path / "run/curves.png").read_bytes()[:4] == b"\x89PNG"


def _small_cfg(**kw):
    return get_recipe("fashion_mnist").replace(train_subset=128, val_subset=64, batch_size=32, threads=1,
                                               model_overrides=TINY, **kw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_train_checkpoint(path)["model"]


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
    assert config["resolved"]["lr"] == pytest.approx(5e-4 * 4 / 512)
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
                            "--workers", "0", "--on-bad-data", "error", "--json", str(tmp_path / "x.json"))
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
    code, _, stderr = _main(capsys, "predict", "--checkpoint", str(out / "best.pth"), bad, good, "--on-bad-data", "error")
    assert code == 2 and stderr.startswith("error: ") and "truncated.JPEG" in stderr


def test_predict_and_eval_with_1000_class_weights_use_imagenet_names(imagenet_folder, tmp_path):
    import pvtv2
    from pvtv2.classification.inference import evaluate_folder, imagenet_classes, load_classifier, predict

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
        train(_small_cfg(epochs=1, stop_after=1, weights=str(tmp_path / "w.pth")), out=tmp_path / "run", progress=False)
    assert "1000-class head, this run has 10 classes: training a new head" in caplog.text
    assert _weights(tmp_path / "run/last.pth")["head.weight"].shape == (10, 256)


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, _, err = _main(capsys, "train", "--data-dir", str(tmp_path), "--no-progress")
    assert code == 2 and err.startswith("error: no Fashion-MNIST IDX files") and err.count("\n") == 1
    code, _, err = _main(capsys, "train", "--resume", str(tmp_path / "nope.pth"))
    assert code == 2 and "does not exist" in err
    code, _, err = _main(capsys, "train", "--resume", str(tmp_path / "nope.pth"), "--lr", "1")
    assert code == 2 and "cannot change: lr" in err
    code, _, err = _main(capsys, "train", "--epochs", "0.5", "--set", "nonsense=1")
    assert code == 2 and err.startswith("error: unknown ClassificationConfig field(s) ['nonsense']")


def test_predict_and_eval_in_reduced_precision(folder_run, imagenet_folder, tmp_path, capsys):
    """--precision bf16 runs natively where the CPU has bf16, else in fp32 after one line; the answer is the same
    (top class) either way on these photos."""
    out, _ = folder_run
    image = str(imagenet_folder / "val/n02123045/chelsea_0.JPEG")
    code, fp32, _ = _main(capsys, "predict", "--checkpoint", str(out / "best.pth"), image, "--topk", "1")
    code16, bf16, _ = _main(capsys, "predict", "--checkpoint", str(out / "best.pth"), image, "--topk", "1",
                            "--precision", "bf16")
    assert code == code16 == 0 and fp32.split("%")[0].rsplit(None, 2)[-2] == bf16.split("%")[0].rsplit(None, 2)[-2]
    code, stdout, _ = _main(capsys, "eval", "--checkpoint", str(out / "best.pth"), str(imagenet_folder / "val"),
                            "--workers", "0", "--precision", "bf16", "--json", str(tmp_path / "e.json"))
    ran = json.loads((tmp_path / "e.json").read_text())["precision"]
    assert code == 0 and ran in ("bf16", "fp32") and f"in {ran}" in stdout


def test_predict_and_eval_with_the_openvino_backend(folder_run, imagenet_folder, tmp_path, capsys):
    """--backend openvino gives eager PyTorch's answer (fp32) in predict and eval."""
    from conftest import require

    require("openvino")
    out, _ = folder_run
    image = str(imagenet_folder / "val/n02123045/chelsea_0.JPEG")
    args = ("predict", "--checkpoint", str(out / "best.pth"), image, "--topk", "1")
    code, eager, _ = _main(capsys, *args)
    code_ov, ov, _ = _main(capsys, *args, "--backend", "openvino")
    assert code == code_ov == 0 and eager.split("%")[0].rsplit(None, 2)[-2] == ov.split("%")[0].rsplit(None, 2)[-2]
    code, stdout, _ = _main(capsys, "eval", "--checkpoint", str(out / "best.pth"), str(imagenet_folder / "val"),
                            "--workers", "0", "--backend", "openvino", "--json", str(tmp_path / "e.json"))
    res = json.loads((tmp_path / "e.json").read_text())
    assert code == 0 and res["backend"] == "openvino" and res["precision"] == "fp32" and "backend openvino" in stdout


def test_predict_and_eval_in_int8(folder_run, imagenet_folder, tmp_path, capsys):
    """--precision int8 --backend openvino --calibration DIR: NNCF-quantized, calibrated on the train images."""
    from conftest import require

    require("nncf")
    out, _ = folder_run
    ckpt = str(out / "best.pth")
    calib = str(imagenet_folder / "train")
    image = str(imagenet_folder / "val/n02123045/chelsea_0.JPEG")
    code, stdout, _ = _main(capsys, "predict", "--checkpoint", ckpt, image, "--backend", "openvino",
                            "--precision", "int8", "--calibration", calib, "--calibration-images", "8")
    assert code == 0 and "1." in stdout
    code, stdout, _ = _main(capsys, "eval", "--checkpoint", ckpt, str(imagenet_folder / "val"), "--workers", "0",
                            "--backend", "openvino", "--precision", "int8", "--calibration", calib,
                            "--json", str(tmp_path / "e.json"))
    res = json.loads((tmp_path / "e.json").read_text())
    assert code == 0 and res["backend"] == "openvino" and res["precision"] == "int8" and "in int8" in stdout
    for extra, message in ((("--backend", "openvino", "--precision", "int8"), "needs --calibration"),
                           (("--precision", "int8", "--calibration", calib), "add --backend openvino"),
                           (("--calibration", calib), "--calibration is for --precision int8"),
                           (("--backend", "openvino", "--precision", "int8", "--calibration", str(tmp_path / "no")),
                            "neither an image file nor a folder")):
        code, _, err = _main(capsys, "predict", "--checkpoint", ckpt, image, *extra)
        assert code != 0 and message in err and err.count("\n") <= 2, (extra, err)
