"""An endless, resumable batch sampler for iteration-based training.

Global sample number ``g = (iteration * world_size + rank) * batch_size + b`` walks through a fresh seeded
permutation of the dataset per pass, and carries its own augmentation seed. Everything is a function of
``(seed, g)``: resuming at any iteration replays exactly the same samples and augmentations, and the data stream
does not depend on how the total batch is split across processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class InfiniteBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches of ``(dataset index, augmentation seed)`` forever, starting at ``start_iter``.

    Args:
        size: dataset length.
        batch_size: samples per batch of this process.
        seed: run seed.
        rank, world_size: this process and the number of processes.
        start_iter: first iteration to yield (the resume point).
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_iter: int = 0) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start_iter = rank, world_size, start_iter
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def _index(self, g: int) -> int:
        epoch, offset = divmod(g, self.size)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=gen)
        return int(self._perm[offset])

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """The ``(index, seed)`` pairs of this process at ``iteration``."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        return [(self._index(g), (self.seed * 1_000_003 + g) % (2**63)) for g in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iter
        while True:
            yield self.batch(iteration)
            iteration += 1
