"""``--no-progress`` silences every progress bar of the command it is given to: training, the scenes generation it
triggers, evaluation, weight downloads, ``det compare``'s runs, ``flops --scaling``'s timing. Each command runs
in-process on the smallest inputs, with stderr captured; a control without the flag shows that a bar *is* drawn
there (tqdm draws to a captured stderr too), so the checks can fail."""

from __future__ import annotations

import dataclasses
import io
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pvtv2 import convert, create_model
from pvtv2.cli import main
from pvtv2.weights import release

pytestmark = pytest.mark.usefixtures("one_thread")

SCENES = ["--scenes", "8", "4", "64"]
RUN = [*SCENES, "--steps", "2", "--batch-size", "2", "--workers", "0", "--threads", "1",
       "--backbone-overrides", "depths=1,1,1,1"]
DET = ["--train-sizes", "64", "--max-size", "64", "--test-size", "64", "--warmup-steps", "0", *RUN]
SEG = ["--crop-size", "64", "--scale", "64", "64", "--test-scale", "64", "64", *RUN]
TQDM = re.compile(r"\r|\d+/\d+ \[|[?\d.]+[kMG]?(?:it|scene|step|point|B)/s")  # tqdm's redraws, counts, rates


def _bars(err: str) -> list[str]:
    """tqdm's marks in captured stderr."""
    return TQDM.findall(err)


def _run(capfd: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``pvtv2 ARGV`` in this process; its stderr."""
    capfd.readouterr()
    assert main(argv) == 0, capfd.readouterr().err
    return capfd.readouterr().err


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``fresh_cache()`` points the scenes cache at a new empty folder: the next command generates its scenes."""
    count = iter(range(100))

    def fresh() -> Path:
        path = tmp_path / f"cache{next(count)}"
        monkeypatch.setenv("PVTV2_CACHE", str(path))
        return path

    return fresh


def test_data_scenes(tmp_path, capfd, fresh_cache):
    fresh_cache()
    argv = ["data", "scenes", "--train", "3", "--test", "2", "--size", "64", "--workers", "1"]
    assert _bars(_run(capfd, [*argv, "--out", str(tmp_path / "a"), "--no-progress"])) == []
    err = _run(capfd, [*argv, "--out", str(tmp_path / "b")])  # control: the generation bar
    assert "\r" in err and "scene/s" in err


def test_det_train_eval_and_compare(tmp_path, capfd, fresh_cache):
    fresh_cache()
    err = _run(capfd, ["det", "train", "--out", str(tmp_path / "det"), "--no-progress", *DET])
    assert _bars(err) == [], err  # the scenes generation of the default data included
    ckpt = str(tmp_path / "det" / "last.pth")
    fresh_cache()
    assert _bars(_run(capfd, ["det", "eval", "--checkpoint", ckpt, "--data", "scenes", *SCENES, "--no-progress"])) == []
    fresh_cache()
    err = _run(capfd, ["det", "eval", "--checkpoint", ckpt, "--data", "scenes", *SCENES])  # control
    assert "\r" in err and "scene/s" in err
    fresh_cache()
    err = _run(capfd, ["det", "compare", "--archs", "retinanet", "--out", str(tmp_path / "cmp"), "--no-progress",
                       *DET])
    assert _bars(err) == [], err
    assert (tmp_path / "cmp" / "table.png").is_file()


def test_seg_train_and_eval(tmp_path, capfd, fresh_cache):
    fresh_cache()
    err = _run(capfd, ["seg", "train", "--out", str(tmp_path / "seg"), "--no-progress", *SEG])
    assert _bars(err) == [], err
    ckpt = str(tmp_path / "seg" / "last.pth")
    evaluate = ["seg", "eval", "scenes", *SCENES, "--checkpoint", ckpt, "--workers", "0"]
    fresh_cache()
    assert _bars(_run(capfd, [*evaluate, "--no-progress"])) == []
    fresh_cache()
    err = _run(capfd, evaluate)  # control: the generation bar and the evaluation bar
    assert "\r" in err and "scene/s" in err and "eval" in err


@pytest.fixture
def released_b0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pvt_v2_b0's "released" file served from a local folder (random weights in the authors' key layout)."""
    server = tmp_path / "server"
    server.mkdir()
    buf = io.BytesIO()
    torch.save(convert(create_model("pvt_v2_b0").state_dict(), "pvtv2", "official"), buf)
    rel = dataclasses.replace(release.RELEASES["pvt_v2_b0"], sha256=None)
    (server / rel.file).write_bytes(buf.getvalue())
    monkeypatch.setattr(release, "RELEASE_URL", server.as_uri() + "/{file}")
    monkeypatch.setitem(release.RELEASES, "pvt_v2_b0", rel)
    monkeypatch.setenv("PVTV2_OFFLINE", "0")


def test_eval_weight_download(tmp_path, capfd, monkeypatch, released_b0):
    data = tmp_path / "val" / "n01440764"  # ImageNet's first class
    data.mkdir(parents=True)
    Image.new("RGB", (64, 48), (120, 80, 40)).save(data / "a.png")
    argv = ["eval", str(tmp_path / "val"), "--weights", "official", "--model", "pvt_v2_b0", "--workers", "0",
            "--json", str(tmp_path / "eval.json")]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch1"))  # an empty cache: it downloads
    assert _bars(_run(capfd, [*argv, "--no-progress"])) == []
    assert (tmp_path / "torch1" / "checkpoints" / "pvt_v2_b0.pth").is_file()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch2"))
    err = _run(capfd, argv)  # control: the download bar
    assert "\r" in err and "pvt_v2_b0.pth" in err


def test_flops_scaling(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the timing bar is drawn on a terminal only
    argv = ["flops", "--scaling", "pvt_v2_b2", "--sizes", "32", "--latency-repeats", "1", "--threads", "1",
            "--png", str(tmp_path / "scaling.png")]
    assert _bars(_run(capfd, [*argv, "--no-progress"])) == []
    err = _run(capfd, argv)  # control
    assert "\r" in err and "point/s" in err
