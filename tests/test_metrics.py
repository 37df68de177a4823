"""GlueEvaluator / compute_glue_metrics against hand-computed values and scipy."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from scipy import stats

from dcft_lab.data.evaluator import keep_metrics_local
from dcft_lab.data.metrics import (
    GlueBinaryMatthews,
    GlueEvaluator,
    GlueMulticlassMatthews,
    GluePearson,
    compute_glue_metrics,
    loader_metric_kinds,
)

torch.set_num_threads(1)


class FixedLogitsModel(torch.nn.Module):
    """Returns logits looked up by input_ids[:, 0]; accepts only the model inputs (so a leaked key fails)."""

    def __init__(self, logits_by_id: torch.Tensor):
        super().__init__()
        self.table = logits_by_id

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return SimpleNamespace(logits=self.table[input_ids[:, 0]])


def _batch(ids, labels, **extra):
    ids = torch.as_tensor(ids)
    return {"input_ids": ids[:, None], "attention_mask": torch.ones(len(ids), 1, dtype=torch.long),
            "labels": torch.as_tensor(labels), **extra}


def test_matthews_matches_formula():
    labels = [1, 1, 1, 1, 0, 0, 0, 1, 0, 1]
    preds = [1, 1, 0, 1, 0, 1, 0, 1, 0, 0]
    tp = sum(p == 1 and y == 1 for p, y in zip(preds, labels))  # 4
    tn = sum(p == 0 and y == 0 for p, y in zip(preds, labels))  # 3
    fp = sum(p == 1 and y == 0 for p, y in zip(preds, labels))  # 1
    fn = sum(p == 0 and y == 1 for p, y in zip(preds, labels))  # 2
    assert (tp, tn, fp, fn) == (4, 3, 1, 2)
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) * 100
    got = compute_glue_metrics("cola", preds, labels)
    assert set(got) == {"matthews"}
    assert got["matthews"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("preds", [[1] * 10, [0] * 10])
def test_matthews_of_a_constant_prediction_is_zero_as_in_glue(preds):
    """GLUE's scorer (sklearn) gives 0 when the predictions are one class; torchmetrics alone gives about 0.0256 x
    100 on CoLA dev's class balance."""
    labels = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert compute_glue_metrics("cola", preds, labels)["matthews"] == 0.0
    assert compute_glue_metrics("cola", [1, 0] * 5, [1] * 10)["matthews"] == 0.0  # one-class labels
    from torchmetrics.functional.classification import binary_matthews_corrcoef
    assert float(binary_matthews_corrcoef(torch.tensor(preds), torch.tensor(labels))) != 0.0  # why the wrapper exists


def test_matthews_equals_sklearn_and_keeps_torchmetrics_values_elsewhere():
    from sklearn.metrics import matthews_corrcoef
    from torchmetrics.functional.classification import binary_matthews_corrcoef, multiclass_matthews_corrcoef

    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        n, k = 50, 2 if trial % 2 else 3
        labels = torch.randint(0, k, (n,), generator=g)
        preds = torch.where(torch.rand(n, generator=g) < 0.6, labels, torch.randint(0, k, (n,), generator=g))
        got = GlueMulticlassMatthews(num_classes=k) if k > 2 else GlueBinaryMatthews()
        got.update(preds, labels)
        assert float(got.compute()) == pytest.approx(matthews_corrcoef(labels, preds), abs=1e-6)
        reference = (binary_matthews_corrcoef(preds, labels) if k == 2
                     else multiclass_matthews_corrcoef(preds, labels, num_classes=k))
        assert torch.equal(got.compute(), reference)  # non-degenerate: torchmetrics' value, bit for bit


def test_pearson_of_a_collapsed_regression_head_is_a_number():
    """torchmetrics returns NaN for a near-constant prediction, which would drop a collapsed STS-B run out of the
    means; scipy's value there, 0 for no spread at all, and torchmetrics' own value everywhere else."""
    from torchmetrics.regression import PearsonCorrCoef

    labels = torch.arange(10_000, dtype=torch.float32) % 7
    spike = torch.zeros(10_000)
    spike[3] = 1.0  # one prediction off the constant: its spread is below torchmetrics' relative bound
    for preds, expected in ((torch.full((10_000,), 2.5), 0.0),
                            (spike, stats.pearsonr(spike.double().numpy(), labels.double().numpy())[0])):
        plain, ours = PearsonCorrCoef(), GluePearson()
        plain.update(preds, labels)
        ours.update(preds, labels)
        with pytest.warns(UserWarning, match="variance"):
            assert math.isnan(float(plain.compute()))  # why the wrapper exists
        assert float(ours.compute()) == pytest.approx(expected, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    preds, labels = torch.randn(40, generator=g), torch.randn(40, generator=g)
    plain, ours = PearsonCorrCoef(), GluePearson()
    plain.update(preds, labels + preds)
    ours.update(preds, labels + preds)
    assert torch.equal(ours.compute(), plain.compute())


def test_accuracy_and_f1_by_hand():
    labels = [1, 0, 1, 1, 0, 1, 0, 0]
    preds = [1, 1, 1, 0, 0, 1, 0, 1]
    # tp=3 fp=2 fn=1 -> precision 3/5, recall 3/4, f1 = 2pr/(p+r) = 2/3; accuracy 5/8
    got = compute_glue_metrics("mrpc", preds, labels)
    assert got == pytest.approx({"accuracy": 62.5, "f1": 200 / 3}, abs=1e-4)
    assert compute_glue_metrics("qqp", preds, labels) == pytest.approx(got)


def test_pearson_spearman_match_scipy():
    labels = [0.0, 1.2, 2.5, 3.1, 4.8, 5.0, 2.2]
    preds = [0.3, 1.0, 2.9, 2.7, 4.1, 4.9, 1.5]
    got = compute_glue_metrics("stsb", preds, labels)
    assert got["pearson"] == pytest.approx(stats.pearsonr(preds, labels)[0] * 100, abs=1e-3)
    assert got["spearman"] == pytest.approx(stats.spearmanr(preds, labels)[0] * 100, abs=1e-3)


def test_multiclass_accuracy_mnli_eval_sets():
    assert compute_glue_metrics("mnli", [0, 1, 2, 2], [0, 1, 1, 2]) == pytest.approx({"accuracy_m": 75.0})
    assert compute_glue_metrics("mnli", [0, 1, 2, 2], [2, 1, 1, 2], eval_index=1) == pytest.approx({"accuracy_mm": 50.0})
    with pytest.raises(ValueError, match="eval_index 2"):
        compute_glue_metrics("mnli", [0], [0], eval_index=2)


def test_evaluator_runs_model_strips_meta_and_accumulates():
    # id k -> logits favouring class table[k].argmax()
    table = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    evaluator = GlueEvaluator("mrpc")
    model = FixedLogitsModel(table)
    evaluator.update(model, _batch([1, 1, 0], [1, 0, 0], meta={"ids": ["a", "b", "c"]}), 0)
    evaluator.update(model, _batch([1, 0], [1, 1]), 0)
    # preds 1,1,0,1,0 vs labels 1,0,0,1,1: accuracy 3/5; tp=2 fp=1 fn=1 -> f1 2/3
    assert evaluator.compute() == pytest.approx({"accuracy": 60.0, "f1": 200 / 3}, abs=1e-4)
    evaluator.reset()
    assert evaluator.compute() == {}


def test_evaluator_mnli_routes_dataloaders_to_m_and_mm():
    table = torch.eye(3)  # id k predicts class k
    evaluator = GlueEvaluator("mnli")
    model = FixedLogitsModel(table)
    evaluator.update(model, _batch([0, 1, 2, 2], [0, 1, 2, 0]), dataloader_idx=0)  # 3/4
    assert evaluator.compute() == pytest.approx({"accuracy_m": 75.0})  # unused eval set is skipped
    evaluator.update(model, _batch([0, 1], [1, 1]), dataloader_idx=1)  # 1/2
    assert evaluator.compute() == pytest.approx({"accuracy_m": 75.0, "accuracy_mm": 50.0})
    with pytest.raises(ValueError, match="dataloader_idx 2"):
        evaluator.update(model, _batch([0], [0]), dataloader_idx=2)


def test_evaluator_regression_squeezes_single_logit():
    scores = torch.tensor([[0.5], [1.5], [4.0], [3.0]])
    evaluator = GlueEvaluator("stsb")
    evaluator.update(FixedLogitsModel(scores), _batch([0, 1, 2, 3], torch.tensor([0.0, 2.0, 5.0, 2.5])), 0)
    got = evaluator.compute()
    preds, labels = [0.5, 1.5, 4.0, 3.0], [0.0, 2.0, 5.0, 2.5]
    assert got["pearson"] == pytest.approx(stats.pearsonr(preds, labels)[0] * 100, abs=1e-3)
    assert got["spearman"] == pytest.approx(100.0, abs=1e-3)  # same ranking


def test_evaluator_is_module_with_metric_states():
    evaluator = GlueEvaluator("mnli")
    assert isinstance(evaluator, torch.nn.Module)
    assert len(evaluator.collections) == 2
    assert loader_metric_kinds("cola") == ({"matthews": "matthews"},)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="family 'qa'"):
        GlueEvaluator("squad_v1")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        GlueEvaluator("nope")
    with pytest.raises(ValueError, match="must match"):
        compute_glue_metrics("rte", [0, 1], [0])
    with pytest.raises(ValueError, match="no 'labels'"):
        GlueEvaluator("rte").update(FixedLogitsModel(torch.eye(2)), {"input_ids": torch.zeros(1, 1, dtype=torch.long)}, 0)


def _scored_alone(seed: int, keep_local: bool) -> dict:
    """task -> metrics of random outputs drawn from ``seed`` (in a process group: rank-specific data)."""
    g = torch.Generator().manual_seed(seed)
    results = {}
    for task in ("cola", "stsb", "mrpc"):
        evaluator = GlueEvaluator(task)
        if keep_local:
            keep_metrics_local(evaluator)
        n_out = 1 if task == "stsb" else 2
        labels = torch.rand(40, generator=g) * 5 if task == "stsb" else torch.randint(0, 2, (40,), generator=g)
        evaluator.add_scored((torch.randn(40, n_out, generator=g), labels))
        results[task] = evaluator.compute()
    return results


def _syncs_of(evaluator) -> list:
    """Give every torchmetrics state in ``evaluator`` a (fake) process group: compute() then syncs through a gather
    that notes each call and returns this process's state alone. Returns the list of calls."""
    from torchmetrics import Metric

    calls = []

    def gather(tensor, group=None):
        calls.append(tuple(tensor.shape))
        return [tensor]

    for module in evaluator.modules():
        if isinstance(module, Metric):
            module.dist_sync_fn, module.distributed_available_fn = gather, lambda: True
    return calls


@pytest.mark.parametrize("task", ["cola", "stsb", "mrpc"])
def test_keep_metrics_local_stops_every_cross_process_sync(task):
    """The in-process half of the next test: where a process group is available, compute() syncs the metric states
    across processes, unless keep_metrics_local() was applied (then none is synced, and the numbers are the same)."""
    g = torch.Generator().manual_seed(3)
    labels = torch.rand(40, generator=g) * 5 if task == "stsb" else torch.randint(0, 2, (40,), generator=g)
    scored = (torch.randn(40, 1 if task == "stsb" else 2, generator=g), labels)
    synced, local = GlueEvaluator(task), GlueEvaluator(task)
    synced_calls, local_calls = _syncs_of(synced), _syncs_of(local)
    keep_metrics_local(local)
    for evaluator in (synced, local):
        evaluator.add_scored(scored)
    assert synced.compute() == local.compute()
    assert synced_calls and local_calls == []


def _local_compute_worker(rank: int, world_size: int, init_file: str, out_dir: str, keep_local: bool) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.save(_scored_alone(rank, keep_local), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes in a gloo group, twice
@pytest.mark.parametrize("keep_local", [True, False])
def test_keep_metrics_local_computes_each_process_own_state(tmp_path, keep_local):
    """Under DDP the module gives every process all outputs before compute(): the metrics must not sum their state
    across processes again. Each process here scores different data, so a cross-process sum would show."""
    import torch.multiprocessing as mp

    mp.spawn(_local_compute_worker, args=(2, str(tmp_path / "init"), str(tmp_path), keep_local), nprocs=2)
    for rank in range(2):
        got, alone = torch.load(tmp_path / f"rank{rank}.pt"), _scored_alone(rank, keep_local=False)
        for task in alone:
            assert (got[task] == alone[task]) is keep_local, (task, got[task], alone[task])
