"""``--backbone-weights fashion-mnist`` / ``scene-items``: the dense tasks' backbone pretrained by this package, made on
first use.

The paper fine-tunes ImageNet-pretrained backbones; offline, this package makes its own pretraining, a classifier
trained on data it has:

- ``fashion-mnist``: the classification main job (``pvtv2 train``: Fashion-MNIST's 28 px items on black, zero-padded
  to 32 px);
- ``scene-items``: the ``scene_items`` recipe (``pvtv2 train --recipe scene_items``): the same training items drawn on
  the train photographs as the scenes draw them (colour, shading, flips, crops of the photographs), 12-64 px on a
  64 px canvas, i.e. at the pixel sizes of the scenes' small and medium objects.

Asked for by name, it is trained once into the cache (``$PVTV2_CACHE/pretrained/<backbone>-<name>-<key>/``, with its
own progress bar and run directory), continued from its ``last.pth`` if an earlier try was interrupted, and reused
afterwards; the key hashes the classification recipe, so another backbone or ``--backbone-overrides`` gets its own.
Only training images are used (Fashion-MNIST's training set, the scenes' train photographs): nothing of the scenes'
test split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# --backbone-weights name -> (classification recipe, what it is trained on)
PRETRAININGS: dict[str, tuple[str, str]] = {
    "fashion-mnist": ("fashion_mnist", "Fashion-MNIST"),
    "scene-items": ("scene_items", "Fashion-MNIST items drawn on the train photographs"),
}
PRETRAINED = "fashion-mnist"  # the first one, kept for callers of fashion_mnist_backbone
# Changes to the classification recipe of the pretraining (tests make it tiny; users get the recipe as it is).
RECIPE_CHANGES: dict[str, Any] = {}


def pretraining_config(backbone: str, overrides: dict[str, Any], name: str = PRETRAINED) -> Any:
    """The classification recipe of pretraining ``name`` for ``backbone`` (with the dense run's backbone overrides)."""
    from ..classification import get_recipe

    recipe = PRETRAININGS[name][0]
    return get_recipe(recipe).replace(backbone=backbone, backbone_overrides=dict(overrides), **RECIPE_CHANGES)


def pretrained_backbone(name: str, backbone: str, overrides: dict[str, Any] | None = None, *,
                        progress: bool = True) -> Path:
    """``best.pth`` of pretraining ``name`` (a key of :data:`PRETRAININGS`) of ``backbone``: from the cache, else
    trained now."""
    from ..classification import ClassificationTask
    from ..data.scenes.store import cache_dir
    from ..engine import train

    cfg = pretraining_config(backbone, overrides or {}, name)
    # the key: what decides the weights (not how the run is driven: stop_after, threads, workers, periods)
    decisive = {k: v for k, v in cfg.to_dict().items() if k not in ("stop_after", "eval_every", "ckpt_every",
                                                                     "log_every", "workers", "device", "threads")}
    earlier = {new: old for old, new in cfg.RENAMED.items()}  # the fields' earlier names: caches made before stay valid
    decisive = {earlier.get(k, k): v for k, v in decisive.items()}
    key = hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:10]
    folder = cache_dir() / "pretrained" / f"{backbone}-{name}-{key}"
    best = folder / "best.pth"
    what = PRETRAININGS[name][1]
    if (folder / "summary.json").is_file() and best.is_file():
        log.info("backbone weights: the %s classifier pretrained on %s in %s", backbone, what, folder)
        return best
    resume = folder / "last.pth" if (folder / "last.pth").is_file() else None
    log.info("backbone weights: pretraining %s on %s first (the %s recipe, once; kept in %s)%s", backbone, what,
             cfg.recipe, folder, " - continuing an interrupted try" if resume else "")
    train(ClassificationTask(cfg), out=folder, resume=resume, progress=progress)
    return best


def fashion_mnist_backbone(backbone: str, overrides: dict[str, Any] | None = None, *, progress: bool = True) -> Path:
    """``best.pth`` of the Fashion-MNIST classifier of ``backbone``: from the cache, else trained now."""
    return pretrained_backbone(PRETRAINED, backbone, overrides, progress=progress)


def resolve_backbone_weights(cfg: Any, *, progress: bool = True) -> Any:
    """``cfg`` with ``backbone_weights`` named in :data:`PRETRAININGS` replaced by the pretrained file's path (made if
    missing)."""
    name = getattr(cfg, "backbone_weights", None)
    if name not in PRETRAININGS:
        return cfg
    path = pretrained_backbone(name, cfg.backbone, cfg.backbone_overrides, progress=progress)
    return cfg.replace(backbone_weights=str(path))
