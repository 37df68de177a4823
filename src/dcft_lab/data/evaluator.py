"""The evaluator interface every task family implements (GLUE metrics, SQuAD EM/F1, ROUGE, perplexity)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class Evaluator(nn.Module):
    """Scores a model on eval batches, in two parts that DDP evaluation runs apart (see AdapterModule):

    * ``score_batch(model, batch, dataloader_idx)``: the model's part, its outputs for one batch (a tuple);
    * ``add_scored(scored, dataloader_idx)``: the metric's part, which adds those outputs to the running state.

    ``update()`` is both, in one process; ``compute()`` returns metric name -> value ({} when nothing was scored);
    ``reset()`` clears the state.
    """

    @torch.no_grad()
    def update(self, model: nn.Module, batch: Mapping[str, Any], dataloader_idx: int = 0) -> None:
        self.add_scored(self.score_batch(model, batch, dataloader_idx), dataloader_idx)

    def score_batch(self, model: nn.Module, batch: Mapping[str, Any], dataloader_idx: int = 0) -> tuple:
        raise NotImplementedError

    def add_scored(self, scored: tuple, dataloader_idx: int = 0) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


def keep_metrics_local(evaluator: nn.Module) -> None:
    """Compute every torchmetrics state inside ``evaluator`` (any module: an Evaluator or a wrapper of one) from
    this process's own updates only. Under DDP the module hands each process all processes' outputs before
    compute(); torchmetrics' default cross-process sum on top of that would count each example world_size times (the
    same value in exact arithmetic, other float rounding when world_size is not a power of two)."""
    from torchmetrics import Metric

    for module in evaluator.modules():
        if isinstance(module, Metric):
            module.distributed_available_fn = _never_distributed


def _never_distributed() -> bool:
    return False
