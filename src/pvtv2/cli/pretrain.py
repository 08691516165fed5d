"""``--backbone-weights fashion-mnist``: the dense tasks' backbone pretrained by this package, made on first use.

The paper fine-tunes ImageNet-pretrained backbones; offline, the nearest thing this package can make itself is its
classification main job (``pvtv2 train``: the backbone trained on Fashion-MNIST, about ten CPU minutes). Asked for
by name, it is trained once into the cache (``$PVTV2_CACHE/pretrained/<backbone>-fashion-mnist-<key>/``, with its
own progress bar and run directory), continued from its ``last.pth`` if an earlier try was interrupted, and reused
afterwards; the key hashes the classification recipe, so another backbone or ``--backbone-overrides`` gets its own.
Only the Fashion-MNIST *training* images are used: nothing of the scenes' test split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .._io import folder_lock
from ..weights.io import PRETRAININGS

log = logging.getLogger(__name__)

PRETRAINED = PRETRAININGS[0]  # "fashion-mnist"; the checkpoint reader knows the names, for its hint
# Changes to the classification recipe of the pretraining (tests make it tiny; users get the main job as it is).
RECIPE_CHANGES: dict[str, Any] = {}


def pretraining_config(backbone: str, overrides: dict[str, Any]) -> Any:
    """The classification main job's recipe for ``backbone`` (with the dense run's backbone overrides)."""
    from ..classification import get_recipe

    return get_recipe("fashion_mnist").replace(backbone=backbone, backbone_overrides=dict(overrides), **RECIPE_CHANGES)


def fashion_mnist_backbone(backbone: str, overrides: dict[str, Any] | None = None, *, progress: bool = True) -> Path:
    """``best.pth`` of the Fashion-MNIST classifier of ``backbone``: from the cache, else trained now."""
    from ..classification import ClassificationTask
    from ..data.scenes.store import cache_dir
    from ..engine import train

    cfg = pretraining_config(backbone, overrides or {})
    # the key: what decides the weights (not how the run is driven: stop_after, threads, workers, periods)
    decisive = {k: v for k, v in cfg.to_dict().items() if k not in ("stop_after", "eval_every", "ckpt_every",
                                                                     "log_every", "workers", "device", "threads")}
    earlier = {new: old for old, new in cfg.RENAMED.items()}  # the fields' earlier names: caches made before stay valid
    decisive = {earlier.get(k, k): v for k, v in decisive.items()}
    key = hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:10]
    folder = cache_dir() / "pretrained" / f"{backbone}-{PRETRAINED}-{key}"
    best = folder / "best.pth"
    # two trainings started together on a new machine: one pretrains, the other waits for it; the processes of one
    # torchrun job take no lock (they pretrain together, as one distributed run)
    torchrun_ranks = int(os.environ.get("WORLD_SIZE", "1")) > 1  # read before the process group exists
    with contextlib.nullcontext() if torchrun_ranks else folder_lock(folder):
        if (folder / "summary.json").is_file() and best.is_file():
            log.info("backbone weights: the %s classifier pretrained on Fashion-MNIST in %s", backbone, folder)
            return best
        resume = folder / "last.pth" if (folder / "last.pth").is_file() else None
        log.info("backbone weights: pretraining %s on Fashion-MNIST first (the classification main job, once; "
                 "kept in %s)%s", backbone, folder, " - continuing an interrupted try" if resume else "")
        train(ClassificationTask(cfg), out=folder, resume=resume, progress=progress)
    return best


def resolve_backbone_weights(cfg: Any, *, progress: bool = True) -> Any:
    """``cfg`` with ``backbone_weights="fashion-mnist"`` replaced by the pretrained file's path (made if missing)."""
    if getattr(cfg, "backbone_weights", None) != PRETRAINED:
        return cfg
    path = fashion_mnist_backbone(cfg.backbone, cfg.backbone_overrides, progress=progress)
    return cfg.replace(backbone_weights=str(path))
