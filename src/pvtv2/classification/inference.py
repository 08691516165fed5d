"""Evaluation on an ImageFolder and prediction on image files, for released weights or our own checkpoints.

>>> clf = load_classifier(checkpoint="runs/fm/best.pth")             # the run's model, classes, preprocessing
>>> clf = load_classifier(weights="official", model="pvt_v2_b2")      # ImageNet-1K names, 256/224 bicubic
>>> predict(clf, ["cat.jpg"])[0][:2]                                  # top-2 (ImageNet name, probability) pairs
>>> evaluate_folder(clf, "imagenet/val")                              # {"top1": ..., "top5": ..., "n": ..., ...}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import BadImage, load_image
from ..engine.model_file import read_model_file
from ..engine.sampling import loader_workers
from ..errors import CheckpointError, DataError
from ..weights.release import IMAGENET_EVAL
from .evaluate import evaluate
from .folder import IMG_EXTENSIONS, ImageFolder, collate_skip_bad
from .recipes import ClassificationConfig
from .transforms import eval_transform

log = logging.getLogger(__name__)



@dataclass
class Classifier:
    """A model ready for inference and what it needs around it.

    Attributes:
        model: the network (eval mode).
        class_ids: class identifiers matched against ImageFolder folder names (ImageNet synsets, our run's class
            names), or ``None`` when unknown (folders are then taken in sorted order).
        class_names: human-readable names, one per output.
        preprocess: how to turn an image into the model's input (``{"kind": "imagenet"|"fashion_mnist", ...}``).
        source: where the weights came from.
        name: the model name.
    """

    model: nn.Module
    class_ids: list[str] | None
    class_names: list[str]
    preprocess: dict[str, Any]
    source: str
    name: str

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL RGB image -> model input tensor ``(C, S, S)``."""
        return image_transform(self.preprocess)


def imagenet_classes() -> tuple[list[str], list[str]]:
    """ImageNet-1K synsets in the standard class order and their first lemma, from timm's wheel."""
    from importlib.resources import files

    info = files("timm") / "data" / "_info"
    synsets = info.joinpath("imagenet_synsets.txt").read_text().split()
    lemmas = {}
    for line in info.joinpath("imagenet_synset_to_lemma.txt").read_text().splitlines():
        if "\t" in line:
            syn, lemma = line.split("\t", 1)
            lemmas[syn] = lemma.split(",")[0].strip()
    return synsets, [lemmas.get(s, s) for s in synsets]


def image_transform(pre: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """The evaluation preprocessing a model was trained with (see :class:`Classifier`)."""
    if pre.get("kind") == "fashion_mnist":
        return _FashionTransform(pre)
    return eval_transform(int(pre.get("size", 224)), float(pre.get("crop_pct", 0.875)),
                          str(pre.get("interpolation", "bicubic")))


def whole_image_input(photo: Any, pre: dict[str, Any], size: tuple[int, int] | int | None = None
                      ) -> torch.Tensor:
    """The whole photo (no crop) as a classifier's input ``(1, C, H, W)``: resized so that its shorter side is
    ``size`` (an int; default the classifier's input size, else 224) with the aspect kept, or to ``(H, W)`` exactly;
    normalised with the classifier's statistics (a one-channel run gets the photo in grey). For attention maps."""
    from torchvision.transforms import v2

    from .transforms import IMAGENET_MEAN, IMAGENET_STD

    W0, H0 = photo.size
    if isinstance(size, tuple):
        H, W = size
    else:
        short = size or int(pre.get("size", 224))
        H, W = (short, round(W0 * short / H0)) if H0 <= W0 else (round(H0 * short / W0), short)
    mean, std = tuple(pre.get("mean", IMAGENET_MEAN)), tuple(pre.get("std", IMAGENET_STD))
    grey = [v2.Grayscale()] if len(mean) == 1 else []  # a grey run (Fashion-MNIST): its one-channel statistics
    x = v2.Compose(grey + [v2.PILToTensor(), v2.Resize((H, W), antialias=True), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(mean, std)])(photo)
    return x.expand(int(pre.get("channels", 3)), -1, -1)[None]  # (C', H, W) -> (1, C, H, W)


class _FashionTransform:
    """Any photo -> a Fashion-MNIST-like input: grey, fitted into 28x28 on black, zero-padded, normalised."""

    def __init__(self, pre: dict[str, Any]) -> None:
        self.pre = pre

    def __call__(self, img: Any) -> torch.Tensor:
        from PIL import ImageOps

        side, size = int(self.pre["image_size"]), int(self.pre["size"])
        grey = ImageOps.pad(img.convert("L"), (side, side), color=0)
        x = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).reshape(side, side).float() / 255.0
        p = (size - side) // 2
        x = F.pad(x, (p, size - side - p, p, size - side - p))  # (S, S)
        x = (x - self.pre["mean"][0]) / self.pre["std"][0]
        return x[None].expand(int(self.pre.get("channels", 3)), -1, -1).contiguous()  # (C, S, S)


def load_classifier(
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    weights: str | None = None,
    model: str = "pvt_v2_b2",
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    use_ema: bool = False,
) -> Classifier:
    """A classifier from a training checkpoint of ours, or from weights in any format :func:`load_weights` reads.

    Args:
        checkpoint: a ``last.pth``/``best.pth`` of ``pvtv2 train`` (model, classes and preprocessing come with it).
        weights: ``"official"`` (the authors' ImageNet release of ``model``) or a weights file.
        model: registered model name for ``weights``.
        num_classes: head size for ``weights`` (default: read from the file's head; 1000 for ``"official"``).
        device: where to put the model.
        use_ema: take the checkpoint's EMA weights (when the run kept an EMA).
    """
    from ..models import create_model
    from ..weights import head_classes, load_weights, weights_state_dict
    from .task import build_model

    if (checkpoint is None) == (weights is None):
        raise CheckpointError("give exactly one of --checkpoint RUN/best.pth or --weights PATH|official")
    if checkpoint is not None:
        saved = read_model_file(checkpoint, task="classification", needs="preprocess", use_ema=use_ema,
                                hint="use a last.pth / best.pth of 'pvtv2 train', or a weights file with --weights")
        cfg = ClassificationConfig.from_dict(saved.config)
        extra = saved.description
        classes = list(extra.get("classes") or [])
        net = build_model(cfg.replace(backbone_weights=None), len(classes) or int(saved.weights["head.weight"].shape[0]))
        saved.load_into(net)
        names = classes or [str(i) for i in range(net.num_classes)]
        clf = Classifier(net, classes or None, names, dict(extra.get("preprocess") or IMAGENET_EVAL),
                         str(checkpoint), cfg.backbone)
    else:
        assert weights is not None
        sd = weights_state_dict(weights, model)
        n = num_classes or head_classes(sd) or 1000
        net = create_model(model, num_classes=n)
        load_weights(net, sd, ignore_head=None)
        if n == 1000:
            ids, names = imagenet_classes()
        else:
            ids, names = None, [str(i) for i in range(n)]
        clf = Classifier(net, ids, names, dict(IMAGENET_EVAL), str(weights), model)
    clf.model.to(device).eval()
    return clf


def calibration_batches(clf: Classifier, paths: Sequence[str | os.PathLike[str]], limit: int = 300,
                        batch_size: int = 32) -> list[torch.Tensor]:
    """Up to ``limit`` images for int8 calibration, preprocessed as ``clf`` evaluates: image files, or folders
    searched recursively (sorted). Use training images, never the ones to be scored. Unreadable files are skipped
    with a warning.

    Raises:
        DataError: a path that does not exist, or no readable image among ``paths``.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():  # walked in sorted order and left as soon as enough are found (an ImageNet train folder)
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [Path(root, n) for n in sorted(names) if Path(n).suffix.lower() in IMG_EXTENSIONS]
                if len(files) >= limit:
                    break
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"calibration: {path} is neither an image file nor a folder")
        if len(files) >= limit:
            break
    if not files:
        raise DataError(f"calibration: no image files ({', '.join(IMG_EXTENSIONS)}) in {', '.join(map(str, paths))}")
    tf = clf.transform()
    images = []
    for f in files[:limit]:
        try:
            images.append(tf(load_image(f)))  # (C, S, S)
        except BadImage as e:
            log.warning("calibration: skipped %s", e)
    if not images:
        raise DataError(f"calibration: none of the {min(len(files), limit)} image file(s) could be read")
    return list(torch.stack(images).split(batch_size))  # (N, C, S, S) in batches


def _runner(clf: Classifier, backend: str, example: torch.Tensor, device: torch.device,
            precision: str = "fp32", calibration: Sequence[torch.Tensor] | None = None) -> Any:
    if backend == "torch" and precision == "fp32":
        return clf.model
    from ..runtime import prepare

    return prepare(clf.model, backend, precision=precision, example_input=example, device=device,
                   calibration=calibration)


def predict(
    clf: Classifier,
    images: Sequence[str | os.PathLike[str]],
    *,
    topk: int = 5,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    calibration: Sequence[torch.Tensor] | None = None,
) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(class name, probability)`` for each image file (unreadable files raise ``DataError``).

    ``precision="int8"`` (``backend="openvino"``) takes ``calibration`` batches (:func:`calibration_batches`).
    """
    device = torch.device(device)
    tf = clf.transform()
    batch = torch.stack([tf(load_image(p)) for p in images])  # (N, C, S, S)
    run = _runner(clf, backend, batch, device, precision, calibration)
    with torch.inference_mode():
        probs = run(batch.to(device)).float().softmax(dim=-1).cpu()
    k = min(topk, probs.shape[1])
    out = []
    for row in probs:
        p, i = row.topk(k)
        out.append([(clf.class_names[j], float(q)) for q, j in zip(p.tolist(), i.tolist())])
    return out


def save_visualisation(
    path: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    preds: Sequence[Sequence[tuple[str, float]]],
    title: str = "",
) -> Path:
    """A PNG with each image beside a bar chart of its top-k classes (written atomically; see
    :func:`plot_predictions`)."""
    from .._io import atomic_write

    fig = plot_predictions(images, preds, title)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def plot_predictions(
    images: Sequence[str | os.PathLike[str]],
    preds: Sequence[Sequence[tuple[str, float]]],
    title: str = "",
) -> Any:  # matplotlib Figure
    """Each image beside horizontal bars of its top-k classes; rows grow with k so that the names never overlap."""
    from matplotlib.figure import Figure

    n, k = len(images), max((len(p) for p in preds), default=1)
    fig = Figure(figsize=(8, max(2.8, 0.8 + 0.22 * k) * n), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False, width_ratios=[1, 1.3])
    for (ax_img, ax_bar), img_path, pred in zip(axes, images, preds):
        ax_img.imshow(load_image(img_path))
        ax_img.set_title(Path(img_path).name, fontsize=9)
        ax_img.axis("off")
        names = [name for name, _ in pred][::-1]
        probs = [100 * p for _, p in pred][::-1]
        ax_bar.barh(range(len(pred)), probs, color="tab:blue")
        ax_bar.set_yticks(range(len(pred)), names, fontsize=8)
        ax_bar.set_xlim(0, 100)
        ax_bar.set_xlabel("probability (%)", fontsize=8)
        for y, p in enumerate(probs):  # past 80%: inside the bar's end
            inside = p > 80
            ax_bar.text(p - 1 if inside else p + 1, y, f"{p:.1f}", va="center", ha="right" if inside else "left",
                        fontsize=8, color="white" if inside else "black")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def evaluate_folder(
    clf: Classifier,
    root: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    workers: int | None = None,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    on_bad: str = "skip",
    limit: int | None = None,
    precision: str = "fp32",
    calibration: Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 on an ImageFolder (``root/<class>/<image>``) with the model's evaluation preprocessing.

    ``precision="int8"`` (``backend="openvino"``) takes ``calibration`` batches (:func:`calibration_batches`) from
    other images than ``root``'s.

    Folder names are matched to the model's class identifiers (ImageNet synsets for 1000-class weights, the run's
    class names for our checkpoints); without identifiers, sorted folder order must give the model's classes.
    """
    device = torch.device(device)
    ds = ImageFolder(root, clf.transform(), on_bad=on_bad, classes=clf.class_ids)
    if clf.class_ids is None and len(ds.classes) != len(clf.class_names):
        raise DataError(f"{root} has {len(ds.classes)} class folders but the model has {len(clf.class_names)} "
                        "outputs and no class names to match them by")
    base: Any = ds if limit is None else torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    loader = torch.utils.data.DataLoader(base, batch_size=batch_size, num_workers=loader_workers(workers),
                                         collate_fn=collate_skip_bad)  # workers: default one per CPU, at most 4
    size = int(clf.preprocess.get("size", 224))
    example = torch.zeros(min(batch_size, len(base)), int(clf.preprocess.get("channels", 3)), size, size)
    run = _runner(clf, backend, example, device, precision, calibration)
    res = evaluate(run, loader, device, num_classes=len(clf.class_names))
    if res["skipped"]:
        log.warning("%d unreadable image(s) skipped", res["skipped"])
    ran = getattr(run, "precision", "fp32")  # what ran: fp32 where the device has no native bf16/fp16
    return {"model": clf.name, "weights": clf.source, "data": str(root), "backend": backend, "precision": ran,
            "protocol": _protocol(clf.preprocess), "empty_classes": ds.empty_classes, **res}


def _protocol(pre: dict[str, Any]) -> str:
    if pre.get("kind") == "fashion_mnist":
        return f"grey {pre['image_size']} px zero-padded to {pre['size']}"
    size = int(pre.get("size", 224))
    return f"resize {int(size / float(pre.get('crop_pct', 0.875)))} {pre.get('interpolation', 'bicubic')}, " \
           f"center-crop {size}"
