"""``pvtv2 det profile`` / ``pvtv2 seg profile``: where a training step's time goes, part by part."""

from __future__ import annotations

import re

import torch

from pvtv2.cli import main as cli
from pvtv2.engine.breakdown import step_breakdown

SMALL = ["--scenes", "8", "4", "64", "--batch-size", "2", "--threads", "1", "--backbone-overrides", "depths=1,1,1,1",
         "--profile-steps", "2"]


def _rows(table: str) -> dict[str, tuple[str, str, float]]:
    """part -> (forward ms, backward ms, share %) of one Markdown table."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and "%" in cells[3] and cells[0] != "part":
            rows[cells[0]] = (cells[1], cells[2], float(re.match(r"[\d.]+", cells[3]).group()))
    return rows


def test_det_profile_times_every_part_of_one_and_two_stage_detectors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PVTV2_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "profile.md"
    assert cli(["det", "profile", "--archs", "retinanet", "mask_rcnn", "--train-sizes", "64", "--max-size", "64",
                "--test-size", "64", "--out", str(out), *SMALL]) == 0
    text = out.read_text()
    starts = [m.start() for m in re.finditer(r"^\S.* ms per step of 2 images", text, flags=re.M)]
    assert len(starts) == 2 and text[: text.index(":")] in capsys.readouterr().out  # printed too
    tables = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    one, two = _rows(tables[0]), _rows(tables[1])
    assert {"backbone", "neck (FPN)", "head (convolutions)", "optimizer step"} <= set(one)
    assert any(k.startswith("RoI heads") for k in two) and any(k.startswith("proposals (RPN") for k in two)
    for rows in (one, two):
        assert float(rows["backbone"][0]) > 0 and float(rows["backbone"][1]) > 0  # forward and replayed backward
        # the shares cover the step (the replays' own overhead may add some on a model this small)
        assert 98 <= sum(r[2] for r in rows.values()) <= 130


def test_seg_profile_and_the_profiled_step_is_the_trainers(tmp_path, monkeypatch, capsys):
    """The profiled steps train as the trainer's do: the parts' replays leave no gradient behind (the weights after
    the profile equal those of the same steps without hooks)."""
    monkeypatch.setenv("PVTV2_CACHE", str(tmp_path / "cache"))
    assert cli(["seg", "profile", "--crop-size", "64", "--scale", "64", "64", "--test-scale", "64", "64",
                *SMALL]) == 0
    rows = _rows(capsys.readouterr().out)
    assert {"backbone", "neck (FPN)", "decode head", "the rest (the loss)"} <= set(rows)

    from pvtv2.segmentation import SegmentationTask, get_recipe

    cfg = get_recipe("scenes").replace(scenes=(8, 4, 64), backbone_weights=None, batch_size=2, workers=0,
                                       crop_size=64, scale=(64, 64), backbone_overrides={"depths": [1, 1, 1, 1]})
    weights = []
    for parts in (True, False):
        task = SegmentationTask(cfg)
        if not parts:
            task.parts = lambda model: {}  # type: ignore[method-assign]
        torch.manual_seed(0)
        models = []
        original = task.build_model
        task.build_model = lambda env: models.append(original(env)) or models[-1]  # type: ignore[method-assign]
        step_breakdown(task, steps=2, warmup=0)
        weights.append({k: v.detach().clone() for k, v in models[0].state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
