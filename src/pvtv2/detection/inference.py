"""From a detection checkpoint to drawn detections: ``load_detector`` and ``detect``.

A detection checkpoint written by :func:`pvtv2.detection.train` (a pvtv2 training checkpoint) carries the
detector's description in ``extra["detector"]``: architecture, backbone, classes, sizes. That is all that is
needed to rebuild it, so ``pvtv2 detect IMAGE --checkpoint last.pth`` takes no other option.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.model_file import read_model_file, save_model_file
from ..errors import DataError, PVTError
from ..runtime import as_module
from ..weights import read_checkpoint
from .registry import build_detector

_BUILD_KEYS = ("backbone", "num_classes", "stages", "backbone_overrides")


def detector_meta(
    arch: str,
    *,
    backbone: str,
    class_names: list[str],
    min_size: int,
    max_size: int,
    stages: list[int] | None = None,
    backbone_overrides: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The description a checkpoint stores to rebuild its detector (plain values only). ``class_names`` are
    indexed by label (index 0 = background, so ``num_classes`` is one less); ``options`` are constructor
    arguments (``score_thresh``, ``box_batch_size_per_image``...)."""
    meta: dict[str, Any] = {"arch": arch, "backbone": backbone, "num_classes": len(class_names) - 1,
                            "class_names": list(class_names), "min_size": int(min_size), "max_size": int(max_size)}
    if stages is not None:
        meta["stages"] = [int(s) for s in stages]
    if backbone_overrides:
        meta["backbone_overrides"] = {k: list(v) if isinstance(v, tuple) else v for k, v in backbone_overrides.items()}
    if options:
        meta["options"] = dict(options)
    return meta


def build_from_meta(meta: dict[str, Any], **kwargs: Any) -> nn.Module:
    """A freshly initialised detector as ``meta`` describes it (``kwargs`` go to the builder, e.g. score_thresh)."""
    args = {k: meta[k] for k in _BUILD_KEYS if k in meta}
    if "backbone_overrides" in args:
        args["backbone_overrides"] = {k: tuple(v) if isinstance(v, list) else v
                                      for k, v in args["backbone_overrides"].items()}
    options = {**meta.get("options", {}), **kwargs}
    return build_detector(meta["arch"], min_size=meta["min_size"], max_size=meta["max_size"], **args, **options)


def load_detector(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu", use_ema: bool = False, **kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the detector of a detection checkpoint, in eval mode; returns it and its description.

    Args:
        path: a checkpoint written by ``pvtv2 det train`` (``last.pth``) or :func:`save_detector`, or a released
            mmdet 2.x detector (:func:`pvtv2.detection.interop.mmdet.load_mmdet_checkpoint`, e.g.
            ``retinanet_pvt_v2_b2_fpn_1x_coco.pth``).
        device: where to put it.
        use_ema: the run's EMA weights instead of the model's (a training checkpoint of a run with ``--ema``).
        **kwargs: builder options to override (``score_thresh=0.3``, ``min_size=600``...).
    """
    from .interop.mmdet import is_mmdet_checkpoint, mmdet_detector

    ckpt = read_checkpoint(path)
    if is_mmdet_checkpoint(ckpt):
        options = {k: v for k, v in kwargs.items() if v is not None}
        return mmdet_detector(ckpt, where=str(path), device=device, **options)
    saved = read_model_file(path, task="detection", needs="detector", use_ema=use_ema, checkpoint=ckpt,
                            hint="train one with 'pvtv2 det train' or write it with pvtv2.detection.save_detector")
    meta = saved.description["detector"]
    for size in ("min_size", "max_size"):
        if size in kwargs and kwargs[size] is not None:
            meta = {**meta, size: kwargs.pop(size)}
        kwargs.pop(size, None)
    model = saved.load_into(build_from_meta(meta, **kwargs))
    return model.to(device).eval(), meta


def save_detector(model: nn.Module, meta: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a detector's weights and description (inference only; training checkpoints come from ``train``)."""
    return save_model_file(model, {"detector": meta}, path)


@torch.no_grad()
def detect(
    model: nn.Module,
    image: torch.Tensor,
    *,
    class_names: list[str] | None = None,
    score_thresh: float = 0.5,
    save_vis: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Detections on one image, as ``[{"label", "name", "score", "box" (x1, y1, x2, y2 pixels)}]`` sorted by
    score, keeping scores >= ``score_thresh``; ``save_vis`` also writes the drawn image (PNG).

    Args:
        model: a torchvision detector (e.g. from :func:`load_detector`).
        image: ``(3, H, W)`` uint8.
        class_names: names by label (index 0 = background).
        score_thresh: lowest score returned and drawn.
        save_vis: PNG path for the drawing.
    """
    model.eval()
    device = next(model.parameters()).device
    out = {k: v.cpu() for k, v in model([image.to(device).float() / 255])[0].items()}
    top = int(out["labels"].max()) if len(out["labels"]) else 0
    names = class_names or [str(i) for i in range(top + 1)]
    if save_vis is not None:
        from .visualize import draw_detections, save_png

        save_png(draw_detections(image, out, names, score_thresh=score_thresh), save_vis)
    found = []
    for box, label, score in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
        if score >= score_thresh:
            name = names[label] if label < len(names) else str(label)
            found.append({"label": label, "name": name, "score": round(score, 4), "box": [round(v, 1) for v in box]})
    return sorted(found, key=lambda d: -d["score"])


def run_backbone_with(detector: nn.Module, backend: str = "torch", precision: str = "fp32") -> nn.Module:
    """Run ``detector``'s backbone and FPN (its dense features) with ``backend`` in ``precision``, in place.

    ``"torch"``: under autocast where the device has ``precision`` natively; ``"openvino"``: converted and compiled
    by OpenVINO (CPU; fp32 or bf16; once per padded input size) (:func:`pvtv2.runtime.as_module`). Heads, box
    decoding, NMS and RoI heads stay in PyTorch in fp32.
    """
    if backend not in ("torch", "openvino"):
        raise PVTError(f"a detector's backbone runs with backend torch or openvino, not {backend!r}")
    device = next(detector.parameters()).device
    detector.backbone = as_module(detector.backbone, backend, precision=precision, device=device)
    return detector


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    split: str | None = None,
    images: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    strict: bool = False,
    workers: int = 0,
    backend: str = "torch",
    precision: str = "fp32",
    **kwargs: Any,
) -> dict[str, dict[str, float]]:
    """COCO AP of a detection checkpoint on a dataset; writes ``results.json`` and ``metrics.json`` into ``out``.

    Args:
        checkpoint: a detection checkpoint (``pvtv2 det train``'s ``last.pth``).
        data: COCO .json, COCO root (with ``split``) or VOC folder, with the checkpoint's classes.
        split: split of a COCO root or VOC folder.
        images: image folder of a COCO .json.
        out: directory for the two JSON files (None: write nothing).
        batch_size: images per forward pass.
        device: where to run.
        strict: raise on the first bad annotation instead of skipping and counting.
        workers: DataLoader processes.
        backend, precision: how the backbone and FPN run (:func:`run_backbone_with`).
        **kwargs: detector options (``min_size``, ``max_size``, ``score_thresh``...).
    """
    import json

    from .._io import atomic_write_text
    from .data.annotations import open_dataset
    from .data.dataset import DetectionDataset
    from .evaluation.coco_eval import evaluate
    from .recipes import eval_transforms

    model, meta = load_detector(checkpoint, device=device, **kwargs)
    run_backbone_with(model, backend, precision)
    dataset = open_dataset(data, split=split, images=images, strict=strict)
    if dataset.class_names != meta["class_names"]:
        raise DataError(f"{data} has classes {dataset.class_names[1:6]}..., the checkpoint was trained on "
                        f"{meta['class_names'][1:6]}...: evaluate on a set with the same categories")
    results_path = Path(out) / "results.json" if out is not None else None
    metrics = evaluate(model, DetectionDataset(dataset, eval_transforms()), batch_size=batch_size, device=device,
                       results_path=results_path, num_workers=workers)
    if out is not None:
        atomic_write_text(Path(out) / "metrics.json", json.dumps(
            {"checkpoint": str(checkpoint), "data": str(data), "images": len(dataset.images), **metrics}, indent=2))
    return metrics
