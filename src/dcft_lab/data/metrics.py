"""GLUE evaluation with torchmetrics (DDP-syncable), reported on a 0-100 scale."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import Accuracy, BinaryMatthewsCorrCoef, F1Score, MulticlassMatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from .evaluator import Evaluator
from .tasks import TaskSpec, get_task


def _quiet_spearman() -> SpearmanCorrCoef:
    # Rank correlation has to buffer all predictions; GLUE eval sets are small, so the warning is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all targets and predictions.*")
        return SpearmanCorrCoef()


class _GlueMatthews:
    """Matthews correlation as GLUE's scorer (sklearn's ``matthews_corrcoef``) defines it: 0 when the predictions or
    the labels are all one class. torchmetrics returns a small non-zero value there instead (CoLA dev, every sentence
    predicted "acceptable": 0.0256), which would score a model stuck on one class above chance. Every other
    confusion matrix goes to torchmetrics unchanged, so those values stay bit for bit what they were."""

    def compute(self) -> torch.Tensor:
        confmat = self.confmat  # rows: true class, columns: predicted class
        if (confmat.sum(dim=1) > 0).sum() < 2 or (confmat.sum(dim=0) > 0).sum() < 2:
            return torch.zeros((), dtype=torch.float32, device=confmat.device)
        return super().compute()


class GlueBinaryMatthews(_GlueMatthews, BinaryMatthewsCorrCoef):
    pass


class GlueMulticlassMatthews(_GlueMatthews, MulticlassMatthewsCorrCoef):
    pass


class GluePearson(PearsonCorrCoef):
    """Pearson's r where torchmetrics gives up: it returns NaN whenever the predictions' spread is small relative to
    their largest deviation (a regression head that has collapsed to a near-constant output), and a NaN drops the run
    out of every mean instead of scoring it. There the correlation is recomputed in float64 from the same streaming
    sums (what scipy's pearsonr returns), and a prediction or label set with no spread at all scores 0, the
    convention of ``_GlueMatthews`` and of STS-B's chance level. Every other value is torchmetrics' own, bit for bit."""

    def compute(self) -> torch.Tensor:
        value = super().compute()
        if not torch.isnan(value).any() or self.mean_x.numel() != 1:  # (a multi-device reduction: left as it is)
            return value
        var_x, var_y, cov = (t.double() for t in (self.var_x, self.var_y, self.corr_xy))
        if not (torch.isfinite(var_x) and torch.isfinite(var_y) and torch.isfinite(cov)):
            return value  # non-finite predictions: a failure, not a constant
        if var_x <= 0 or var_y <= 0:
            return torch.zeros((), dtype=value.dtype, device=value.device)
        return torch.clamp(cov / torch.sqrt(var_x * var_y), -1.0, 1.0).to(value.dtype)


# Metric kind -> factory(num_labels). F1 is binary with label 1 as the positive class, as in GLUE
# (MRPC "equivalent", QQP "duplicate").
_BUILDERS: dict[str, Callable[[int], Metric]] = {
    "accuracy": lambda n: Accuracy(task="multiclass", num_classes=n),
    "f1": lambda n: F1Score(task="binary"),
    "matthews": lambda n: GlueBinaryMatthews() if n == 2 else GlueMulticlassMatthews(num_classes=n),
    "pearson": lambda n: GluePearson(),
    "spearman": lambda n: _quiet_spearman(),
}


def loader_metric_kinds(task: str | TaskSpec) -> tuple[dict[str, str], ...]:
    """For each eval dataloader, the metrics it reports: final name -> metric kind (``TaskSpec.metric_kinds``)."""
    spec = get_task(task)
    if spec.family not in ("classification", "regression"):
        raise ValueError(f"task '{spec.name}' has family '{spec.family}'; GLUE metrics need classification or regression")
    per_loader = spec.metric_kinds()
    for kinds in per_loader:
        unknown = sorted(set(kinds.values()) - set(_BUILDERS))
        if unknown:
            raise ValueError(f"task '{spec.name}': unknown metric(s) {unknown}; expected one of: {', '.join(_BUILDERS)}")
    return per_loader


def _collection(kinds: Mapping[str, str], num_labels: int) -> MetricCollection:
    # compute_groups=False keeps every metric's own update count (used to skip unused eval sets).
    return MetricCollection({name: _BUILDERS[kind](num_labels) for name, kind in kinds.items()}, compute_groups=False)


def _scaled(collection: MetricCollection) -> dict[str, float]:
    return {name: float(value) * 100.0 for name, value in collection.compute().items()}


def predictions_from_logits(spec: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
    """Class ids (argmax) for classification, the single output as a float score for regression."""
    if spec.family == "regression":
        return logits.float().reshape(-1)
    return logits.argmax(dim=-1)


def compute_glue_metrics(task: str | TaskSpec, preds: Any, labels: Any, eval_index: int = 0) -> dict[str, float]:
    """Metrics (0-100) for predictions (class ids or regression scores) against labels on one eval set."""
    spec = get_task(task)
    per_loader = loader_metric_kinds(spec)
    if not 0 <= eval_index < len(per_loader):
        raise ValueError(f"eval_index {eval_index} out of range for task '{spec.name}' ({len(per_loader)} eval sets)")
    dtype = torch.float32 if spec.family == "regression" else torch.long
    preds, labels = torch.as_tensor(preds, dtype=dtype), torch.as_tensor(labels, dtype=dtype)
    if preds.shape != labels.shape or preds.numel() == 0:
        raise ValueError(f"preds shape {tuple(preds.shape)} and labels shape {tuple(labels.shape)} must match and be non-empty")
    collection = _collection(per_loader[eval_index], spec.num_labels)
    collection.update(preds, labels)
    return _scaled(collection)


class GlueEvaluator(Evaluator):
    """Evaluator for GLUE tasks: one MetricCollection per eval dataloader.

    update() runs the model itself (= add_scored(score_batch(...)): the model's part and the metric's part, which
    DDP evaluation runs apart, see AdapterModule); compute() returns final metric names (e.g. accuracy_m /
    accuracy_mm for MNLI) on a 0-100 scale, skipping eval sets that received no batches.
    """

    def __init__(self, task: str | TaskSpec):
        super().__init__()
        self.spec = get_task(task)
        self.collections = nn.ModuleList(
            _collection(kinds, self.spec.num_labels) for kinds in loader_metric_kinds(self.spec)
        )

    @torch.no_grad()
    def score_batch(self, model: nn.Module, batch: Mapping[str, Any], dataloader_idx: int = 0) -> tuple:
        """The model's outputs for one eval batch, as add_scored takes them: (logits, labels)."""
        if "labels" not in batch:
            raise ValueError(f"batch has no 'labels' (keys: {sorted(batch)}); GLUE evaluation needs labels")
        inputs = {key: value for key, value in batch.items() if key not in ("meta", "labels")}
        return model(**inputs).logits, batch["labels"]

    def add_scored(self, scored: tuple, dataloader_idx: int = 0) -> None:
        self.update_logits(*scored, dataloader_idx)

    @torch.no_grad()
    def update_logits(self, logits: torch.Tensor, labels: torch.Tensor, dataloader_idx: int = 0) -> None:
        """Update from logits already computed (lets a caller reuse its validation forward pass)."""
        if not 0 <= dataloader_idx < len(self.collections):
            raise ValueError(
                f"dataloader_idx {dataloader_idx} out of range for task '{self.spec.name}'; "
                f"expected 0..{len(self.collections) - 1} ({', '.join(self.spec.eval_names)})"
            )
        preds = predictions_from_logits(self.spec, logits.detach())
        if self.spec.family == "regression":
            labels = labels.float()
        self.collections[dataloader_idx].update(preds, labels.reshape(preds.shape))

    def compute(self) -> dict[str, float]:
        results: dict[str, float] = {}
        for collection in self.collections:
            if any(metric.update_count > 0 for metric in collection.values()):
                results.update(_scaled(collection))
        return results

    def reset(self) -> None:
        for collection in self.collections:
            collection.reset()
