"""What ``pvtv2 serve`` serves: the models of its four panels, loaded once, and one function per panel that runs a
model on a decoded photo and returns JSON-able results with the time the call took.

Checkpoints go through the package's own loaders (all ``torch.load(weights_only=True)``, never pickle):
:func:`pvtv2.classification.inference.load_classifier`, :func:`pvtv2.detection.inference.load_detector` (released
mmdet files included) and :func:`pvtv2.segmentation.checkpoint.load_segmentor` (released mmseg files included).
Without a checkpoint each panel gets a B0 model with random weights (labelled so on the page): an ImageNet-layout
``pvt_v2_b0`` classifier, a Mask R-CNN-B0 with the 80 COCO classes and a Semantic FPN-B0 with the 150 ADE20K ones.

The page can switch the model of the classification, detection and segmentation panels (:func:`switch`) among the
choices the server lists at start-up (:attr:`Models.choices`): the start-up model, a B0 with random weights, and the
checkpoints :func:`scan_runs` finds under ``--runs`` (each file read once, weights only, to see which panel it fits).
The client names a choice by its id, never by a path; the last few loaded models are kept (:data:`CACHE_SIZE`).

The attention panel reads the classifier (a PVT): :func:`pvtv2.analysis.attention.attention_maps` on the photo
resized as ``pvtv2 attention`` resizes it (shorter side to the classifier's input size, aspect kept).
"""

from __future__ import annotations

import base64
import io
import threading
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import CheckpointError, DataError

if TYPE_CHECKING:  # the task packages load with the models (torchvision, timm: seconds), not with this module
    from ..classification.inference import Classifier
    from ..segmentation.datasets import DatasetMeta

log = logging.getLogger(__name__)

RANDOM, NONE = "random", "none"
RANDOM_SOURCE = "random weights"
CHOOSABLE = ("classify", "detect", "segment")  # the panels whose model the page can switch (attention follows)
CACHE_SIZE = 4  # loaded models kept for switching back (besides the ones in use)
MAX_RUN_FILES = 50  # checkpoint files read by scan_runs at most


@dataclass
class Panel:
    """What the page shows about the model of one panel."""

    task: str  # "classify", "detect", "segment" or "attention"
    name: str  # e.g. "pvt_v2_b0", "mask_rcnn / pvt_v2_b0"
    source: str  # the checkpoint path, or "random weights"
    random: bool
    load_ms: float
    details: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """The JSON the page reads (``/api/info``)."""
        return {"task": self.task, "name": self.name, "source": self.source, "random": self.random,
                "load_ms": round(self.load_ms, 1), **self.details}


@dataclass
class Choice:
    """One model the page can pick for a panel; the client sends ``id`` only."""

    id: str  # "startup", "random" or "run<N>"
    panel: str  # "classify", "detect" or "segment"
    label: str  # what the <select> shows
    spec: str  # what the loaders take: a path, "random" or a registered model name

    def info(self) -> dict[str, str]:
        return {"id": self.id, "label": self.label}


@dataclass
class Models:
    """The served models (``None``: panel off), their panels, and one lock: a single model call at a time."""

    classifier: Classifier | None = None
    detector: nn.Module | None = None
    det_meta: dict[str, Any] | None = None
    segmentor: nn.Module | None = None
    seg_meta: DatasetMeta | None = None
    seg_scale: tuple[int, int] = (2048, 512)
    panels: dict[str, Panel] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    choices: dict[str, list[Choice]] = field(default_factory=dict)  # per choosable panel that is on
    current: dict[str, str] = field(default_factory=dict)  # panel -> id of the choice in use
    options: dict[str, Any] = field(default_factory=dict)  # classifier_model, det_size, seg_size
    cache: OrderedDict[tuple[str, str], dict[str, Any]] = field(default_factory=OrderedDict)

    def choice_info(self) -> dict[str, Any]:
        """``/api/info``'s ``choices``: per panel the current id and the options."""
        return {k: {"current": self.current.get(k), "options": [c.info() for c in v]} for k, v in self.choices.items()}


def _ms(t0: float) -> float:
    return round(1000 * (time.perf_counter() - t0), 1)


@contextmanager
def _seeded() -> Iterator[None]:
    """Random weights that are the same at every start (seed 0), leaving the caller's generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _load_classifier(spec: str, model: str) -> tuple[Classifier, bool]:
    """``spec``: a registered model name (random weights), ``official`` / ``hf-hub:...`` (weights of ``model``), a
    ``pvtv2 train`` checkpoint or a weights file of ``model``."""
    from ..classification.inference import Classifier, imagenet_classes, load_classifier
    from ..models import create_model, list_models
    from ..weights import read_checkpoint
    from ..weights.release import IMAGENET_EVAL

    if spec in list_models():
        ids, names = imagenet_classes()
        with _seeded():
            net = create_model(spec).eval()
        return Classifier(net, ids, names, dict(IMAGENET_EVAL), RANDOM_SOURCE, spec), True
    if spec == "official" or spec.startswith("hf-hub:"):
        return load_classifier(weights=spec, model=model), False
    if not Path(spec).is_file():
        raise CheckpointError(f"--classifier {spec}: neither a file nor a registered model name (e.g. pvt_v2_b0; "
                              "'pvtv2 models' lists them)")
    from ..engine.checkpoint import FORMAT

    if read_checkpoint(spec).get("format") == FORMAT:  # a pvtv2 train run: model, classes, preprocessing
        return load_classifier(checkpoint=spec), False
    return load_classifier(weights=spec, model=model), False


def _variant(cfg: Any) -> str:
    """The registered name whose architecture ``cfg`` has (drop rates aside), else ``"PVT"``."""
    from ..models import list_models, model_info

    keys = ("embed_dims", "depths", "num_heads", "mlp_ratios", "sr_ratios", "attn_mode", "overlap_patch_embed",
            "conv_ffn", "cls_token")
    for name in list_models():
        if all(getattr(model_info(name).cfg, k) == getattr(cfg, k, None) for k in keys):
            return name
    return "PVT"


def _build(panel: str, spec: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Load one panel's model: the :class:`Models` attributes to set, and ``panels`` (attention with the classifier)."""
    t0 = time.perf_counter()
    if panel == "classify":
        clf, random = _load_classifier(spec, opts.get("classifier_model", "pvt_v2_b0"))
        pvt = hasattr(clf.model, "forward_tokens") and hasattr(clf.model, "stages")
        panels = {"classify": Panel("classify", clf.name, clf.source, random, _ms(t0),
                                    {"classes": len(clf.class_names)})}
        if pvt:
            panels["attention"] = Panel("attention", clf.name, clf.source, random, 0.0,
                                        {"size": int(clf.preprocess.get("size", 224))})
        return {"classifier": clf, "panels": panels}
    if panel == "detect":
        from ..detection.inference import build_from_meta, detector_meta, load_detector
        from ..detection.interop.mmdet import COCO_CLASSES

        det_size = opts.get("det_size")
        if spec == RANDOM:
            size = det_size or 640
            meta = detector_meta("mask_rcnn", backbone="pvt_v2_b0", class_names=["background", *COCO_CLASSES],
                                 min_size=size, max_size=size * 1333 // 800,
                                 options={"box_score_thresh": 0.0, "box_detections_per_img": 30})
            with _seeded():
                detector = build_from_meta(meta).eval()
        else:
            max_size = None if det_size is None else det_size * 1333 // 800
            detector, meta = load_detector(spec, min_size=det_size, max_size=max_size)
        p = Panel("detect", f"{meta.get('arch', '?')} / {meta.get('backbone', '?')}",
                  RANDOM_SOURCE if spec == RANDOM else spec, spec == RANDOM, _ms(t0),
                  {"classes": len(meta["class_names"]) - 1, "test_size": meta.get("min_size"),
                   "default_score": 0.0 if spec == RANDOM else 0.5})
        return {"detector": detector, "det_meta": meta, "panels": {"detect": p}}
    from ..segmentation import ADE20K_CLASSES, DatasetMeta, load_segmentor, semantic_fpn

    if spec == RANDOM:
        with _seeded():
            segmentor = semantic_fpn(backbone="pvt_v2_b0", num_classes=len(ADE20K_CLASSES)).eval()
        seg_meta = DatasetMeta(len(ADE20K_CLASSES), ADE20K_CLASSES, 255, True)
        name = "semantic_fpn / pvt_v2_b0"
    else:
        segmentor, seg_meta = load_segmentor(spec)
        segmentor.eval()
        name = f"semantic_fpn / {_variant(segmentor.backbone.model.cfg)}"
    p = Panel("segment", name, RANDOM_SOURCE if spec == RANDOM else spec, spec == RANDOM, _ms(t0),
              {"classes": seg_meta.num_classes, "test_size": opts.get("seg_size", 512)})
    return {"segmentor": segmentor, "seg_meta": seg_meta, "panels": {"segment": p}}


def _apply(m: Models, panel: str, state: dict[str, Any]) -> None:
    for k, v in state.items():
        if k != "panels":
            setattr(m, k, v)
    if panel == "classify":
        m.panels.pop("attention", None)  # attention follows the classifier (a PVT only)
    m.panels.update(state["panels"])


def checkpoint_panel(path: str | Path) -> str | None:
    """The panel a checkpoint file fits (``classify``, ``detect``, ``segment``) or ``None``, from its keys and
    description; read weights only (``.safetensors``: the keys only). Raises on a file that cannot be read."""
    from ..detection.interop.mmdet import is_mmdet_checkpoint
    from ..segmentation.mmseg import is_mmseg_checkpoint
    from ..weights import read_checkpoint

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            ckpt: Any = dict.fromkeys(f.keys())
    else:
        try:  # mmap: the tensors are not read
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - a legacy (non-zip) file, or not a checkpoint: read_checkpoint says which
            ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        return None
    if is_mmseg_checkpoint(ckpt):
        return "segment"
    if is_mmdet_checkpoint(ckpt):
        return "detect"
    record = ckpt.get("extra") if ckpt.get("format") == "pvtv2-train" else ckpt
    if isinstance(record, dict) and "seg_model" in record:
        return "segment"
    if isinstance(record, dict) and isinstance(record.get("detector"), dict):
        return "detect"
    if ckpt.get("format") == "pvtv2-train":
        return "classify"
    sd = next((ckpt[k] for k in ("model", "state_dict") if isinstance(ckpt.get(k), dict)), ckpt)
    keys = [k for k in sd if isinstance(k, str)]
    if any(k.startswith(("neck.", "decode_head.", "rpn.", "roi_heads.", "bbox_head.")) for k in keys):
        return None
    if any(k.split(".")[-2:] in (["head", "weight"], ["classifier", "weight"]) for k in keys):
        return "classify"  # a weights file of --classifier-model
    return None


def scan_runs(root: str | Path, limit: int = MAX_RUN_FILES) -> list[tuple[Path, str]]:
    """Checkpoints under ``root`` (``*/best.pth``, ``*/last.pth`` first, then ``*.pth`` / ``*.safetensors`` up to 3
    levels deep; at most ``limit`` files read) with the panel each fits; unreadable or unfitting files are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    paths: list[Path] = []
    deep = (("*/" * d) + ext for d in range(3) for ext in ("*.pth", "*.safetensors"))  # DIR/x, DIR/a/x, DIR/a/b/x
    for pattern in ("*/best.pth", "*/last.pth", *deep):
        for p in sorted(root.glob(pattern)):
            if p.is_file() and p not in paths:
                paths.append(p)
    if len(paths) > limit:
        log.debug("%s: %d checkpoint files, reading the first %d", root, len(paths), limit)
    found = []
    for p in paths[:limit]:
        try:
            panel = checkpoint_panel(p)
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never fatal
            log.debug("%s skipped: %s", p, " ".join(str(e).split())[:200] or type(e).__name__)
            continue
        if panel is None:
            log.debug("%s skipped: fits no panel", p)
        else:
            found.append((p, panel))
    return found


def _same_file(a: str, b: Path) -> bool:
    try:
        return Path(a).is_file() and Path(a).resolve() == b.resolve()
    except OSError:
        return False


def load_models(
    classifier: str = "pvt_v2_b0",
    detector: str = RANDOM,
    segmentor: str = RANDOM,
    *,
    classifier_model: str = "pvt_v2_b0",
    det_size: int | None = None,
    seg_size: int = 512,
    runs: str | Path | None = None,
) -> Models:
    """Load (or build with random weights) each panel's model once, and list the choices the page can switch to.

    Args:
        classifier: a registered model name (random weights), ``official``, a ``pvtv2 train`` checkpoint or a weights
            file of ``classifier_model``; ``none``: no classification or attention panel.
        detector: a detection checkpoint (``pvtv2 det train``, ``save_detector`` or a released mmdet file),
            ``random`` (Mask R-CNN-B0, COCO classes) or ``none``.
        segmentor: a segmentation checkpoint (``pvtv2 seg train``, ``save_segmentor`` or released mmseg),
            ``random`` (Semantic FPN-B0, ADE20K classes) or ``none``.
        classifier_model: the model name of a classifier weights file.
        det_size: the detector's test size (shorter side; default: the checkpoint's, 640 for ``random``).
        seg_size: the segmentor's test size (shorter side, longer side at most 2048).
        runs: a directory whose checkpoints (:func:`scan_runs`) the page may switch to.

    Raises:
        CheckpointError: a file that is not a checkpoint of that kind (one line).
    """
    m = Models(seg_scale=(2048, seg_size),
               options={"classifier_model": classifier_model, "det_size": det_size, "seg_size": seg_size})
    specs = {"classify": classifier, "detect": detector, "segment": segmentor}
    randoms = {"classify": "pvt_v2_b0", "detect": RANDOM, "segment": RANDOM}
    for panel, spec in specs.items():
        if spec == NONE:
            continue
        state = _build(panel, spec, m.options)
        _apply(m, panel, state)
        m.cache[(panel, "startup")] = state
        p = m.panels[panel]
        m.choices[panel] = [Choice("startup", panel, f"{p.name} · {p.source} (start-up)", spec)]
        m.current[panel] = "startup"
        if spec != randoms[panel]:
            m.choices[panel].append(Choice("random", panel, "B0, random weights", randoms[panel]))
    for i, (path, panel) in enumerate(scan_runs(runs) if runs else []):
        if panel in m.choices and not _same_file(specs[panel], path):
            m.choices[panel].append(Choice(f"run{i}", panel, str(path), str(path)))
    return m


def switch(m: Models, panel: str, choice_id: str) -> dict[str, Any]:
    """Put choice ``choice_id`` (an id of :attr:`Models.choices`) in ``panel``; returns the panels' new info.

    Raises:
        DataError: an unknown panel or id, or a choice that fails to load (one line; the panel keeps its model).
    """
    if panel not in m.choices:
        raise DataError(f"no model to choose for panel {panel!r}; the panels are {', '.join(m.choices) or 'none'}")
    choice = next((c for c in m.choices[panel] if c.id == choice_id), None)
    if choice is None:
        raise DataError(f"no model choice {choice_id!r} for {panel}: choose one of those /api/info lists")
    with m.lock:
        key = (panel, choice.id)
        state = m.cache.get(key)
        if state is None:
            try:
                state = _build(panel, choice.spec, m.options)
            except Exception as e:  # noqa: BLE001 - one line for the page, the traceback for the log
                log.debug("loading %s failed", choice.spec, exc_info=True)
                reason = " ".join(str(e).split()) or type(e).__name__
                raise DataError(f"{choice.label} cannot be loaded: {reason}") from None
            m.cache[key] = state
            while len(m.cache) > CACHE_SIZE:
                m.cache.popitem(last=False)
        m.cache.move_to_end(key)
        _apply(m, panel, state)
        m.current[panel] = choice.id
        panels = {k: m.panels[k].info() for k in ((panel, "attention") if panel == "classify" else (panel,))
                  if k in m.panels}
    return {"panel": panel, "choice": choice.id, "panels": panels, "attention": "attention" in m.panels}


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
