"""The one sampling module: what each step reads on each rank, exact resume, repeated augmentation, seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pvtv2.engine.sampling import SeededDataset, StepSampler, seeded, shard


def _steps(sampler: StepSampler, n: int) -> list[list[tuple[int, int]]]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_ranks_split_the_single_process_batches() -> None:
    single = _steps(StepSampler(103, 8, seed=3), 30)  # 12 steps per epoch: crosses two epoch boundaries
    ranks = [_steps(StepSampler(103, 8, rank=r, world_size=2, seed=3), 30) for r in (0, 1)]
    for k, batch in enumerate(single):  # global batch k = rank 0's batch k + rank 1's batch k, seeds included
        assert len(ranks[0][k]) == len(ranks[1][k]) == 4
        assert sorted(batch) == sorted(ranks[0][k] + ranks[1][k])


def test_epochs_are_permutations_and_resume_is_exact() -> None:
    s = StepSampler(50, 5, seed=1)
    assert s.steps_per_epoch == 10
    full = _steps(s, 25)
    assert sorted(i for b in full[:10] for i, _ in b) == list(range(50))  # epoch 1 sees every sample once
    assert [i for b in full[10:20] for i, _ in b] != [i for b in full[:10] for i, _ in b]  # a new order
    assert _steps(StepSampler(50, 5, seed=1, start=13), 12) == full[13:]  # resumed mid-epoch 2
    assert list(StepSampler(50, 5, seed=1, start=3, steps=6)) == full[3:6] and len(StepSampler(50, 5, steps=6)) == 6
    assert full[0] != _steps(StepSampler(50, 5, seed=2), 1)[0]


def test_repeated_augmentation_and_tiny_datasets() -> None:
    copies = [StepSampler(12, 3, rank=r, world_size=3, seed=0, repeats=3).batch(0) for r in range(3)]
    assert len({c[0][0] for c in copies}) == 1  # one image's three copies go to the three ranks
    assert len({c[0][1] for c in copies}) == 3  # each with its own augmentation seed
    tiny = StepSampler(3, 8, seed=0)  # smaller than one batch: one step per epoch, wrapping around
    assert tiny.steps_per_epoch == 1 and len(tiny.batch(0)) == 8 and {i for i, _ in tiny.batch(0)} == {0, 1, 2}
    with pytest.raises(ValueError, match="not divisible"):
        StepSampler(10, 5, world_size=2)


def test_shard_and_seeded() -> None:
    assert shard(7, 0, 2) == [0, 2, 4, 6] and shard(7, 1, 2) == [1, 3, 5]
    state = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    with seeded(5):
        a = (random.random(), np.random.rand(), torch.rand(1))
    with seeded(5):
        b = (random.random(), np.random.rand(), torch.rand(1))
    assert a == b
    assert random.getstate() == state[0] and (np.random.get_state()[1] == state[1]).all()
    assert torch.equal(torch.get_rng_state(), state[2])  # the caller's streams are untouched

    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(2) + i

    ds = SeededDataset(Noisy())
    assert torch.equal(ds[(1, 7)], ds[(1, 7)]) and not torch.equal(ds[(1, 7)], ds[(1, 8)]) and len(ds) == 3
