"""Segmentation data: the three layouts on real photos (labelme-examples), gzipped files, bad-input handling,
the mmseg-style transforms and the metrics."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from pvtv2.cli import main as cli_main
from pvtv2.errors import DataError
from pvtv2.segmentation import ConfusionMatrix, ade20k, build_dataset, collate_segmentation, folder, voc
from pvtv2.segmentation.datasets import ResampleOnError
from pvtv2.segmentation.layouts import evaluation_split
from pvtv2.engine.sampling import SeededDataset
from pvtv2.segmentation.transforms import PadTo, RandomCropCatMax, RandomRescale, train_transforms

LABELME = Path("/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc")


def _mask_of(stem: str) -> np.ndarray:
    return np.array(Image.open(LABELME / "SegmentationClassPNG" / f"{stem}.png"))


def _write_mask(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """A folder layout copied from the labelme photos: ``images/*.jpg`` + ``masks/*.png`` (0-20, 255)."""
    for jpg in sorted((LABELME / "JPEGImages").glob("*.jpg")):
        (tmp_path / "images").mkdir(exist_ok=True)
        shutil.copy(jpg, tmp_path / "images" / jpg.name)
        _write_mask(tmp_path / "masks" / f"{jpg.stem}.png", _mask_of(jpg.stem))
    return tmp_path


# --- layouts --------------------------------------------------------------------------------------------------
def test_voc_layout_reads_labelme_export() -> None:
    ds = voc(LABELME)
    assert len(ds) == 3 and ds.meta.num_classes == 21
    assert ds.meta.class_names[16] == "potted plant"  # a space inside a name survives
    s = ds[0]
    assert isinstance(s["mask"], tv_tensors.Mask) and s["mask"].dtype == torch.int64
    assert s["image"].shape[-2:] == s["mask"].shape and s["image"].dtype == torch.uint8
    assert set(s["mask"].unique().tolist()) == {0, 5, 15, 255}  # background, bottle, person, void
    assert ds.check() == {}


def test_debian_gzipped_files_are_read(tmp_path: Path) -> None:
    shutil.copytree(LABELME / "JPEGImages", tmp_path / "JPEGImages")
    (tmp_path / "SegmentationClass").mkdir()
    for png in (LABELME / "SegmentationClassPNG").glob("*.png"):
        (tmp_path / "SegmentationClass" / f"{png.name}.gz").write_bytes(gzip.compress(png.read_bytes()))
    (tmp_path / "class_names.txt.gz").write_bytes(gzip.compress((LABELME / "class_names.txt").read_bytes()))
    ds, ref = voc(tmp_path), voc(LABELME)
    assert len(ds) == 3 and ds.meta == ref.meta
    assert torch.equal(ds[2]["mask"], ref[2]["mask"])


def test_ade20k_layout_reduces_zero_label(tmp_path: Path) -> None:
    jpg = LABELME / "JPEGImages" / "2011_000006.jpg"
    (tmp_path / "images" / "validation").mkdir(parents=True)
    shutil.copy(jpg, tmp_path / "images" / "validation" / jpg.name)
    raw = _mask_of(jpg.stem).astype(np.int64)
    ade = np.where(raw == 255, 0, raw + 1)  # ADE20K: 0 = other (ignored), classes from 1
    _write_mask(tmp_path / "annotations" / "validation" / f"{jpg.stem}.png", ade)
    assert evaluation_split(tmp_path, None) == "validation" and evaluation_split(LABELME, None) is None
    ds = build_dataset(tmp_path, split="validation")
    assert ds.meta.num_classes == 150 and ds.meta.reduce_zero_label and ds.meta.class_names[0] == "wall"
    assert torch.equal(ds[0]["mask"], torch.from_numpy(raw))  # 0 -> 255, k -> k - 1
    with pytest.raises(DataError, match="does not exist"):
        ade20k(tmp_path, "training")


def test_folder_layout_and_unpaired_files(plain: Path) -> None:
    Image.new("RGB", (40, 40)).save(plain / "images" / "no_mask.jpg")
    ds = folder(plain / "images", plain / "masks", num_classes=21)
    assert len(ds) == 3  # the unpaired image is left out (logged)
    with pytest.raises(DataError, match="1 images without a mask"):
        folder(plain / "images", plain / "masks", num_classes=21, on_error="raise")
    with pytest.raises(DataError, match="cannot tell the layout"):
        build_dataset(plain / "images")


# --- bad input: raise with one clear line, or skip and count ---------------------------------------------------
def _break(plain: Path, case: str) -> str:
    img, msk = plain / "images" / "2011_000003.jpg", plain / "masks" / "2011_000003.png"
    if case == "size":
        _write_mask(msk, _mask_of("2011_000003")[:-10])
        return "masks must match their image"
    if case == "labels":
        arr = _mask_of("2011_000003").copy()
        arr[0, :5] = 40  # 21 classes: 40 is out of range (255 stays the ignore value)
        _write_mask(msk, arr)
        return r"label values \[40\] outside 0..20"
    if case == "image":
        img.write_bytes(b"not a jpeg at all")
        return "cannot read image"
    if case == "mask":
        msk.write_bytes(b"\x89PNG truncated")
        return "cannot read mask"
    Image.fromarray(np.zeros((338, 500, 3), np.uint8)).save(msk)  # colour mask
    return "colour"


@pytest.mark.parametrize("case", ["size", "labels", "image", "mask", "rgb"])
def test_bad_samples_raise_or_skip(plain: Path, case: str) -> None:
    message = _break(plain, case)
    strict = folder(plain / "images", plain / "masks", num_classes=21, on_error="raise")
    with pytest.raises(DataError, match=message) as err:
        strict[0]
    assert "\n" not in str(err.value)
    lenient = folder(plain / "images", plain / "masks", num_classes=21)
    assert lenient[0] is None and lenient[1] is not None
    assert list(lenient.check()) == [str(plain / "images" / "2011_000003.jpg")]
    batch = collate_segmentation([lenient[i] for i in range(3)])
    assert batch["skipped"] == 1 and len(batch["path"]) == 2
    replaced = collate_segmentation([ResampleOnError(lenient)[0]])  # training: the next good sample instead
    assert replaced["skipped"] == 1 and replaced["path"] == [str(plain / "images" / "2011_000006.jpg")]


def test_bad_data_through_the_cli(plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _break(plain, "labels")
    code = cli_main(["seg", "train", "--data", str(plain / "images"), "--masks", str(plain / "masks"),
                     "--num-classes", "21", "--on-bad-data", "error", "--steps", "1", "--batch-size", "3",
                     "--workers", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: mask") and "outside 0..20" in err and len(err.splitlines()) == 1
    assert cli_main(["seg", "eval", str(tmp_path / "missing"), "--checkpoint", str(tmp_path / "x.pth")]) == 2


# --- transforms ---------------------------------------------------------------------------------------------------
def test_train_transforms_shapes_and_padding() -> None:
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 5, (60, 80)))
    t = train_transforms(crop_size=96, scale=(320, 80), ratio_range=(0.5, 0.5))  # resize to 40x53, pad to 96
    x, y = t(image, mask)
    assert x.shape == (3, 96, 96) and x.dtype == torch.float32 and y.shape == (96, 96) and y.dtype == torch.int64
    assert (y[40:] == 255).all() and (y[:, 53:] == 255).all() and (x[:, 40:] == 0).all()
    assert set(y[:40, :53].unique().tolist()) <= set(range(5))


def test_random_rescale_keeps_ratio_within_bounds() -> None:
    image = tv_tensors.Image(torch.zeros(3, 375, 500, dtype=torch.uint8))
    for _ in range(5):
        out = RandomRescale((2048, 512), (0.5, 2.0))(image)
        h, w = out.shape[-2:]
        assert 256 <= h <= 1024 and abs(w / h - 500 / 375) < 0.01
    assert RandomRescale((2048, 512), (1.0, 1.0))(image).shape[-2:] == (512, 683)  # mmcv rounding


def test_crop_respects_category_ratio_cap() -> None:
    mask = torch.zeros(100, 100, dtype=torch.int64)
    mask[:, 70:] = 1  # class 0 covers the left 70%: only crops reaching into the right part pass the cap
    image = tv_tensors.Image(torch.zeros(3, 100, 100, dtype=torch.uint8))
    shares = []
    for seed in range(20):
        torch.manual_seed(seed)
        _, y = RandomCropCatMax(40, cat_max_ratio=0.75)(image, tv_tensors.Mask(mask))
        shares.append((y == 0).float().mean().item())
    torch.manual_seed(0)
    uncapped = [(RandomCropCatMax(40, cat_max_ratio=1.0)(image, tv_tensors.Mask(mask))[1] == 0).float().mean()
                for _ in range(20)]
    assert sum(s == 1.0 for s in shares) < sum(float(s) == 1.0 for s in uncapped)
    assert PadTo(50)(tv_tensors.Mask(mask[:30, :40])).shape == (50, 50)


def test_seeded_samples_are_reproducible() -> None:
    ds = SeededDataset(voc(LABELME, transforms=train_transforms(64, (256, 64))))
    a, b = ds[(1, 123)], ds[(1, 123)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], ds[(1, 124)]["image"])


def test_confusion_matrix_metrics() -> None:
    cm = ConfusionMatrix(3, ignore_index=255)
    target = torch.tensor([0, 0, 1, 1, 255, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    cm.update(pred, target)
    r = cm.compute(["a", "b", "c"])
    assert r["per_class"][0]["iou"] == pytest.approx(1 / 3) and r["per_class"][1]["iou"] == pytest.approx(2 / 3)
    assert r["per_class"][2]["iou"] == 0.0 and r["pixel_acc"] == pytest.approx(3 / 5)
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3) and r["classes_present"] == 3
    # what it mixes up: 1 of a's 2 pixels as b, c's 1 pixel as a (the ignored pixel nowhere)
    assert r["confusions"] == [{"truth": "a", "predicted": "b", "pixels": 1, "share": 0.5},
                               {"truth": "c", "predicted": "a", "pixels": 1, "share": 1.0}]
