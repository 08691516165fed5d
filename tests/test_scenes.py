"""The scenes benchmark: determinism, held-out sources, exact masks and boxes, loaders, cache safety, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pvtv2.cli import main
from pvtv2.data import load_fashion_mnist
from pvtv2.data.scenes import (
    CLASS_NAMES,
    PHOTOS,
    SPLITS,
    Layout,
    check,
    default_root,
    read_manifest,
    scenes,
    scenes_paths,
)
from pvtv2.data.scenes import generate as gen
from pvtv2.data.scenes.compose import compose
from pvtv2.data.scenes.sources import Sources, load_photo, silhouette
from pvtv2.errors import DataError

SMALL = dict(train=3, test=2, size=96, progress=False, workers=1)  # a few seconds: cache and CLI tests


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """24 train + 12 test scenes of 256 px (one process)."""
    return scenes(tmp_path_factory.mktemp("scenes") / "s", train=24, test=12, progress=False, workers=1)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _decode(ann: dict) -> np.ndarray:
    from pycocotools import mask as coco_mask

    seg = ann["segmentation"]
    return coco_mask.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


def test_same_seed_same_bytes_any_worker_count(root, tmp_path):
    again = scenes(tmp_path / "again", train=24, test=12, progress=False, workers=2)
    assert _files(again) == _files(root)
    # scene i depends only on (seed, split, i): a smaller set is a prefix of a larger one
    prefix = scenes(tmp_path / "prefix", train=5, test=3, progress=False, workers=1)
    for rel, data in _files(prefix).items():
        if rel.endswith(".png"):
            assert data == (root / rel).read_bytes(), rel
    other = scenes(tmp_path / "other", train=5, test=3, seed=1, progress=False, workers=1)
    assert (other / "train/00001.png").read_bytes() != (root / "train/00001.png").read_bytes()


def test_splits_share_no_source(root):
    labels = {s: load_fashion_mnist(s).labels.numpy() for s in SPLITS}
    used = {}
    for split in SPLITS:
        coco = _coco(root, split)
        idx = np.array([a["fashion_mnist_index"] for a in coco["annotations"]])
        cats = np.array([a["category_id"] for a in coco["annotations"]])
        assert len(np.unique(idx)) == len(idx)  # no item pasted twice while the pool lasts
        assert (labels[split][idx] + 1 == cats).all()  # each index is an image of this split, with its class
        used[split] = {im["background"]["photo"] for im in coco["images"]}
        assert used[split] <= set(PHOTOS[split])
        assert read_manifest(root)["splits"][split]["fashion_mnist"]["split"] == split
    assert not set(PHOTOS["train"]) & set(PHOTOS["test"])
    # and no photo of one set is a copy of one in the other (scikit-image's `cat` is `chelsea`)
    digests = {s: {hashlib.sha256(load_photo(n).tobytes()).hexdigest() for n in PHOTOS[s]} for s in SPLITS}
    assert not digests["train"] & digests["test"]


def test_boxes_are_tight_boxes_of_visible_masks(root):
    for split in SPLITS:
        coco = _coco(root, split)
        for im in coco["images"]:
            anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
            masks = [_decode(a) for a in anns]
            semantic = np.array(Image.open(root / "masks" / split / im["file_name"]))
            expected = np.zeros_like(semantic)
            for a, m in zip(anns, masks):
                ys, xs = np.nonzero(m)
                assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert a["area"] == m.sum() > 0 and a["iscrowd"] == 0
                assert not (expected[m] > 0).any()  # visible masks do not overlap
                expected[m] = a["category_id"]
            assert (semantic == expected).all()  # semantic map == union of the visible instance masks


def _square_sources(n: int) -> Sources:
    """Fully filled 28x28 items (the whole frame is the silhouette) on one photo."""
    return Sources("train", np.full((n, 28, 28), 200, np.uint8), np.arange(n) % 10, (load_photo("brick"),),
                   ("brick",))


def test_fully_occluded_items_are_dropped_without_a_trace():
    src = _square_sources(2)
    layout = Layout(size=64, item_sizes=(64, 64), min_visible=0.5)  # every item spans the canvas one way
    empty = compose(src, np.array([], dtype=int), np.random.default_rng(7), layout)
    scene = compose(src, np.array([0, 1]), np.random.default_rng(7), layout)
    assert scene.dropped == 1 and [o.source for o in scene.objects] == [1]
    assert (scene.semantic == 2 * scene.objects[0].mask).all()  # item 1 has label 1 -> semantic 2
    bg = scene.semantic == 0
    assert (scene.image[bg] == empty.image[bg]).all()  # the dropped item left no pixel behind


def test_silhouette_fills_small_holes_only():
    item = np.zeros((28, 28), np.uint8)
    item[2:26, 2:26] = 200
    item[5:7, 5:7] = 0  # a dark 4-pixel pattern: part of the garment
    item[12:22, 12:22] = 0  # a 100-pixel opening: background (a bag's handle)
    sil = silhouette(item)
    assert sil[5:7, 5:7].all() and not sil[12:22, 12:22].any() and not sil[0].any()


def test_object_sizes_cover_coco_ranges(root):
    for split in SPLITS:
        sizes = read_manifest(root)["splits"][split]["object_sizes"]
        assert all(sizes[k] > 0 for k in ("small", "medium", "large")), sizes


def test_coco_file_loads_in_pycocotools_and_open_dataset(root):
    from pycocotools.coco import COCO

    from pvtv2.detection import DetectionDataset, open_dataset

    paths = scenes_paths(root)
    coco = COCO(str(paths.annotations("test")))
    assert sorted(coco.getCatIds()) == list(range(1, 11))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES[1:])
    data = open_dataset(root, split="train", strict=True)
    assert len(data.images) == 24 and data.class_names[1:] == list(CLASS_NAMES[1:])
    image, target = DetectionDataset(data, with_masks=True)[0]
    anns = [a for a in _coco(root, "train")["annotations"] if a["image_id"] == target["image_id"]]
    assert image.shape == (3, 256, 256) and len(target["boxes"]) == len(anns)
    assert (target["masks"].numpy().astype(bool) == np.stack([_decode(a) for a in anns])).all()


def test_semantic_folder_loads(root):
    from pvtv2.segmentation import folder

    paths = scenes_paths(root)
    ds = folder(paths.images("train"), paths.masks("train"), num_classes=paths.num_classes,
                class_names=paths.class_names, on_error="raise")
    sample = ds[0]
    assert len(ds) == 24 and sample["image"].shape == (3, 256, 256)
    assert 0 < int(sample["mask"].max()) <= 10


def test_corrupt_cache_is_detected_and_regenerated(tmp_path, caplog):
    first = scenes(tmp_path / "s", **SMALL)
    original = _files(first)
    image = first / "test" / "00002.png"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    image.write_bytes(bytes(data))
    assert "test/00002.png does not match its SHA-256" in check(first)
    assert check(first, hashes=False) is None
    assert scenes(tmp_path / "s", **SMALL) == first and "regenerating" in caplog.text
    assert _files(first) == original
    (first / "masks" / "train" / "00001.png").write_bytes(b"")  # truncated
    assert "0 bytes" in check(first, hashes=False)
    (first / "manifest.json").write_text("{")
    scenes(tmp_path / "s", **SMALL)
    assert _files(first) == original
    with pytest.raises(DataError, match="not a complete scenes set"):
        scenes_paths(tmp_path)


def test_interrupted_generation_leaves_nothing_half_written(tmp_path, monkeypatch):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".s.partial-{int(done.stdout)}-x"  # left by a process that died mid-generation
    (stale / "train").mkdir(parents=True)
    previous = scenes(tmp_path / "s", **SMALL)
    assert not stale.exists()
    before = _files(previous)

    real = gen.compose
    calls = []

    def stop_midway(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "compose", stop_midway)
    with pytest.raises(KeyboardInterrupt):
        scenes(tmp_path / "s", **{**SMALL, "seed": 5})  # other settings: would replace the root at the end
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        scenes(tmp_path / "new", **SMALL)
    assert _files(previous) == before  # the previous root is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["s"]


def test_refuses_folders_that_are_not_scenes_and_bad_settings(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds other files"):
        scenes(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(DataError, match="at least one train"):
        scenes(tmp_path / "x", **{**SMALL, "train": 0})
    with pytest.raises(DataError, match="item sizes"):
        scenes(tmp_path / "x", **{**SMALL, "item_sizes": (8, 500)})


def test_cli_writes_and_checks_into_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PVTV2_CACHE", str(tmp_path / "cache"))
    args = ["data", "scenes", "--train", "3", "--test", "2", "--size", "96", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    written = Path(out.splitlines()[0])
    assert written.parent == tmp_path / "cache" / "scenes" and "train: 3 scenes" in out
    assert written == default_root(gen.ScenesSpec(3, 2, 0, Layout(96, item_sizes=(4, 72))))
    assert main(["data", "scenes", "--check", str(written)]) == 0
    shutil.rmtree(written / "test")
    assert main(["data", "scenes", "--check", str(written)]) == 2
    assert "is missing" in capsys.readouterr().err


def test_default_dense_runs_train_on_scenes_and_score_held_out(tmp_path, monkeypatch, capsys):
    """``pvtv2 det train`` / ``pvtv2 seg train`` with no data arguments train on the train scenes and score on the
    held-out test scenes (COCO AP; mIoU); ``det eval`` / ``seg eval`` take the word ``scenes`` too."""
    import json

    from pvtv2.cli import main as cli

    monkeypatch.setenv("PVTV2_CACHE", str(tmp_path / "cache"))  # generated once, here
    small = ["--scenes", "8", "4", "64", "--steps", "2", "--batch-size", "2", "--workers", "0", "--threads", "1",
             "--no-progress", "--backbone-overrides", "depths=1,1,1,1"]
    assert cli(["det", "train", "--train-sizes", "64", "--max-size", "64", "--test-size", "64", "--warmup-steps", "0",
                "--out", str(tmp_path / "det"), *small]) == 0
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    assert (config["recipe"], config["arch"], config["backbone"], config["data"]) == ("scenes", "retinanet",
                                                                                     "pvt_v2_b0", "scenes")
    pretrained = Path(config["backbone_weights"])  # the default starts from the (here tiny) pretraining
    assert pretrained.name == "best.pth" and pretrained.parent.parent == tmp_path / "cache" / "pretrained"
    summary = json.loads((tmp_path / "det" / "summary.json").read_text())
    assert "bbox_AP" in summary["metrics"] and (tmp_path / "det" / "predictions.png").is_file()
    capsys.readouterr()
    assert cli(["det", "eval", "--checkpoint", str(tmp_path / "det" / "last.pth"), "--data", "scenes",
                "--scenes", "8", "4", "64"]) == 0
    assert "bbox  AP" in capsys.readouterr().out
    assert cli(["seg", "train", "--crop-size", "64", "--scale", "64", "64", "--test-scale", "64", "64",
                "--out", str(tmp_path / "seg"), *small]) == 0
    summary = json.loads((tmp_path / "seg" / "summary.json").read_text())
    assert 0 <= summary["metrics"]["val_miou"] <= 1
    capsys.readouterr()
    assert cli(["seg", "eval", "scenes", "--scenes", "8", "4", "64", "--checkpoint",
                str(tmp_path / "seg" / "last.pth")]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "scenes").glob("64px-*"))) == 1  # both tasks read the same generated set
