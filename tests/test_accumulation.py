"""Gradient accumulation: each micro-batch draws its own dropout masks, and eval_every_n_steps counts optimizer
steps (Lightning counts batches); without accumulation both are what they always were."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from dcft_lab.adapters import build_method
from dcft_lab.module import AdapterModule
from helpers import run_inprocess


def _module(accumulate: int, step: int) -> AdapterModule:
    module = AdapterModule(torch.nn.Linear(2, 2), build_method({"name": "none"}), torch.nn.Identity(),
                           main_metric="accuracy", eval_names=("validation",), seed=6)
    module._trainer = SimpleNamespace(accumulate_grad_batches=accumulate, global_step=step, global_rank=0)
    return module


def _draw(module: AdapterModule, batch_idx: int) -> torch.Tensor:
    module.on_train_batch_start(None, batch_idx)
    return torch.rand(4)


def test_each_micro_batch_of_a_window_draws_its_own_dropout_masks():
    two = _module(accumulate=2, step=5)
    assert not torch.equal(_draw(two, 10), _draw(two, 11))  # one optimizer step, two micro-batches
    assert torch.equal(_draw(two, 10), _draw(two, 12))      # the same place in the next window of the same step
    # the first micro-batch draws what a run without accumulation draws at that step (runs made before are unchanged)
    assert torch.equal(_draw(_module(accumulate=1, step=5), 11), _draw(two, 10))
    assert not torch.equal(_draw(_module(accumulate=1, step=6), 11), _draw(two, 10))  # another step: other masks


def test_eval_every_n_steps_counts_optimizer_steps_under_accumulation(glue_tsv_root, tmp_path):
    record = run_inprocess(["task=sst2", "eval_every_n_steps=1", "trainer.max_steps=3",
                            "trainer.accumulate_grad_batches=2"], tmp_path / "run", glue_tsv_root("sst2"))
    assert record["status"] == "completed"
    assert [e["step"] for e in record["evaluations"]] == [1, 2, 3]  # not 6 evaluations, half of them mid-window
