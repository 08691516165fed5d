"""One self-describing checkpoint for the three tasks (``pvtv2.engine.model_file``): the inference files of
detection and segmentation, the trainer's checkpoints (EMA weights included) and the files of earlier versions are
read by one reader, and a file of another task is refused in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pvtv2.detection.inference import build_from_meta, detector_meta, load_detector, save_detector
from pvtv2.engine.checkpoint import FORMAT as TRAIN_FORMAT
from pvtv2.engine.model_file import FORMAT, read_model_file
from pvtv2.errors import CheckpointError
from pvtv2.segmentation import DatasetMeta, load_segmentor, save_segmentor, semantic_fpn
from pvtv2.segmentation.checkpoint import segmentor_record

NAMES = ["background", "a", "b"]


@pytest.fixture(scope="module")
def detector() -> tuple[torch.nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    meta = detector_meta("retinanet", backbone="pvt_v2_b0", class_names=NAMES, min_size=64, max_size=64,
                         options={"fpn_channels": 16})
    return build_from_meta(meta).eval(), meta


@pytest.fixture(scope="module")
def segmentor() -> tuple[torch.nn.Module, DatasetMeta]:
    torch.manual_seed(0)
    return semantic_fpn(backbone="pvt_v2_b0", num_classes=3, fpn_channels=16, head_channels=16).eval(), \
        DatasetMeta(3, ("bg", "x", "y"))


def _sd(model: torch.nn.Module, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() * scale if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


def _train_checkpoint(path: Path, model: torch.nn.Module, extra: dict[str, Any], ema: bool) -> Path:
    """A trainer checkpoint as engine.checkpoint writes it; the EMA weights are the model's doubled (as
    ``AveragedModel.state_dict()``: ``module.``-prefixed, plus its counter)."""
    averaged = {f"module.{k}": v for k, v in _sd(model, 2.0).items()} | {"n_averaged": torch.tensor(5)}
    torch.save({"format": TRAIN_FORMAT, "version": 1, "model": _sd(model), "ema": averaged if ema else None,
                "optimizer": None, "epoch": 1, "epoch_step": 0, "step": 10, "config": {}, "extra": extra}, path)
    return path


def _first_param(model: torch.nn.Module) -> torch.Tensor:
    return next(p for n, p in model.named_parameters() if n.endswith("weight"))


def test_inference_files_are_one_format(detector, segmentor, tmp_path: Path) -> None:
    det, meta = detector
    seg, seg_meta = segmentor
    for path in (save_detector(det, meta, tmp_path / "d.pth"), save_segmentor(seg, seg_meta, tmp_path / "s.pth")):
        raw = torch.load(path, weights_only=True)
        assert raw["format"] == FORMAT and set(raw) == {"format", "version", "model", "extra"}
    loaded, meta2 = load_detector(tmp_path / "d.pth")
    assert meta2 == meta and torch.equal(_first_param(loaded), _first_param(det))
    seg2, seg_meta2 = load_segmentor(tmp_path / "s.pth")
    assert seg_meta2 == seg_meta and torch.equal(_first_param(seg2), _first_param(seg))


def test_files_of_earlier_versions_still_load(detector, segmentor, tmp_path: Path) -> None:
    det, meta = detector
    seg, seg_meta = segmentor
    torch.save({"model": _sd(det), "detector": meta}, tmp_path / "d.pth")  # 0.1's save_detector
    torch.save({"format": "pvtv2-seg", "model": _sd(seg), **segmentor_record(seg, seg_meta)}, tmp_path / "s.pth")
    assert torch.equal(_first_param(load_detector(tmp_path / "d.pth")[0]), _first_param(det))
    assert torch.equal(_first_param(load_segmentor(tmp_path / "s.pth")[0]), _first_param(seg))


def test_ema_weights_of_every_task(detector, segmentor, tmp_path: Path) -> None:
    det, meta = detector
    seg, seg_meta = segmentor
    d = _train_checkpoint(tmp_path / "d.pth", det, {"detector": meta}, ema=True)
    s = _train_checkpoint(tmp_path / "s.pth", seg, segmentor_record(seg, seg_meta), ema=True)
    assert torch.equal(_first_param(load_detector(d)[0]), _first_param(det))
    assert torch.equal(_first_param(load_detector(d, use_ema=True)[0]), 2 * _first_param(det))
    assert torch.equal(_first_param(load_segmentor(s, use_ema=True)[0]), 2 * _first_param(seg))
    saved = read_model_file(d, task="detection", needs="detector", hint="-", use_ema=True)
    assert saved.training and "n_averaged" not in saved.weights
    plain = _train_checkpoint(tmp_path / "plain.pth", det, {"detector": meta}, ema=False)
    with pytest.raises(CheckpointError, match="holds no EMA weights") as err:
        load_detector(plain, use_ema=True)
    assert "\n" not in str(err.value)


def test_another_tasks_file_is_refused_in_one_line(detector, segmentor, tmp_path: Path) -> None:
    det, meta = detector
    seg, seg_meta = segmentor
    save_detector(det, meta, tmp_path / "d.pth")
    save_segmentor(seg, seg_meta, tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match="not a pvtv2 segmentation checkpoint.*seg train") as err:
        load_segmentor(tmp_path / "d.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not a pvtv2 detection checkpoint.*det train"):
        load_detector(tmp_path / "s.pth")
    from pvtv2.classification.inference import load_classifier

    with pytest.raises(CheckpointError, match="not a pvtv2 classification checkpoint"):
        load_classifier(checkpoint=tmp_path / "d.pth")
