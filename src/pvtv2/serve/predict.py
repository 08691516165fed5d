"""One function per panel of ``pvtv2 serve``: run the panel's model (:mod:`.models`) on a decoded photo and return
JSON-able results with the time the call took.

The attention panel reads the classifier (a PVT): :func:`pvtv2.analysis.attention.attention_maps` on the photo
resized as ``pvtv2 attention`` resizes it (shorter side to the classifier's input size, aspect kept).
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import DataError
from .models import Models, _ms


def _png_url(pixels: np.ndarray, mode: str) -> str:
    """A ``data:image/png`` URL of ``pixels`` (``(H, W, C)`` uint8 in PIL ``mode``)."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _need(model: Any, task: str) -> None:
    if model is None:
        raise DataError(f"no {task} model is served (the server was started with it set to 'none')")


def classify(models: Models, image: Image.Image, topk: int = 5) -> dict[str, Any]:
    """Top-``topk`` classes of an RGB photo with the classifier's own evaluation preprocessing."""
    with models.lock, torch.inference_mode():
        clf = models.classifier  # read under the lock: the page may switch it
        _need(clf, "classification")
        assert clf is not None
        t0 = time.perf_counter()
        x = clf.transform()(image)[None]  # (1, C, S, S)
        probs = clf.model(x).float().softmax(dim=-1)[0]  # (num_classes,)
        p, i = probs.topk(min(topk, probs.numel()))
        ms = _ms(t0)
    top = [{"class": clf.class_names[j], "prob": round(float(q), 5)} for q, j in zip(p.tolist(), i.tolist())]
    return {"top": top, "ms": ms, "input": list(x.shape[-2:])}


class _KeepOutput(nn.Module):
    """Runs a detector for :func:`pvtv2.detection.inference.detect` and keeps its raw output (the masks)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.output: dict[str, torch.Tensor] = {}

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = self.detector(images)
        self.output = {k: v.cpu() for k, v in out[0].items()}
        return out


def _key(label: int, score: float, box: list[float]) -> tuple[Any, ...]:
    return label, round(score, 4), tuple(round(v, 1) for v in box)


def detect(models: Models, image: Image.Image, max_detections: int = 100) -> dict[str, Any]:
    """Every detection the detector returns (its own test threshold), best first, each with its mask (instance
    segmentation) as a PNG cropped to its box: the page filters them by score without running the model again."""
    from ..detection.inference import detect as detect_image

    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W) uint8
    with models.lock, torch.inference_mode():
        _need(models.detector, "detection")
        assert models.detector is not None and models.det_meta is not None
        runner = _KeepOutput(models.detector)
        t0 = time.perf_counter()
        found = detect_image(runner, pixels, class_names=models.det_meta["class_names"], score_thresh=-1.0)
        ms = _ms(t0)
    raw = runner.output
    where: dict[tuple[Any, ...], list[int]] = {}  # detect()'s rows -> indices of the raw output (its masks)
    for i, (box, label, score) in enumerate(zip(raw["boxes"].tolist(), raw["labels"].tolist(),
                                                raw["scores"].tolist())):
        where.setdefault(_key(label, score, box), []).append(i)
    H, W = pixels.shape[-2:]
    rows = []
    for d in found[:max_detections]:
        row = dict(d)
        idx = where.get(_key(d["label"], d["score"], d["box"]), [])
        i = idx.pop(0) if idx else None
        if i is not None and "masks" in raw:
            x0, y0 = max(0, int(d["box"][0])), max(0, int(d["box"][1]))
            x1, y1 = min(W, int(np.ceil(d["box"][2]))), min(H, int(np.ceil(d["box"][3])))
            inside = raw["masks"][i, 0, y0:y1, x0:x1] >= 0.5  # (N, 1, H, W) probabilities -> (h, w) bool
            if x1 > x0 and y1 > y0 and bool(inside.any()):
                alpha = inside.numpy().astype(np.uint8) * 255
                la = np.stack([np.full_like(alpha, 255), alpha], axis=-1)  # (h, w) -> (h, w, 2): white, alpha
                row["mask"] = {"x": x0, "y": y0, "png": _png_url(la, "LA")}
        rows.append(row)
    return {"detections": rows, "ms": ms, "masks": "masks" in raw, "size": [W, H]}


def segment(models: Models, image: Image.Image, legend: int = 12) -> dict[str, Any]:
    """The label map as an RGBA colour layer (PNG, transparent where unpainted) and the classes it shows."""
    from ..segmentation import palette_for, predict

    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W) uint8
    with models.lock, torch.inference_mode():
        _need(models.segmentor, "segmentation")
        assert models.segmentor is not None and models.seg_meta is not None
        seg_meta = models.seg_meta
        t0 = time.perf_counter()
        labels = predict(models.segmentor, pixels, scale=models.seg_scale).cpu()  # (H, W) class indices
        ms = _ms(t0)
    names = list(seg_meta.class_names)
    colours = np.asarray(palette_for(names), dtype=np.uint8)  # (K, 3)
    lab = labels.numpy()
    rgba = np.zeros((*lab.shape, 4), dtype=np.uint8)  # (H, W, 4)
    rgba[..., :3] = colours[lab]
    rgba[..., 3] = np.where(colours[lab].any(-1), 255, 0)  # black (a background class): left unpainted
    ids, counts = torch.unique(labels, return_counts=True)
    order = torch.argsort(counts, descending=True)[:legend]
    rows = [{"class": names[int(ids[i])], "share": round(int(counts[i]) / labels.numel(), 4),
             "color": "#%02x%02x%02x" % tuple(int(c) for c in colours[int(ids[i])])} for i in order]
    return {"overlay": _png_url(rgba, "RGBA"), "legend": rows, "classes": len(ids), "ms": ms,
            "size": [lab.shape[1], lab.shape[0]]}


def attention(models: Models, image: Image.Image, y: float, x: float) -> dict[str, Any]:
    """The attention each stage's last block of the classifier pays to its keys from the query at pixel ``(y, x)``
    of ``image``: per stage the key grid (mean over heads) and the input pixels it covers."""
    from ..analysis.attention import attention_maps
    from ..classification.inference import whole_image_input

    W0, H0 = image.size
    if not (0 <= y < H0 and 0 <= x < W0):
        raise DataError(f"query (y, x) = ({y:g}, {x:g}) is outside the {H0}x{W0} photo")
    with models.lock, torch.inference_mode():
        clf = models.classifier
        if clf is None or "attention" not in models.panels:
            raise DataError("no attention panel: the classifier is not a PVT (or classification is off)")
        t0 = time.perf_counter()
        # as `pvtv2 attention`: the shorter side to the classifier's input size, aspect kept
        inp = whole_image_input(image, clf.preprocess)  # (1, C, H, W)
        H, W = inp.shape[-2:]
        maps = attention_maps(clf.model, inp, query=(y * H / H0, x * W / W0))
        ms = _ms(t0)
    stages = []
    for s in maps.stages:
        w = s.weights[0].mean(0)  # (heads, kh, kw) -> (kh, kw)
        stages.append({"stage": s.stage + 1, "block": s.block + 1, "queries": list(s.query_grid),
                       "keys": list(s.key_grid), "extent": list(s.key_extent), "mode": s.mode,
                       "reduction": s.reduction, "weights": [round(v, 6) for v in w.flatten().tolist()],
                       "min": float(w.min()), "max": float(w.max()), "uniform": 1 / w.numel()})
    return {"stages": stages, "input": [H, W], "query": [y, x], "ms": ms}
