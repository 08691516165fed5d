"""Detection data: COCO/VOC loading, the bad-input cases (skip-and-count or fail by flag), masks, transforms v2."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pvtv2.detection.data.annotations import load_coco, load_voc, open_dataset
from pvtv2.detection.data.dataset import DetectionDataset, decode_masks
from pvtv2.detection.recipes import eval_transforms, get_recipe, train_transforms
from pvtv2.errors import DataError

@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: much faster than two on the shared, oversubscribed CPUs these tests run on."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


LABELME = Path("/usr/share/doc/labelme-examples/examples")
CATEGORIES = [{"id": 0, "name": "_background_"}, {"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]


def write_coco(root: Path, n: int = 2, size: tuple[int, int] = (96, 128), annotations: list | None = None,
               images: list | None = None, categories: list | None = None) -> Path:
    """A small COCO set of real JPEG files: image i has a bright square (category 3) at a position depending
    on i, annotated with a box and a polygon. Returns the JSON path."""
    h, w = size
    (root / "img").mkdir(parents=True, exist_ok=True)
    imgs, anns = [], []
    for i in range(n):
        pixels = np.full((h, w, 3), 30, dtype=np.uint8)
        x, y, s = 10 + 20 * i, 12 + 8 * i, 48
        pixels[y : y + s, x : x + s] = (230, 200, 40)
        Image.fromarray(pixels).save(root / "img" / f"{i}.jpg", quality=95)
        imgs.append({"id": i, "file_name": f"img/{i}.jpg", "width": w, "height": h})
        poly = [x, y, x + s, y, x + s, y + s, x, y + s]
        anns.append({"id": i, "image_id": i, "category_id": 3, "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0,
                     "segmentation": [poly]})
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images if images is not None else imgs,
                                "annotations": annotations if annotations is not None else anns,
                                "categories": categories or CATEGORIES}))
    return path


def test_reads_coco_skips_background_and_maps_labels(tmp_path: Path) -> None:
    data = load_coco(write_coco(tmp_path))
    assert [c["name"] for c in data.categories] == ["square", "disc"]  # _background_ dropped
    assert data.class_names == ["__background__", "square", "disc"] and data.num_classes == 2
    assert data.label_to_category() == {1: 3, 2: 7}
    assert len(data.images) == 2 and not data.problems
    inst = data.images[1].instances[0]
    assert inst.label == 1 and inst.box == [30.0, 20.0, 78.0, 68.0]


def test_malformed_json_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "ann.json"
    bad.write_text('{"images": [ {"id": 1,')
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco(bad)
    bad.write_text('{"annotations": []}')
    with pytest.raises(DataError, match="needs 'images' and 'categories'"):
        load_coco(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_coco(tmp_path / "nope.json")


def test_missing_image_skipped_and_counted_or_fails_strict(tmp_path: Path) -> None:
    path = write_coco(tmp_path, n=3)
    (tmp_path / "img" / "1.jpg").unlink()
    data = load_coco(path)
    assert [r.id for r in data.images] == [0, 2]
    assert data.problems == {"missing_image": 1}
    assert "missing_image: 1" in data.summary()
    with pytest.raises(DataError, match=r"1\.jpg does not exist.*--on-bad-data skip to skip and count"):
        load_coco(path, strict=True)


def test_unreadable_image_is_skipped(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    (tmp_path / "img" / "0.jpg").write_bytes(b"not a jpeg")
    data = load_coco(path)
    assert data.problems == {"unreadable_image": 1} and len(data.images) == 1


def _one_box(tmp_path: Path, bbox: list[float], category_id: int = 3, image_id: int = 0) -> Path:
    ann = [{"id": 1, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0}]
    return write_coco(tmp_path, n=1, annotations=ann)


@pytest.mark.parametrize(
    ("bbox", "kind", "kept"),
    [
        ([10, 10, 0, 20], "zero_area_box", None),  # zero width
        ([10, 10, 20, -5], "zero_area_box", None),  # negative height
        ([200, 10, 20, 20], "zero_area_box", None),  # entirely right of the 128-px-wide image
        ([100, 80, 60, 40], "clipped_box", [100.0, 80.0, 128.0, 96.0]),  # partly outside: clipped, counted
        ([0, 0, 128.4, 96.3], None, [0.0, 0.0, 128.0, 96.0]),  # within rounding tolerance: clipped silently
    ],
)
def test_boxes_outside_or_degenerate(tmp_path: Path, bbox: list[float], kind: str | None, kept: list | None) -> None:
    path = _one_box(tmp_path, bbox)
    data = load_coco(path)
    boxes = [i.box for i in data.images[0].instances]
    assert boxes == ([kept] if kept else [])
    assert data.problems == ({kind: 1} if kind else {})
    if kind:
        with pytest.raises(DataError, match="area|outside"):
            load_coco(path, strict=True)


def test_unknown_category_and_image_ids(tmp_path: Path) -> None:
    data = load_coco(_one_box(tmp_path, [5, 5, 20, 20], category_id=42))
    assert data.problems == {"unknown_category": 1} and not data.images[0].instances
    with pytest.raises(DataError, match="category id 42 is not in 'categories'"):
        load_coco(tmp_path / "ann.json", strict=True)
    data = load_coco(_one_box(tmp_path, [5, 5, 20, 20], image_id=99))
    assert data.problems == {"unknown_image_id": 1}


def test_malformed_annotation_entries_are_counted(tmp_path: Path) -> None:
    anns = [{"id": 1, "image_id": 0, "category_id": 3, "bbox": [1, 2, 3]},  # 3 numbers
            {"id": 2, "image_id": 0, "category_id": 3, "bbox": [5, 5, 20, 20], "segmentation": [[1, 2, 3]]},
            {"id": 3, "image_id": 0, "bbox": [5, 5, 20, 20]}]  # no category
    data = load_coco(write_coco(tmp_path, n=1, annotations=anns))
    assert data.problems == {"bad_annotation": 2, "bad_segmentation": 1}


def test_empty_images_dropped_for_training_kept_for_eval(tmp_path: Path) -> None:
    path = write_coco(tmp_path, n=3)
    raw = json.loads(path.read_text())
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] != 1]
    path.write_text(json.dumps(raw))
    data = load_coco(path)
    train = DetectionDataset(data, drop_empty=True)
    assert len(train) == 2 and train.num_empty == 1
    assert len(DetectionDataset(data)) == 3
    _, target = DetectionDataset(data)[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    raw["annotations"] = []
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="no usable images"):
        DetectionDataset(load_coco(path), drop_empty=True)


def test_crowd_kept_for_eval_not_trained_on_and_rle_masks(tmp_path: Path) -> None:
    from pycocotools import mask as coco_mask

    path = write_coco(tmp_path, n=1)
    raw = json.loads(path.read_text())
    crowd = np.zeros((96, 128), dtype=np.uint8)
    crowd[60:90, 80:120] = 1
    rle = coco_mask.encode(np.asfortranarray(crowd))
    raw["annotations"].append({"id": 5, "image_id": 0, "category_id": 7, "bbox": [80, 60, 40, 30], "iscrowd": 1,
                               "segmentation": {"size": [96, 128], "counts": rle["counts"].decode()}})
    uncompressed = {"size": [96, 128], "counts": [96 * 5 + 10, 20, 96 * 128 - 96 * 5 - 30]}  # column-major runs
    raw["annotations"].append({"id": 6, "image_id": 0, "category_id": 7, "bbox": [5, 10, 1, 20], "iscrowd": 0,
                               "segmentation": uncompressed})
    path.write_text(json.dumps(raw))
    data = load_coco(path)
    rec = data.images[0]
    assert [i.iscrowd for i in rec.instances] == [False, True, False] and rec.num_objects == 2
    masks = decode_masks(rec, rec.instances)
    assert masks[0].sum() == 48 * 48  # the polygon square
    assert masks[1].sum() == crowd.sum()  # compressed RLE
    assert masks[2].sum() == 20 and masks[2][10:30, 5].all()  # uncompressed RLE: column 5, rows 10..29
    image, target = DetectionDataset(data, with_masks=True)[0]
    assert target["labels"].tolist() == [1, 2]  # the crowd is not a training target
    assert target["masks"].shape == (2, 96, 128) and image.shape == (3, 96, 128)


def test_gzipped_annotations(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    with gzip.open(tmp_path / "ann.json.gz", "wb") as f:
        f.write(path.read_bytes())
    path.unlink()
    assert len(load_coco(tmp_path / "ann.json").images) == 2  # finds ann.json.gz
    assert len(open_dataset(tmp_path / "ann.json.gz").images) == 2


def test_transforms_move_boxes_and_masks_together(tmp_path: Path) -> None:
    data = load_coco(write_coco(tmp_path, n=1))
    recipe = get_recipe("1x").replace(train_sizes=(48,), max_size=80, flip_prob=1.0)
    image, target = DetectionDataset(data, train_transforms(recipe), with_masks=True)[0]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 48, 64)  # 96x128 -> shorter side 48
    # square x 10..58 of 128 -> scaled by 0.5 -> 5..29, flipped in a 64-wide image -> 35..59
    assert target["boxes"].tolist() == [[35.0, 6.0, 59.0, 30.0]]
    ys, xs = torch.nonzero(target["masks"][0], as_tuple=True)
    assert abs(xs.min().item() - 35) <= 1 and abs(xs.max().item() - 58) <= 1
    image, target = DetectionDataset(data, eval_transforms())[0]
    assert tuple(image.shape) == (3, 96, 128) and image.max() <= 1.0  # eval: no resize (the model does it)


def test_recipes_follow_the_released_schedules() -> None:
    from pvtv2.detection import DETECTORS, DetectionTask

    one, three = get_recipe("1x"), get_recipe("3x")
    assert one.train_sizes == (800,) and one.max_size == 1333 and one.epochs == 12
    assert [round(m * 12) for m in one.milestones] == [8, 11] and one.warmup_steps == 500 and one.decay_norms
    assert one.weight_decay == 1e-4 and one.base_batch == 16 and one.batch_size == 16
    assert DETECTORS["retinanet"].lr == 1e-4 and DETECTORS["mask_rcnn"].lr == 2e-4
    assert DetectionTask(one.replace(arch="mask_rcnn")).default_base_lr() == 2e-4
    assert three.train_sizes[0] == 640 and three.train_sizes[-1] == 800 and len(three.train_sizes) == 161
    assert three.epochs == 36 and three.weight_decay == 0.05 and [round(m * 36) for m in three.milestones] == [27, 33]
    with pytest.raises(Exception, match="unknown recipe '2x'"):
        get_recipe("2x")


def _need_labelme() -> None:
    assert LABELME.is_dir(), f"{LABELME} missing: the Debian package labelme-examples is needed (make setup installs it)"


def test_labelme_coco_and_voc() -> None:
    _need_labelme()
    coco = open_dataset(LABELME / "instance_segmentation/data_dataset_coco/annotations.json")
    assert len(coco.images) == 3 and sum(len(r.instances) for r in coco.images) == 12
    assert len(coco.categories) == 20 and not coco.problems  # _background_ skipped
    voc = open_dataset(LABELME / "bbox_detection/data_dataset_voc")
    assert len(voc.images) == 3 and sum(len(r.instances) for r in voc.images) == 9
    assert {voc.class_names[i.label] for r in voc.images for i in r.instances} == {"person", "bus", "car"}


def test_voc_bad_xml_and_unknown_class(tmp_path: Path) -> None:
    _need_labelme()
    src = LABELME / "bbox_detection/data_dataset_voc"
    root = tmp_path / "voc"
    shutil.copytree(src, root)
    xml = root / "Annotations" / "2011_000003.xml"
    xml.write_text(xml.read_text().replace("<name>person</name>", "<name>unicorn</name>", 1))
    data = load_voc(root)
    assert data.problems == {"unknown_category": 1}
    with pytest.raises(DataError, match="unicorn"):
        load_voc(root, strict=True)
    xml.write_text("<annotation><object>")
    with pytest.raises(DataError, match="not valid XML"):
        load_voc(root)
    with pytest.raises(DataError, match="not a VOC folder|expected a COCO"):
        open_dataset(tmp_path)
