"""The epoch's sample order for one process: shuffled by (seed, epoch), optionally repeated (DeiT's repeated
augmentation), split across ranks, resumable mid-epoch, and with a per-sample seed for the augmentations.

Because the order, the split and the per-sample seeds depend only on (seed, epoch, position), a run resumed
mid-epoch sees exactly the samples and augmentations it would have seen, and N processes with batch B/N see
the same global batches as one process with batch B.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool = True, repeats: int = 1) -> torch.Tensor:
    """All sample indices of one epoch (every index ``repeats`` times in a row), before splitting across ranks."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if repeats > 1:
        order = order.repeat_interleave(repeats)  # [a, a, a, b, b, b, ...]: copies land on different ranks
    return order


def sample_seeds(n: int, epoch: int, seed: int) -> torch.Tensor:
    """One 31-bit augmentation seed per position of the epoch (positions are global, not per rank)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_777_777)
    return torch.randint(0, 2**31 - 1, (n,), generator=g)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation_seed)`` pairs for this rank; pair it with :class:`SeededDataset`.

    Args:
        n: dataset size.
        rank, world_size: this process and how many there are (rank r takes positions r, r + W, r + 2W, ...).
        shuffle: shuffle each epoch (by ``seed`` and the epoch set with :meth:`set_epoch`).
        seed: the run's seed.
        repeats: repeated augmentation (3 in DeiT): each image appears ``repeats`` times per epoch, and an epoch
            is then cut back to ``n`` samples in all, as in DeiT's RASampler.
        batch_size: per-rank batch; with ``drop_last`` the epoch is cut to whole global batches.
        drop_last: drop the last incomplete global batch (training).
        pad: without ``drop_last``, wrap around so every rank gets the same count (training); ``False`` gives
            each sample to exactly one rank (evaluation: counts may differ by one).
    """

    def __init__(
        self,
        n: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        repeats: int = 1,
        batch_size: int = 1,
        drop_last: bool = False,
        pad: bool = True,
    ) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size
        self.shuffle, self.seed, self.repeats = shuffle, seed, max(int(repeats), 1)
        self.batch_size, self.drop_last = batch_size, drop_last
        self.epoch = 0
        self.start_batch = 0
        global_batch = batch_size * world_size
        epoch_len = n  # with repeats, an epoch is still cut to n samples (DeiT's RASampler)
        if drop_last:
            self.positions = (epoch_len // global_batch) * global_batch  # global positions used per epoch
        elif pad:
            self.positions = math.ceil(epoch_len / world_size) * world_size  # padded by wrapping around
        else:
            self.positions = epoch_len
        self.num_samples = len(range(rank, self.positions, world_size))  # per rank

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; ``start_batch`` skips this rank's first batches (resuming mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return max(self.num_samples - self.start_batch * self.batch_size, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.n, self.epoch, self.seed, self.shuffle, self.repeats)
        seeds = sample_seeds(len(order), self.epoch, self.seed)
        pos = torch.arange(self.rank, self.positions, self.world_size) % len(order)  # this rank's positions
        pos = pos[self.start_batch * self.batch_size :]
        yield from zip(order[pos].tolist(), seeds[pos].tolist())
