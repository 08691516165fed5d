"""Scene items: one Fashion-MNIST item on a crop of a photograph, drawn as the scenes draw it, for classification.

A pretraining closer to the scenes than Fashion-MNIST's 28 px items on black: each sample is composed by the scenes'
own :func:`~.compose.compose` (background crop, scale, stretch, flip, colour and shading) with one item whose longer
side is drawn log-uniformly from 12 px to the canvas side, so a 64 px canvas shows the items at the pixel sizes of the
scenes' small and medium objects. Only the *train* split's sources are used (Fashion-MNIST's training images, the train
photographs); the last :data:`HELD_OUT` training images are kept apart to choose the checkpoint, so nothing of the
test scenes is seen. A training sample is drawn anew each time it is read (from torch's generator, which the
DataLoader seeds per worker); an evaluation sample is the same every time.
"""

from __future__ import annotations

import numpy as np
import torch

from .compose import Layout, compose
from .sources import Sources, load_sources

HELD_OUT = 5000  # Fashion-MNIST training images kept apart for choosing the pretraining's checkpoint
SMALLEST = 12  # px: the scenes' smallest item side (Layout.item_sizes)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the dense tasks' normalisation


class SceneItems(torch.utils.data.Dataset):
    """``(image (3, S, S) float, label)`` samples of Fashion-MNIST training items composed on train photographs.

    Args:
        part: ``"train"`` (the first 55,000 training images, drawn anew on every read) or ``"val"`` (the last
            :data:`HELD_OUT`, fixed).
        size: canvas side in pixels.
        data_dir: Fashion-MNIST location (none: the Debian package).
        seed: the evaluation samples' seed.
        sources: the train split's loaded sources (loaded here if not given).
    """

    def __init__(self, part: str, size: int = 64, data_dir: str | None = None, *, seed: int = 0,
                 sources: Sources | None = None) -> None:
        if part not in ("train", "val"):
            raise ValueError(f"part must be 'train' or 'val', not {part!r}")
        self.src = sources if sources is not None else load_sources("train", data_dir)
        n = len(self.src.items)
        self.indices = np.arange(n - HELD_OUT) if part == "train" else np.arange(n - HELD_OUT, n)
        self.part, self.seed = part, seed
        self.layout = Layout(size=size, min_objects=1, max_objects=1, item_sizes=(min(SMALLEST, size), size))
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @property
    def classes(self) -> list[str]:
        from ..fashion_mnist import CLASSES

        return list(CLASSES)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[i])
        if self.part == "train":
            rng = np.random.default_rng(int(torch.randint(2**62, ())))
        else:
            rng = np.random.default_rng([self.seed, index])
        scene = compose(self.src, np.array([index]), rng, self.layout)  # one item: never occluded
        x = torch.from_numpy(scene.image).permute(2, 0, 1).float().div_(255)  # (S, S, 3) -> (3, S, S)
        return (x - self.mean) / self.std, int(self.src.labels[index])
