"""Loaders whose batches are a pure function of (seed, epoch) and of the process layout.

Training: Lightning restores the optimizer, scheduler and loop counters from a checkpoint but not the data position
of a plain DataLoader. Here the shuffle of epoch e is ``randperm(n, seed, e)`` and a run resumed after b batches of
epoch e starts that permutation at batch b (``resume_at``), which makes a killed-and-resumed run identical to an
uninterrupted one. Under DDP (``world_size`` processes) the same permutation is cut into global micro-batches of
``batch_size x world_size`` examples, in order, and each process takes its slice of every one of them, so the
examples of one optimizer step are those a single process with the global batch would see.

Evaluation (``eval_loader``): one process reads the eval set in order, in batches of ``batch_size``. Under DDP the
very same batches are dealt out whole, round-robin (batch b to process b mod world_size), nothing is padded or
repeated, and ``EvalBatches.global_index`` says which batch of the single-process pass each one is, so the
evaluator can put every process's outputs back into single-process order (``AdapterModule``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


def process_layout(datamodule: Any) -> tuple[int, int]:
    """(global rank, world size) of the Trainer the data module is attached to; (0, 1) when it has none."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, n: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip_batches = 0  # consumed by the next __iter__ only

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        # A checkpoint taken after the last batch of an epoch (SIGTERM or a periodic save on that batch) resumes at
        # the start of the next one: Lightning advances its epoch counter the same way, and the loader's first batch
        # is prefetched before Lightning calls set_epoch, so the position must already be right here.
        if batches_done * self.batch_size >= len(self):
            epoch, batches_done = epoch + 1, 0
        self.epoch, self.skip_batches = epoch, batches_done

    def _share(self, order: list[int]) -> list[int]:
        """This process's examples of the epoch: padded (by wrapping around, as torch's DistributedSampler does) to
        a multiple of world_size, cut into global micro-batches of batch_size x world_size, a slice of each."""
        world = self.world_size
        total = len(self) * world
        padded = (order * -(-total // self.n))[:total]
        step = self.batch_size * world
        mine: list[int] = []
        for start in range(0, total, step):
            block = padded[start:start + step]
            share = len(block) // world  # batch_size, except in the last micro-batch of the epoch
            mine += block[self.rank * share:(self.rank + 1) * share]
        return mine

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        if self.world_size > 1:
            order = self._share(order)
        start, self.skip_batches = self.skip_batches * self.batch_size, 0
        return iter(order[start:])

    def __len__(self) -> int:
        return self.n if self.world_size == 1 else -(-self.n // self.world_size)


def train_loader(dataset: Any, batch_size: int, seed: int, collate_fn: Callable, num_workers: int = 0,
                 resume: tuple[int, int] | None = None, rank: int = 0, world_size: int = 1) -> DataLoader:
    """``batch_size`` is the per-process (per-device) batch."""
    sampler = EpochShuffleSampler(len(dataset), seed, batch_size, rank, world_size)
    if resume is not None:
        sampler.resume_at(*resume)
    # An explicit generator keeps the DataLoader's per-epoch worker seed draw off the global RNG.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)


class EvalBatches(Sampler[list[int]]):
    """The single-process eval batches (consecutive examples, in order) that belong to one process: batch b goes to
    process b mod world_size. A process left without a batch (fewer batches than processes) runs batch 0 again so
    that every process makes the same collective calls; ``global_index`` marks that repeat as None (dropped)."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int):
        starts = range(0, n, batch_size)
        self.batches = [list(range(start, min(start + batch_size, n))) for start in starts]
        own = list(range(len(self.batches)))[rank::world_size]
        self.repeat = not own
        self.batch_ids = own or [0]

    def __iter__(self) -> Iterator[list[int]]:
        return (self.batches[b] for b in self.batch_ids)

    def __len__(self) -> int:
        return len(self.batch_ids)

    def global_index(self, local_index: int) -> int | None:
        """The index of this process's local_index-th batch in the single-process pass (None: a repeat to drop)."""
        return None if self.repeat else self.batch_ids[local_index]


def eval_loader(dataset: Any, batch_size: int, collate_fn: Callable, num_workers: int = 0, rank: int = 0,
                world_size: int = 1, **loader_kwargs: Any) -> DataLoader:
    """The eval DataLoader: in one process exactly ``DataLoader(dataset, batch_size, shuffle=False, ...)``; under DDP
    the same batches, each evaluated by exactly one process (``EvalBatches``)."""
    if world_size == 1:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                          num_workers=num_workers, **loader_kwargs)
    return DataLoader(dataset, batch_sampler=EvalBatches(len(dataset), batch_size, rank, world_size),
                      collate_fn=collate_fn, num_workers=num_workers, **loader_kwargs)
