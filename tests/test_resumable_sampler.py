"""The training order is a pure function of (seed, epoch); resume_at skips exactly the batches already trained."""

import pytest
import torch

from dcft_lab.data.resumable import EpochShuffleSampler, train_loader


def _epoch_order(n, seed, epoch):
    sampler = EpochShuffleSampler(n, seed, batch_size=4)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_epochs_are_permutations_that_differ_and_repeat_per_seed():
    orders = [_epoch_order(10, seed=3, epoch=e) for e in range(3)]
    assert all(sorted(o) == list(range(10)) for o in orders)
    assert orders[0] != orders[1]
    assert orders == [_epoch_order(10, seed=3, epoch=e) for e in range(3)]
    assert orders[0] != _epoch_order(10, seed=4, epoch=0)


@pytest.mark.parametrize("n, done", [(10, 1), (10, 2), (12, 2)])
def test_resume_mid_epoch_yields_the_rest_of_that_epoch(n, done):
    sampler = EpochShuffleSampler(n, seed=7, batch_size=4)
    sampler.resume_at(1, done)
    assert list(sampler) == _epoch_order(n, 7, 1)[done * 4:]
    assert list(sampler) == _epoch_order(n, 7, 1)  # the skip applies to the resumed epoch only


@pytest.mark.parametrize("n, done", [(12, 3), (10, 3)])  # full last batch / partial last batch
def test_resume_after_the_last_batch_of_an_epoch_starts_the_next_epoch(n, done):
    sampler = EpochShuffleSampler(n, seed=7, batch_size=4)
    sampler.resume_at(1, done)
    assert sampler.epoch == 2
    assert list(sampler) == _epoch_order(n, 7, 2)


def test_loader_batches_follow_the_sampler():
    data = list(range(10))
    loader = train_loader(data, batch_size=4, seed=7, collate_fn=torch.tensor, resume=(0, 1))
    assert [b.tolist() for b in loader] == [_epoch_order(10, 7, 0)[4:8], _epoch_order(10, 7, 0)[8:]]
