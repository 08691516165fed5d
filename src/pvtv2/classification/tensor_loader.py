"""A batch pipeline for datasets held in memory as uint8 tensors (Fashion-MNIST): no PIL, no workers.

Each batch is gathered, augmented (random crop with zero padding, horizontal flip), normalised and expanded to
the model's channels as whole-tensor operations on the training device. The augmentation of a sample is a
function of its seed from :class:`~pvtv2.engine.sampling.StepSampler`, so resumed and multi-process runs see
exactly the images a single uninterrupted run sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..data.fashion_mnist import TensorDataset


class TensorLoader:
    """Iterate ``(images float (B, C, S, S), labels (B,))`` batches of an in-memory dataset.

    Args:
        data: the split (uint8 ``(N, H, W)`` images).
        batches: the batches to read, each a list of ``(index, augmentation seed)`` (a
            :class:`~pvtv2.engine.sampling.StepSampler`, or :func:`index_batches` for evaluation).
        size: output side; images are zero-padded (centred) from ``H`` to ``size``.
        channels: output channels (1, or 3 by repeating the grey channel).
        mean, std: normalisation of the [0, 1] pixel values.
        crop_pad: random-crop translation range in pixels (0: no random crop).
        hflip: apply random horizontal flips.
        device: where batches are built (the training device).
        resize: first rescale the images (bilinear, once, kept as uint8) to ``resize x resize``.
    """

    def __init__(
        self,
        data: TensorDataset,
        batches: Iterable[list[tuple[int, int]]],
        *,
        size: int = 32,
        channels: int = 3,
        mean: float = 0.0,
        std: float = 1.0,
        crop_pad: int = 0,
        hflip: bool = False,
        device: torch.device | str = "cpu",
        resize: int | None = None,
    ) -> None:
        self.data, self.batches = data, batches
        self.size, self.channels, self.mean, self.std = size, channels, mean, std
        self.crop_pad, self.hflip = crop_pad, hflip
        self.device = torch.device(device)
        images = data.images
        if resize is not None and tuple(images.shape[-2:]) != (resize, resize):
            scaled = F.interpolate(images[:, None].float(), size=(resize, resize), mode="bilinear", antialias=True)
            images = scaled[:, 0].round().clamp(0, 255).to(torch.uint8)  # (N, r, r)
        h, w = images.shape[-2:]
        if size < max(h, w):
            raise ValueError(f"size {size} is smaller than the {h}x{w} images")
        pt, pl = (size - h) // 2, (size - w) // 2
        padded = F.pad(images, (pl + crop_pad, size - w - pl + crop_pad, pt + crop_pad, size - h - pt + crop_pad))
        self.images = padded.to(self.device)  # (N, S + 2p, S + 2p) uint8
        self.labels = data.labels.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for pairs in self.batches:
            idx = torch.tensor([i for i, _ in pairs], device=self.device)
            seeds = torch.tensor([s for _, s in pairs], device=self.device)
            yield self._batch(idx, seeds)

    def _batch(self, idx: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = self.images[idx]  # (B, S + 2p, S + 2p) uint8
        s, p = self.size, self.crop_pad
        if p > 0:
            k = 2 * p + 1
            oy, ox = seed % k, (seed // k) % k  # per-sample offsets in [0, 2p]
            ar = torch.arange(s, device=imgs.device)
            rows = (oy[:, None] + ar)[:, :, None]  # (B, S, 1)
            cols = (ox[:, None] + ar)[:, None, :]  # (B, 1, S)
            imgs = imgs[torch.arange(len(idx), device=imgs.device)[:, None, None], rows, cols]  # (B, S, S)
        if self.hflip:
            flip = ((seed // 7919) % 2 == 1)[:, None, None]  # independent of the crop offsets
            imgs = torch.where(flip, imgs.flip(-1), imgs)
        x = (imgs.float() / 255.0 - self.mean) / self.std
        x = x[:, None].expand(-1, self.channels, -1, -1).contiguous()  # (B, S, S) -> (B, C, S, S)
        return x, self.labels[idx]


def index_batches(indices: Sequence[int], batch_size: int) -> list[list[tuple[int, int]]]:
    """``indices`` in batches of ``batch_size`` ``(index, seed 0)`` pairs: an evaluation pass, no augmentation."""
    return [[(i, 0) for i in indices[k : k + batch_size]] for k in range(0, len(indices), batch_size)]
