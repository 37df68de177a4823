"""SQuAD scoring: the official EM / F1 (evaluate-v1.1 / v2.0) and the evaluator that turns a model's start/end logits
into answers (squad_processing.postprocess_qa_predictions) and scores them."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .evaluator import Evaluator
from .squad_processing import postprocess_qa_predictions


# ---------------------------------------------------------------------------------------------------- EM / F1
def normalize_answer(text: str) -> str:
    """Official SQuAD normalization: lowercase, drop punctuation, drop articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE)
    return " ".join(text.split())


_PUNCTUATION = set(string.punctuation)


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 after normalization; as in evaluate-v2.0, if either side is empty, F1 is 1 when both are, else 0."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(predictions: Mapping[str, str], gold_answers: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Official EM / F1 (0-100) over every question in gold_answers: max over gold answers; gold answers that
    normalize to "" are dropped and a question with none left is unanswerable (gold [""]); a missing prediction
    scores 0 (as the official scripts do)."""
    if not gold_answers:
        raise ValueError("squad_em_f1 needs at least one gold question")
    exact, f1 = 0.0, 0.0
    for question_id, answers in gold_answers.items():
        golds = [answer for answer in answers if normalize_answer(answer)] or [""]
        if question_id not in predictions:
            continue
        prediction = predictions[question_id]
        exact += max(exact_match_score(prediction, gold) for gold in golds)
        f1 += max(f1_score(prediction, gold) for gold in golds)
    return {"exact_match": 100.0 * exact / len(gold_answers), "f1": 100.0 * f1 / len(gold_answers)}


# -------------------------------------------------------------------------------------------------- evaluator
class _LogitStore(Metric):
    """Start/end logits per eval feature, kept as list states so DDP gathers them (dist_reduce_fx='cat')."""

    full_state_update = False

    def __init__(self, width: int):
        super().__init__()
        self.width = width  # logits are padded/cut to the longest eval feature so rows can be concatenated
        self.add_state("feature_index", default=[], dist_reduce_fx="cat")
        self.add_state("start_logits", default=[], dist_reduce_fx="cat")
        self.add_state("end_logits", default=[], dist_reduce_fx="cat")

    def _fit(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.detach().float()[:, : self.width]
        return nn.functional.pad(logits, (0, self.width - logits.shape[1]), value=-1e4)

    def update(self, feature_index: torch.Tensor, start_logits: torch.Tensor, end_logits: torch.Tensor) -> None:
        self.feature_index.append(feature_index.to(self.device, torch.long).reshape(-1))
        self.start_logits.append(self._fit(start_logits))
        self.end_logits.append(self._fit(end_logits))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.feature_index), dim_zero_cat(self.start_logits), dim_zero_cat(self.end_logits)


class SquadEvaluator(Evaluator):
    """EM / F1 (0-100) for SQuAD. update() runs the QA model on an eval batch (meta stripped) and stores the logits
    per feature; compute() post-processes them into answers and scores the examples that received at least one
    feature (all of them in a full validation pass). Under DDP the training module gathers every process's
    score_batch() outputs and adds them in single-process order (AdapterModule); features seen twice count once."""

    def __init__(self, examples: Dataset, features: Dataset, version_2: bool, *, n_best: int,
                 max_answer_length: int, null_score_diff_threshold: float):  # values: conf/task/squad_v*.yaml
        super().__init__()
        self.example_ids = list(examples["id"])
        self.contexts = list(examples["context"])
        self.gold = {qid: list(answers["text"]) for qid, answers in zip(self.example_ids, examples["answers"])}
        self.feature_example_ids = list(features["example_id"])
        self.feature_offsets = list(features["offset_mapping"])
        self.version_2, self.n_best, self.max_answer_length = version_2, n_best, max_answer_length
        self.null_score_diff_threshold = null_score_diff_threshold
        self.store = _LogitStore(width=max((len(offsets) for offsets in self.feature_offsets), default=1))
        self.predictions: dict[str, str] = {}  # answers of the last compute(), for inspection

    @torch.no_grad()
    def score_batch(self, model: nn.Module, batch: Mapping[str, Any], dataloader_idx: int = 0) -> tuple:
        """The model's part of update(): (feature_index, start_logits, end_logits) of one eval batch."""
        if dataloader_idx != 0:
            raise ValueError(f"SQuAD has one eval set; got dataloader_idx {dataloader_idx}")
        if "meta" not in batch or "feature_index" not in batch["meta"]:
            raise ValueError("SQuAD eval batch lacks meta['feature_index']; use the data module's val_dataloader()")
        inputs = {key: value for key, value in batch.items() if key not in ("meta", "start_positions", "end_positions")}
        outputs = model(**inputs)
        return batch["meta"]["feature_index"], outputs.start_logits, outputs.end_logits

    def add_scored(self, scored: tuple, dataloader_idx: int = 0) -> None:
        self.update_logits(*scored)

    @torch.no_grad()
    def update_logits(self, feature_index: torch.Tensor, start_logits: torch.Tensor, end_logits: torch.Tensor) -> None:
        """Update from logits already computed (lets a caller reuse its validation forward pass)."""
        self.store.update(torch.as_tensor(feature_index), start_logits, end_logits)

    def compute(self) -> dict[str, float]:
        if self.store.update_count == 0:
            return {}  # nothing evaluated (same convention as GlueEvaluator for an unused eval set)
        feature_index, start_logits, end_logits = (t.cpu() for t in self.store.compute())
        rows = dict(zip(feature_index.tolist(), range(len(feature_index))))  # feature -> last row holding it
        seen = sorted(rows)
        features = [{"example_id": self.feature_example_ids[i], "offset_mapping": self.feature_offsets[i]} for i in seen]
        covered = {feature["example_id"] for feature in features}
        examples = [{"id": q, "context": c} for q, c in zip(self.example_ids, self.contexts) if q in covered]
        starts = start_logits[[rows[i] for i in seen]].numpy()
        ends = end_logits[[rows[i] for i in seen]].numpy()
        self.predictions = postprocess_qa_predictions(
            examples, features, starts, ends, n_best=self.n_best, max_answer_length=self.max_answer_length,
            version_2=self.version_2, null_score_diff_threshold=self.null_score_diff_threshold,
        )
        return squad_em_f1(self.predictions, {q: self.gold[q] for q in self.predictions})

    def reset(self) -> None:
        self.store.reset()
