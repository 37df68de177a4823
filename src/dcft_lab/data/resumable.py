"""A training loader whose order is a pure function of (seed, epoch), so a resumed run sees the same batches.

Lightning restores the optimizer, scheduler and loop counters from a checkpoint but not the data position of a
plain DataLoader. Here the shuffle of epoch e is ``randperm(n, seed, e)`` and a run resumed after b batches of
epoch e starts that permutation at batch b (``resume_at``), which makes a killed-and-resumed run identical to an
uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, n: int, seed: int, batch_size: int):
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.epoch = 0
        self.skip_batches = 0  # consumed by the next __iter__ only

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        # A checkpoint taken after the last batch of an epoch (SIGTERM or a periodic save on that batch) resumes at
        # the start of the next one: Lightning advances its epoch counter the same way, and the loader's first batch
        # is prefetched before Lightning calls set_epoch, so the position must already be right here.
        if batches_done * self.batch_size >= self.n:
            epoch, batches_done = epoch + 1, 0
        self.epoch, self.skip_batches = epoch, batches_done

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        start, self.skip_batches = self.skip_batches * self.batch_size, 0
        return iter(order[start:])

    def __len__(self) -> int:
        return self.n


def train_loader(dataset: Any, batch_size: int, seed: int, collate_fn: Callable, num_workers: int = 0,
                 resume: Optional[tuple[int, int]] = None) -> DataLoader:
    sampler = EpochShuffleSampler(len(dataset), seed, batch_size)
    if resume is not None:
        sampler.resume_at(*resume)
    # An explicit generator keeps the DataLoader's per-epoch worker seed draw off the global RNG.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)
