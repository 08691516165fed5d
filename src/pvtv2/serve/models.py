"""What ``pvtv2 serve`` serves: the models of its four panels, loaded once, and the choices the page may switch to.

Checkpoints go through the package's own loaders (all ``torch.load(weights_only=True)``, never pickle):
:func:`pvtv2.classification.inference.load_classifier`, :func:`pvtv2.detection.inference.load_detector` (released
mmdet files included) and :func:`pvtv2.segmentation.checkpoint.load_segmentor` (released mmseg files included).
Without a checkpoint each panel gets a B0 model with random weights (labelled so on the page): an ImageNet-layout
``pvt_v2_b0`` classifier, a Mask R-CNN-B0 with the 80 COCO classes and a Semantic FPN-B0 with the 150 ADE20K ones.

The page can switch the model of the classification, detection and segmentation panels (:func:`switch`) among the
choices the server lists at start-up (:attr:`Models.choices`): the start-up model, a B0 with random weights, and the
checkpoints :func:`scan_runs` finds under ``--runs`` (each file read once, weights only, to see which panel it fits).
The client names a choice by its id, never by a path; the last few loaded models are kept (:data:`CACHE_SIZE`).
The calls that run a panel's model on a photo are in :mod:`.predict`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
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
    from ..engine.model_file import model_description
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
    record = model_description(ckpt) or {}
    if "seg_model" in record:
        return "segment"
    if isinstance(record.get("detector"), dict):
        return "detect"
    if "preprocess" in record:
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
