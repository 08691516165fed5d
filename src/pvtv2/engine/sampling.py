"""Every sampler of the package: which samples a training step sees, on which rank, with which augmentation seed.

Training is a sequence of optimizer steps. Step ``s`` of a run with global batch ``B`` on ``W`` processes reads
positions ``[k * B, (k + 1) * B)`` of epoch ``e`` (``e, k = divmod(s, steps_per_epoch)``), where an epoch is a
permutation of the dataset seeded by ``(seed, e)`` (DeiT's repeated augmentation repeats each index in place). Rank
``r`` takes every ``W``-th of those positions, starting at ``r``. Each position carries its own augmentation seed,
a function of ``(seed, e, position)``.

Everything is a function of ``(seed, step)``, so:

- a run resumed at any step sees exactly the samples and augmentations an uninterrupted run sees;
- ``W`` processes with batch ``B / W`` see the same global batches as one process with batch ``B``;
- the data stream does not depend on the number of DataLoader workers.

How a task uses it::

    sampler = StepSampler(len(dataset), batch_size=64, rank=env.rank, world_size=env.world_size, seed=0,
                          start=state.step)                 # resumes mid-epoch
    loader = DataLoader(SeededDataset(dataset), batch_sampler=sampler, ...)   # dataset[(index, seed)]
    for batch in loader: ...                                 # endless: the trainer counts the steps

    eval_loader = DataLoader(dataset, sampler=shard(len(dataset), env.rank, env.world_size))
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_EPOCH_SALT = 1_000_003  # mixes (seed, epoch) into one generator seed
_AUG_SALT = 7_777_777  # separates the augmentation seeds' stream from the permutation's


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool = True, repeats: int = 1) -> torch.Tensor:
    """All sample indices of one epoch (every index ``repeats`` times in a row), before splitting across ranks."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * _EPOCH_SALT + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if repeats > 1:
        order = order.repeat_interleave(repeats)  # [a, a, a, b, b, b, ...]: copies land on different ranks
    return order


def sample_seeds(n: int, epoch: int, seed: int) -> torch.Tensor:
    """One 31-bit augmentation seed per position of an epoch (positions are global, not per rank)."""
    g = torch.Generator().manual_seed(seed * _EPOCH_SALT + epoch + _AUG_SALT)
    return torch.randint(0, 2**31 - 1, (n,), generator=g)


class StepSampler(Sampler[list[tuple[int, int]]]):
    """This rank's batches of ``(index, augmentation seed)`` for steps ``start``, ``start + 1``, ... (endless, or
    ``steps`` in all).

    Args:
        n: dataset size.
        batch_size: GLOBAL batch (split evenly over ``world_size`` processes).
        rank, world_size: this process and how many there are.
        seed: the run's seed.
        shuffle: a new permutation each epoch (else the dataset order).
        repeats: repeated augmentation (DeiT: 3): each index appears ``repeats`` times in a row in the epoch's order,
            which is then read for ``steps_per_epoch`` steps as usual (DeiT's RASampler also keeps epochs at ``n``).
        start: the first step (a resumed run's step count).
        steps: stop after this step (exclusive); ``None``: endless.

    An epoch is ``max(1, n // batch_size)`` steps (the last incomplete global batch is dropped; a dataset smaller
    than one batch wraps around).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        repeats: int = 1,
        start: int = 0,
        steps: int | None = None,
    ) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if batch_size % world_size:
            raise ValueError(f"the global batch {batch_size} is not divisible by {world_size} processes")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle, self.repeats = seed, shuffle, max(int(repeats), 1)
        self.start, self.steps = start, steps
        self.steps_per_epoch = max(1, n // batch_size)
        self._epoch, self._order, self._seeds = -1, torch.empty(0, dtype=torch.int64), torch.empty(0)

    def _epoch_data(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if epoch != self._epoch:
            self._order = epoch_order(self.n, epoch, self.seed, self.shuffle, self.repeats)
            self._seeds = sample_seeds(len(self._order), epoch, self.seed)
            self._epoch = epoch
        return self._order, self._seeds

    def batch(self, step: int) -> list[tuple[int, int]]:
        """The ``(index, seed)`` pairs of this rank at ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order, seeds = self._epoch_data(epoch)
        pos = torch.arange(k * self.batch_size + self.rank, (k + 1) * self.batch_size, self.world_size) % len(order)
        return list(zip(order[pos].tolist(), seeds[pos].tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        while self.steps is None or step < self.steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        return max(self.steps - self.start, 0) if self.steps is not None else 2**62  # endless


def shard(n: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Evaluation: each sample on exactly one rank (rank ``r`` takes ``r, r + W, ...``; counts differ by at most 1)."""
    return list(range(rank, n, world_size))


def rank_shard(dataset: Dataset) -> torch.utils.data.Subset:
    """Evaluation: this process's part of ``dataset`` (:func:`shard` by the ``torch.distributed`` rank; the whole
    dataset in a single process). Every task's evaluation splits its data here."""
    from .distributed import get_rank, get_world_size

    return torch.utils.data.Subset(dataset, shard(len(dataset), get_rank(), get_world_size()))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed python's, numpy's and torch's global generators for the block, then give back their previous states
    (augmentations inside depend on ``seed`` only; the caller's random streams are untouched)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededDataset(Dataset):
    """``dataset[(index, seed)]`` runs ``dataset[index]`` (decoding and augmentation) under :func:`seeded`: its
    augmentations depend on the sample's seed only, not on the worker, the rank or what ran before."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            with seeded(seed):
                return self.dataset[index]
        return self.dataset[key]


def loader_workers(requested: int | None = None, most: int = 4) -> int:
    """DataLoader worker processes: ``requested`` if given, else one per CPU this process may use, at most ``most``
    (more workers than CPUs only compete with the compute threads, and torch warns about it)."""
    if requested is not None:
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(most, cpus))


def step_loader(dataset: Any, sampler: StepSampler, *, collate_fn: Any, workers: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader of ``dataset`` (wrapped in :class:`SeededDataset`) over the sampler's batches.

    It has a generator of its own: a DataLoader without one draws its workers' base seed from the global torch
    generator when it starts, which would shift every random draw of a resumed run by one.
    """
    return torch.utils.data.DataLoader(SeededDataset(dataset), batch_sampler=sampler, collate_fn=collate_fn,
                                       num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
                                       generator=torch.Generator())
