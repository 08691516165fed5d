"""Classification data: Fashion-MNIST IDX reading, the in-memory loader, robust image decoding, ImageFolder with
bad files and empty classes, and the DeiT transforms."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pvtv2.classification.folder import ImageFolder, collate_skip_bad
from pvtv2.classification.tensor_loader import TensorLoader, index_batches
from pvtv2.classification.transforms import AugmentConfig, eval_transform, mixup_fn, train_transform
from pvtv2.data import BadImage, load_fashion_mnist, load_image
from pvtv2.data import fashion_mnist as fm
from pvtv2.engine.sampling import SeededDataset, StepSampler
from pvtv2.errors import DataError


def _write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def tiny_fashion(tmp_path):
    """A torchvision-layout Fashion-MNIST with 20 train / 10 test images (train gzipped, test not)."""
    raw = tmp_path / "FashionMNIST" / "raw"
    rng = np.random.default_rng(0)
    for split, n, gz in (("train", 20, True), ("t10k", 10, False)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return tmp_path


def test_debian_fashion_mnist_loads():
    test = load_fashion_mnist("test")
    assert test.images.shape == (10000, 28, 28) and test.images.dtype == torch.uint8
    assert torch.equal(test.labels.bincount(), torch.full((10,), 1000))
    assert test.classes[9] == "Ankle boot"


def test_torchvision_layout_and_errors(tiny_fashion, tmp_path, monkeypatch):
    train = load_fashion_mnist("train", tiny_fashion)
    assert train.images.shape == (20, 28, 28) and train.labels.tolist()[:3] == [0, 1, 2]
    assert len(load_fashion_mnist("test", tiny_fashion).subset(4)) == 4
    with pytest.raises(DataError, match="no Fashion-MNIST IDX files under"):
        load_fashion_mnist("train", tmp_path / "nothing")
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train")


def test_truncated_idx_is_reported(tiny_fashion):
    path = tiny_fashion / "FashionMNIST/raw/t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist("test", tiny_fashion)


def test_tensor_loader_shapes_normalisation_and_seeded_augmentation(tiny_fashion):
    data = load_fashion_mnist("train", tiny_fashion)
    sampler = StepSampler(len(data), 8, seed=0, steps=2)
    loader = TensorLoader(data, sampler, size=32, channels=3, mean=0.5, std=0.5, crop_pad=2, hflip=True)
    batches = list(loader)
    assert len(batches) == 2
    x, y = batches[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (8,)
    assert torch.equal(x[:, 0], x[:, 2]) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(list(loader)[1][0], batches[1][0])  # same steps -> same augmented images
    plain = TensorLoader(data, index_batches(range(len(data)), 4), size=32, channels=1)
    x0 = next(iter(plain))[0]
    assert x0.shape == (4, 1, 32, 32)
    assert torch.equal(x0[0, 0, 2:30, 2:30] * 255, data.images[0].float())  # centred zero padding
    assert x0[:, :, :2].abs().sum() == 0
    big = TensorLoader(data, index_batches(range(len(data)), 4), size=48, channels=1, resize=42)
    x1 = next(iter(big))[0]
    assert x1.shape == (4, 1, 48, 48) and x1[:, :, :3].abs().sum() == 0 and x1[:, :, 3:45].abs().sum() > 0


def _img(mode: str, size=(40, 30)) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16))
    return Image.new(mode, size, {"RGB": (10, 20, 30), "L": 128, "RGBA": (255, 0, 0, 0), "CMYK": (0, 255, 255, 0),
                                  "P": 3, "LA": (0, 0), "1": 1}[mode])


@pytest.mark.parametrize("mode,ext", [("L", "png"), ("RGBA", "png"), ("CMYK", "jpg"), ("I;16", "png"), ("P", "png"),
                                      ("LA", "png"), ("1", "png")])
def test_any_image_mode_becomes_rgb(tmp_path, mode, ext):
    path = tmp_path / f"x.{ext}"
    _img(mode).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    a = np.asarray(img)
    if mode == "RGBA":  # fully transparent red over white -> white
        assert (a == 255).all()
    if mode == "I;16":  # 16-bit range scaled to 8 bits, not clipped
        assert a.max() > 200 and a.min() == 0


def test_truncated_and_non_images_raise_bad_image(tmp_path):
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "ok.jpg", quality=95)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(BadImage, match="cut.jpg.*truncated"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(BadImage, match="not an image"):
        load_image(tmp_path / "text.jpg")


def _folder(root):
    for cls, n in (("a", 3), ("b", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (48, 40), (40 * i, 80, 120)).save(root / cls / f"{i}.png")
    (root / "empty").mkdir()
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    return root


def test_image_folder_skips_bad_files_and_reports_empty_classes(tmp_path, caplog):
    root = _folder(tmp_path / "train")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolder(root, eval_transform(32, 0.875))
    assert ds.classes == ["a", "b", "empty"] and ds.empty_classes == ["empty"]
    assert "empty class folder" in caplog.text and "empty" in caplog.text
    loader = torch.utils.data.DataLoader(SeededDataset(ds), batch_size=6, collate_fn=collate_skip_bad)
    images, targets, skipped = next(iter(loader))
    assert skipped == 1 and images.shape == (5, 3, 32, 32) and targets.tolist() == [0, 0, 0, 1, 1]
    strict = ImageFolder(root, on_bad="error")
    with pytest.raises(BadImage, match="broken.jpg"):
        [strict[i] for i in range(len(strict))]
    with pytest.raises(DataError, match="class folders the model does not know"):
        ImageFolder(root, classes=["a", "b"])
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing")


def test_seeded_dataset_makes_augmentation_a_function_of_the_seed(tmp_path):
    ds = SeededDataset(ImageFolder(_folder(tmp_path / "t"), train_transform(32, AugmentConfig())))
    a, b, c = ds[(0, 11)][0], ds[(0, 11)][0], ds[(0, 12)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_released_eval_transform_and_mixup():
    tf = eval_transform(224, 0.875, "bicubic")
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:2] == ["Resize", "CenterCrop"] and tf.transforms[0].size == 256
    assert str(tf.transforms[0].interpolation).endswith("BICUBIC")
    x = tf(Image.new("RGB", (500, 300)))
    assert x.shape == (3, 224, 224)
    mix = mixup_fn(AugmentConfig(), num_classes=10)
    xs, ys = mix(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert ys.shape == (4, 10) and torch.allclose(ys.sum(1), torch.ones(4))
    assert mixup_fn(AugmentConfig(mixup=0, cutmix=0), 10) is None
