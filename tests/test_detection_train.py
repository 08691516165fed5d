"""Detection training, evaluation and the command line: smoke run, COCO AP, drawing, bad input. (Resume, Ctrl-C,
NaN and torchrun are tested for every task at once in test_trainer.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import require
from test_detection_data import write_coco

from pvtv2.cli import main as cli
from pvtv2.detection import DetectionTask, get_recipe, load_coco
from pvtv2.detection.data.dataset import DetectionDataset, decode_masks
from pvtv2.detection.evaluation.coco_eval import METRICS, coco_ground_truth, coco_metrics, to_coco_results
from pvtv2.detection.visualize import draw_detections
from pvtv2.engine import train as engine_train
from pvtv2.weights import read_checkpoint

TINY = ["--backbone-overrides", "depths=1,1,1,1"]
SMALL = ["--train-sizes", "64", "--max-size", "96", "--test-size", "64", "--workers", "0", "--threads", "1",
         "--warmup-steps", "0", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: much faster than two on the shared, oversubscribed CPUs these tests run on."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(data: Path, **kw):
    base = dict(data=str(data), backbone_overrides={"depths": (1, 1, 1, 1)}, batch_size=2, train_sizes=(64,),
                max_size=96, test_size=64, workers=0, threads=1, lr=1e-4, warmup_steps=0)
    return get_recipe("1x").replace(**{**base, **kw})


def test_smoke_run_loss_goes_down_and_eval_has_ap_fields(tmp_path: Path) -> None:
    data = write_coco(tmp_path / "data", n=2)
    result = engine_train(DetectionTask(_cfg(data, val_data=str(data), steps=6, eval_every=6)), out=tmp_path / "run",
                          progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0]  # one step per epoch (2 images, batch 2)
    assert {k.split("_", 1)[1] for k in result.metrics} == set(METRICS) and all(k.startswith("bbox_") for k in result.metrics)
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert records[-1]["bbox_AP50"] == result.metrics["bbox_AP50"] and "train_loss_cls" in records[-1]
    for name in ("last.pth", "config.json", "metrics.csv", "curves.png", "results.json", "summary.json",
                 "predictions.png"):
        assert (tmp_path / "run" / name).is_file(), name
    ckpt = read_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["step"] == 6 and ckpt["extra"]["detector"]["class_names"] == ["__background__", "square", "disc"]


def test_cli_train_eval_detect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_coco(tmp_path / "data", n=2)
    run = tmp_path / "run"
    assert cli(["det", "train", "--data", str(data), "--val-data", str(data), "--steps", "2", "--batch-size", "2",
                "--out", str(run), *TINY, *SMALL]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert cli(["det", "eval", "--checkpoint", str(run / "last.pth"), "--data", str(data),
                "--out", str(tmp_path / "ev"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("bbox  AP ")
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["bbox"]) == set(METRICS) and isinstance(json.loads((tmp_path / "ev" / "results.json")
                                                                          .read_text()), list)
    png = tmp_path / "vis.png"
    image = tmp_path / "data" / "img" / "0.jpg"
    assert cli(["detect", str(image), "--checkpoint", str(run / "last.pth"), "--save-vis", str(png),
                "--score-thresh", "0", "--device", "cpu", "--json"]) == 0
    found = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert isinstance(found, list) and all({"name", "score", "box"} <= set(d) for d in found)
    with Image.open(png) as im:
        assert im.size == (128, 96)
    # the backbone and FPN in OpenVINO: the same AP and the same detections as PyTorch (fp32)
    require("openvino")
    assert cli(["det", "eval", "--checkpoint", str(run / "last.pth"), "--data", str(data), "--backend", "openvino",
                "--out", str(tmp_path / "ev_ov"), "--device", "cpu"]) == 0
    assert cli(["detect", str(image), "--checkpoint", str(run / "last.pth"), "--backend", "openvino"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "ev_ov" / "metrics.json").read_text())["bbox"] == pytest.approx(metrics["bbox"],
                                                                                              abs=1e-3)
    from pvtv2.data.images import read_image
    from pvtv2.detection.inference import detect, load_detector, run_backbone_with

    found = {}
    for backend in ("torch", "openvino"):  # every box the head scores (a 2-step model: none pass 0.05)
        model, meta = load_detector(run / "last.pth", score_thresh=0.0)
        found[backend] = detect(run_backbone_with(model, backend), read_image(image),
                                class_names=meta["class_names"], score_thresh=0.0)[:20]
    assert len(found["torch"]) == 20 and [d["name"] for d in found["openvino"]] == [d["name"] for d in found["torch"]]
    for a, b in zip(found["openvino"], found["torch"]):
        assert abs(a["score"] - b["score"]) < 1e-4 and max(abs(x - y) for x, y in zip(a["box"], b["box"])) < 1e-2


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli(["det", "train", "--data", str(bad), "--out", str(tmp_path / "r"), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not valid JSON" in err and len(err.splitlines()) == 1
    data = write_coco(tmp_path / "data", n=2, annotations=[
        {"id": 1, "image_id": 0, "category_id": 3, "bbox": [10, 10, 30, 30]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 30]}])  # zero width
    assert cli(["det", "train", "--data", str(data), "--on-bad-data", "error", "--out", str(tmp_path / "r"),
                *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert "zero or negative area" in err and len(err.splitlines()) == 1
    weights = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, weights)
    assert cli(["detect", str(tmp_path / "missing.jpg"), "--checkpoint", str(weights)]) == 2
    assert "not a pvtv2 detection checkpoint" in capsys.readouterr().err
    assert cli(["det", "eval", "--checkpoint", str(tmp_path / "nope.pth"), "--data", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_coco_ap_of_perfect_predictions_is_one(tmp_path: Path) -> None:
    data = load_coco(write_coco(tmp_path, n=2))  # annotation ids start at 0, which pycocotools mishandles
    outputs, ids = [], []
    for rec in data.images:
        masks = torch.from_numpy(decode_masks(rec, rec.instances)).float()[:, None]  # (N, 1, H, W)
        outputs.append({"boxes": torch.tensor([i.box for i in rec.instances]), "scores": torch.ones(1),
                        "labels": torch.tensor([i.label for i in rec.instances]), "masks": masks})
        ids.append(rec.id)
    results = to_coco_results(outputs, ids, data.label_to_category())
    assert results[0]["category_id"] == 3 and "segmentation" in results[0]
    gt = coco_ground_truth(data)
    for kind in ("bbox", "segm"):
        metrics, table = coco_metrics(gt, results, kind)
        assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0), table
    empty, _ = coco_metrics(gt, [], "bbox")
    assert empty == {m: 0.0 for m in METRICS}


def test_draw_detections_boxes_masks_labels(tmp_path: Path) -> None:
    data = load_coco(write_coco(tmp_path, n=1))
    image, _ = DetectionDataset(data)[0]
    mask = torch.zeros(1, 1, 96, 128)
    mask[0, 0, 12:60, 10:58] = 0.9
    pred = {"boxes": torch.tensor([[10.0, 12.0, 58.0, 60.0], [0.0, 0.0, 5.0, 5.0]]), "scores": torch.tensor([0.9, 0.1]),
            "labels": torch.tensor([1, 2]), "masks": torch.cat([mask, torch.zeros(1, 1, 96, 128)])}
    drawn = draw_detections(image, pred, data.class_names, score_thresh=0.5)
    assert drawn.dtype == torch.uint8 and drawn.shape == image.shape
    changed = (drawn != image).any(0)
    assert changed[30, 30] and changed[12, 30]  # mask fill and box edge
    assert not changed[1:4, 1:4].any()  # the low-score detection is not drawn
    assert np.asarray(changed).sum() < changed.numel() / 2


def test_mask_rcnn_trains_and_reports_mask_ap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_coco(tmp_path / "data", n=2)
    few = ["--detector-options", "box_batch_size_per_image=32", "--detector-options", "rpn_post_nms_top_n_train=64",
           "--detector-options", "rpn_post_nms_top_n_test=32", "--detector-options", "box_detections_per_img=5"]
    assert cli(["det", "train", "--arch", "mask_rcnn", "--data", str(data), "--val-data", str(data), "--steps",
                "2", "--batch-size", "2", "--out", str(tmp_path / "run"), *few, *TINY, *SMALL]) == 0
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    assert {k.split("_")[0] for k in metrics} == {"bbox", "segm"} and {f"segm_{m}" for m in METRICS} <= set(metrics)
    ckpt = read_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["extra"]["detector"]["options"]["box_detections_per_img"] == 5
    png = tmp_path / "vis.png"
    assert cli(["detect", str(tmp_path / "data" / "img" / "1.jpg"), "--checkpoint", str(tmp_path / "run" / "last.pth"),
                "--save-vis", str(png), "--score-thresh", "0", "--device", "cpu", "--json"]) == 0
    found = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert len(found) <= 5 and png.is_file()


def test_compare_trains_every_detector_the_same_way_and_tabulates(tmp_path: Path, capsys) -> None:
    data = write_coco(tmp_path / "data", n=2)
    assert cli(["det", "compare", "--archs", "retinanet", "fcos", "--data", str(data), "--val-data", str(data),
                "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "cmp"), *TINY, *SMALL[:-1]]) == 0
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| retinanet |" in table and "| fcos |" in table and "train img/s" in table and table in capsys.readouterr().out
    rows = json.loads((tmp_path / "cmp" / "table.json").read_text())
    assert [r["arch"] for r in rows] == ["retinanet", "fcos"] and all(r["params_m"] > 0 and r["gflops"] > 0 for r in rows)
    assert all(r["train_img_s"] > 0 and r["infer_ms"] > 0 for r in rows) and (tmp_path / "cmp" / "table.png").is_file()
    assert (tmp_path / "cmp" / "fcos" / "last.pth").is_file()  # one run directory per detector
    # a second call (an interrupted comparison started again) reuses the finished runs and only retabulates
    stamp = (tmp_path / "cmp" / "fcos" / "last.pth").stat().st_mtime_ns
    assert cli(["det", "compare", "--archs", "retinanet", "fcos", "--data", str(data), "--val-data", str(data),
                "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "cmp"), *TINY, *SMALL[:-1]]) == 0
    assert (tmp_path / "cmp" / "fcos" / "last.pth").stat().st_mtime_ns == stamp
    again = json.loads((tmp_path / "cmp" / "table.json").read_text())
    assert [r["bbox_AP"] for r in again] == [r["bbox_AP"] for r in rows]


def test_compare_with_two_seeds_continues_an_unfinished_run_and_says_what_it_cannot_rank(tmp_path: Path) -> None:
    from pvtv2.detection.compare import compare, ranking_disagreements

    data = write_coco(tmp_path / "data", n=2)
    cfg = _cfg(data, val_data=str(data), steps=4, eval_every=4, ckpt_every=1)
    out = tmp_path / "cmp"
    # a run of the comparison stopped half way (a killed job leaves the same: last.pth, no summary)
    engine_train(DetectionTask(cfg.replace(arch="fcos", seed=1, stop_after=2)), out=out / "fcos-seed1", progress=False)
    first = (out / "fcos-seed1" / "metrics.jsonl").read_text()
    rows = compare(cfg, out, archs=["retinanet", "fcos"], seeds=[0, 1], progress=False)
    records = (out / "fcos-seed1" / "metrics.jsonl").read_text()
    assert records.startswith(first)  # continued from step 2 (its records kept as they were), not started again
    assert [json.loads(line)["step"] for line in records.splitlines()] == [1, 2, 3, 4]
    for row in rows:
        assert [r["seed"] for r in row["seeds"]] == [0, 1]
        ap = [r["bbox_AP"] for r in row["seeds"]]
        assert row["bbox_AP"] == pytest.approx(sum(ap) / 2) and row["bbox_AP_spread"] == pytest.approx(max(ap) - min(ap))
    table = (out / "table.md").read_text()
    assert "mean ± half the spread over seeds [0, 1]" in table and " ± " in table.split("| retinanet |")[1]
    assert "every seed gives the same order" in table or "the seeds disagree on: retinanet / fcos" in table
    # the pairs the seeds order differently, on made-up rows
    a = {"arch": "a", "seeds": [{"bbox_AP": 0.3}, {"bbox_AP": 0.2}]}
    b = {"arch": "b", "seeds": [{"bbox_AP": 0.25}, {"bbox_AP": 0.25}]}
    c = {"arch": "c", "seeds": [{"bbox_AP": 0.1}, {"bbox_AP": 0.1}]}
    assert ranking_disagreements([a, b, c]) == [("a", "b")]


def test_recipe_options_per_detector_reach_that_detector_only() -> None:
    """Every recipe's ``arch_options`` name registered detectors whose builders take them; other detectors and
    ``--detector-options`` are unaffected / win."""
    from pvtv2.detection import DETECTORS, RECIPES, build_detector

    assert get_recipe("scenes").arch_options["retinanet"] == {  # scenes: 12-192 px objects; torchvision's v2 head
        "anchor_scale": 2, "head_norm": "gn", "box_loss": "giou"}
    assert get_recipe("scenes").precision == "native" and get_recipe("1x").precision == "auto"  # bf16 where native
    for name, recipe in RECIPES.items():
        for arch, options in recipe.arch_options.items():
            assert arch in DETECTORS, (name, arch)
            cfg = recipe.replace(arch=arch)
            model = build_detector(arch, num_classes=3, backbone_overrides={"depths": (1, 1, 1, 1)},
                                   **cfg.builder_options())
            assert model is not None and options.items() <= cfg.builder_options().items()
    scenes = get_recipe("scenes")
    assert "anchor_scale" not in scenes.replace(arch="mask_rcnn").builder_options()
    assert scenes.replace(detector_options={"anchor_scale": 3}).builder_options()["anchor_scale"] == 3
    small = build_detector("retinanet", num_classes=3, backbone_overrides={"depths": (1, 1, 1, 1)},
                           **scenes.builder_options())
    released = build_detector("retinanet", num_classes=3, backbone_overrides={"depths": (1, 1, 1, 1)})
    # the smallest anchor on P3 (stride 8): 2 strides instead of the released 4
    assert small.anchor_generator.sizes[0][0] == 16.0 and released.anchor_generator.sizes[0][0] == 32.0


def test_key_value_options_take_several_per_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """``--detector-options a=1 b=2`` sets both (argparse's ``extend``), and the flag can be repeated."""
    assert cli(["det", "train", "--detector-options", "head_norm=gn", "box_loss=giou", "--detector-options",
                "anchor_scale=3", "--print-config"]) == 0
    options = json.loads(capsys.readouterr().out)["detector_options"]
    assert options == {"fpn_channels": 64, "head_norm": "gn", "box_loss": "giou", "anchor_scale": 3}
