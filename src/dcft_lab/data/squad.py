"""SQuAD v1.1 / v2.0: loaders (official JSON or hub), extractive-QA preprocessing and post-processing (as in
transformers' examples/pytorch/question-answering run_qa.py + utils_qa.py), official EM/F1, evaluator, data module."""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from datasets import Dataset, Features, Value
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from transformers import DataCollatorWithPadding

from dcft_lab.data.splits import resolve_source, train_and_eval_examples
from dcft_lab.data.tasks import TaskSpec, get_task, resolve_data_root

from .resumable import eval_loader, process_layout, train_loader

# version -> (local folder, train file, dev file, hub dataset)
SQUAD_LAYOUT = {
    "v1": ("squad_v1.1", "train-v1.1.json", "dev-v1.1.json", "rajpurkar/squad"),
    "v2": ("squad_v2.0", "train-v2.0.json", "dev-v2.0.json", "rajpurkar/squad_v2"),
}
TASK_VERSION = {"squad_v1": "v1", "squad_v2": "v2"}
SPLITS = ("train", "validation")
EXPECTED_JSON = "official SQuAD JSON {'data': [{'title', 'paragraphs': [{'context', 'qas': [{'id', 'question', 'answers'}]}]}]}"

SQUAD_FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "answers": {"text": [Value("string")], "answer_start": [Value("int32")]},  # list features (datasets>=3)
    }
)
# Keys of an eval batch that are not model inputs; they travel in batch["meta"].
META_KEYS = ("example_id", "offset_mapping", "feature_index")


# ----------------------------------------------------------------------------------------------------- loading
def _check_version(version: str) -> None:
    if version not in SQUAD_LAYOUT:
        raise ValueError(f"SQuAD version '{version}' is not one of {tuple(SQUAD_LAYOUT)}")


def squad_local_path(version: str, split: str, data_root: str | Path) -> Path:
    """<root>/squad_v1.1/{train-v1.1.json,dev-v1.1.json} or <root>/squad_v2.0/{train-v2.0.json,dev-v2.0.json}."""
    _check_version(version)
    if split not in SPLITS:
        raise ValueError(f"SQuAD split '{split}' is not one of {SPLITS}")
    folder, train_file, dev_file, _ = SQUAD_LAYOUT[version]
    return Path(data_root) / folder / (train_file if split == "train" else dev_file)


def read_squad_json(path: str | Path) -> Dataset:
    """Flatten an official SQuAD JSON file (v1.1 or v2.0) into the HF `squad` schema, one row per question.

    Unanswerable v2.0 questions (is_impossible) get empty answer lists, as in the hub's squad_v2.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file not found: {path}; expected {EXPECTED_JSON}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}); expected {EXPECTED_JSON}") from None
    rows: dict[str, list] = {name: [] for name in SQUAD_FEATURES}
    try:
        for article in raw["data"]:
            title = article.get("title", "")
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers = [] if qa.get("is_impossible", False) else qa["answers"]
                    rows["id"].append(qa["id"])
                    rows["title"].append(title)
                    rows["context"].append(context)
                    rows["question"].append(qa["question"])
                    rows["answers"].append(
                        {"text": [a["text"] for a in answers], "answer_start": [int(a["answer_start"]) for a in answers]}
                    )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: malformed SQuAD JSON ({type(error).__name__}: {error}); expected {EXPECTED_JSON}") from None
    return Dataset.from_dict(rows, features=SQUAD_FEATURES)


def load_squad_examples(version: str, split: str, data_root: str | Path | None, source: str = "auto") -> Dataset:
    """SQuAD questions with columns id, title, context, question, answers {text: [...], answer_start: [...]}.

    version: "v1" | "v2"; split: "train" | "validation"; source: "local" | "hub" | "auto" (local when the
    version's folder exists under the data root, else datasets.load_dataset of rajpurkar/squad[_v2]).
    """
    _check_version(version)
    if split not in SPLITS:
        raise ValueError(f"SQuAD split '{split}' is not one of {SPLITS}")
    root = resolve_data_root(data_root)
    folder, _, _, hub_name = SQUAD_LAYOUT[version]
    if resolve_source(source, root, (folder,)) == "local":
        return read_squad_json(squad_local_path(version, split, root))
    from datasets import load_dataset  # hub access only when asked for

    return load_dataset(hub_name, split=split).select_columns(list(SQUAD_FEATURES))


# ------------------------------------------------------------------------------------------------ preprocessing
def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; SQuAD preprocessing needs offset mappings")
    if tokenizer.padding_side != "right":
        raise ValueError(f"tokenizer.padding_side is '{tokenizer.padding_side}'; SQuAD preprocessing expects 'right'")


def _fit_questions(questions: list[str], tokenizer, max_length: int, doc_stride: int) -> list[str]:
    """Questions cut at a token boundary to at most half of the window's non-overlap room, so every window holds
    more than doc_stride context tokens (the fast tokenizer panics otherwise) and windows advance by at least that
    half. Real tokenizers at 384/128 never need it (limit 126 tokens); character-level ones at short lengths do."""
    limit = (max_length - tokenizer.num_special_tokens_to_add(pair=True) - doc_stride) // 2
    if limit < 1:
        raise ValueError(f"max_length={max_length} leaves no room for a question next to doc_stride={doc_stride}")
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [question if len(offsets) <= limit else question[: offsets[limit - 1][1]]
            for question, offsets in zip(questions, encoded["offset_mapping"])]


def _tokenize_windows(examples: Mapping[str, list], tokenizer, max_length: int, doc_stride: int, padding):
    # Question first, context second; only the context is truncated, in overlapping windows of doc_stride tokens.
    questions = [question.lstrip() for question in examples["question"]]  # some questions start with spaces
    questions = _fit_questions(questions, tokenizer, max_length, doc_stride)
    return tokenizer(
        questions,
        examples["context"],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=padding,
    )


def prepare_train_features(
    examples: Mapping[str, list], tokenizer, max_length: int = 384, doc_stride: int = 128, padding: bool | str = False
) -> dict[str, list]:
    """Batched map function: one feature per context window with start/end token positions of the first gold
    answer, or the CLS index when the answer is not (entirely) inside the window or the question is unanswerable."""
    tokenized = _tokenize_windows(examples, tokenizer, max_length, doc_stride, padding)
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    tokenized["start_positions"], tokenized["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        sequence_ids = tokenized.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        start, end = cls_index, cls_index
        if answers["answer_start"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            context_start = sequence_ids.index(1)
            context_end = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
            if offsets[context_start][0] <= start_char and offsets[context_end][1] >= end_char:
                start = context_start
                while start <= context_end and offsets[start][0] <= start_char:
                    start += 1
                start -= 1
                end = context_end
                while offsets[end][1] >= end_char:
                    end -= 1
                end += 1
        tokenized["start_positions"].append(start)
        tokenized["end_positions"].append(end)
    return dict(tokenized)


def prepare_eval_features(
    examples: Mapping[str, list], tokenizer, max_length: int = 384, doc_stride: int = 128, padding: bool | str = False
) -> dict[str, list]:
    """Batched map function: one feature per context window, keeping the example id and the offset mapping with
    None for every non-context token (so post-processing can only pick context spans)."""
    tokenized = _tokenize_windows(examples, tokenizer, max_length, doc_stride, padding)
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    tokenized["example_id"] = []
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        tokenized["example_id"].append(examples["id"][sample_mapping[i]])
        tokenized["offset_mapping"][i] = [
            offset if sequence_ids[k] == 1 else None for k, offset in enumerate(tokenized["offset_mapping"][i])
        ]
    return dict(tokenized)


def build_features(examples: Dataset, tokenizer, train: bool, max_length: int, doc_stride: int,
                   padding: bool | str = False) -> Dataset:
    """Tokenize examples into features (train: with positions; eval: with example_id, offsets, feature_index)."""
    _require_fast(tokenizer)
    if not 0 < doc_stride < max_length:
        raise ValueError(f"doc_stride={doc_stride} must be positive and smaller than max_length={max_length}")
    prepare = prepare_train_features if train else prepare_eval_features
    features = examples.map(
        prepare,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "doc_stride": doc_stride, "padding": padding},
        load_from_cache_file=False,
        desc=None,
    )
    if not train:
        features = features.add_column("feature_index", list(range(len(features))))
    return features


class QACollator:
    """Pads model inputs into tensors; eval-only keys (example_id, offsets, feature_index) go to batch["meta"]."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        meta = {key: [row[key] for row in rows] for key in META_KEYS if key in rows[0]}
        batch = dict(self.pad([{k: v for k, v in row.items() if k not in META_KEYS} for row in rows]))
        if meta:
            meta["feature_index"] = torch.tensor(meta["feature_index"], dtype=torch.long)
            batch["meta"] = meta
        return batch


# ---------------------------------------------------------------------------------------------- post-processing
def _column(rows: Any, name: str) -> list:
    return list(rows[name]) if isinstance(rows, Dataset) else [row[name] for row in rows]


def postprocess_qa_predictions(
    examples: Any,
    features: Any,
    start_logits: Sequence[Sequence[float]],
    end_logits: Sequence[Sequence[float]],
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, str]:
    """Answer text per example id from per-feature start/end logits (utils_qa.postprocess_qa_predictions).

    examples: rows with id and context; features: rows with example_id and offset_mapping (None off-context),
    aligned with the logits (one 1-D array per feature; positions past the offsets are ignored). For each example,
    the n_best start x n_best end candidates of every window are scored by start+end logit; the best valid span
    (inside the context, end >= start, at most max_answer_length tokens) wins. For v2, the null answer "" is given
    when the minimum over windows of the CLS score (position 0) beats the best span by more than the threshold.
    Unlike utils_qa, an example with no valid span gets "" (utils_qa writes the placeholder "empty").
    """
    example_ids, contexts = _column(examples, "id"), _column(examples, "context")
    feature_example_ids, feature_offsets = _column(features, "example_id"), _column(features, "offset_mapping")
    if not len(feature_example_ids) == len(start_logits) == len(end_logits):
        raise ValueError(
            f"{len(feature_example_ids)} features but {len(start_logits)} start / {len(end_logits)} end logit rows"
        )
    features_of: dict[str, list[int]] = collections.defaultdict(list)
    for feature_index, example_id in enumerate(feature_example_ids):
        features_of[example_id].append(feature_index)

    predictions: dict[str, str] = {}
    for example_id, context in zip(example_ids, contexts):
        null_score = None
        best_score, best_text = -np.inf, None
        for feature_index in features_of.get(example_id, []):
            offsets = feature_offsets[feature_index]
            starts = np.asarray(start_logits[feature_index], dtype=np.float64)[: len(offsets)]
            ends = np.asarray(end_logits[feature_index], dtype=np.float64)[: len(offsets)]
            feature_null = starts[0] + ends[0]
            null_score = feature_null if null_score is None else min(null_score, feature_null)
            # n_best start x n_best end candidates on context tokens, scored all at once
            top_starts = np.array([k for k in np.argsort(starts)[::-1][:n_best] if offsets[k] is not None], dtype=int)
            top_ends = np.array([k for k in np.argsort(ends)[::-1][:n_best] if offsets[k] is not None], dtype=int)
            if not len(top_starts) or not len(top_ends):
                continue
            lengths = top_ends[None, :] - top_starts[:, None] + 1
            scores = np.where((lengths >= 1) & (lengths <= max_answer_length),
                              starts[top_starts][:, None] + ends[top_ends][None, :], -np.inf)
            row, col = np.unravel_index(np.argmax(scores), scores.shape)
            if scores[row, col] > best_score:
                start, end = top_starts[row], top_ends[col]
                best_score, best_text = scores[row, col], context[offsets[start][0] : offsets[end][1]]
        no_span = best_text is None
        if version_2 and null_score is not None and (no_span or null_score - best_score > null_score_diff_threshold):
            predictions[example_id] = ""
        else:
            predictions[example_id] = "" if no_span else best_text
    return predictions


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


class SquadEvaluator(nn.Module):
    """EM / F1 (0-100) for SQuAD. update() runs the QA model on an eval batch (meta stripped) and stores the logits
    per feature; compute() post-processes them into answers and scores the examples that received at least one
    feature (all of them in a full validation pass). Under DDP the training module gathers every process's
    score_batch() outputs and adds them in single-process order (AdapterModule); features seen twice count once."""

    def __init__(self, examples: Dataset, features: Dataset, version_2: bool, n_best: int = 20,
                 max_answer_length: int = 30, null_score_diff_threshold: float = 0.0):
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
    def update(self, model: nn.Module, batch: Mapping[str, Any], dataloader_idx: int = 0) -> None:
        self.add_scored(self.score_batch(model, batch, dataloader_idx), dataloader_idx)

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


# ------------------------------------------------------------------------------------------------ data module
class SquadDataModule(pl.LightningDataModule):
    """SQuAD v1.1 / v2.0 features for an extractive QA model (start/end logits).

    Train batches: input_ids, attention_mask[, token_type_ids], start_positions, end_positions.
    Eval batches: the same inputs without positions, plus batch["meta"] = {example_id, offset_mapping,
    feature_index}. With only the dev file available (train file missing) set train_from_eval=N: N questions of
    whole articles (by title, drawn with split_seed) become the training set and the other articles the eval set.
    Without train_from_eval a missing train file is an error, unless fallback_train_cap is set: then 10% of the
    dev file (at most fallback_train_cap questions) is carved and an unset eval_limit becomes fallback_eval_limit,
    with a warning and data_info()["fallback"] saying so (the CLI's smoke default; see data/factory.py).
    train_limit / eval_limit take a seeded (split_seed) random subset of examples; `seed` shuffles the train loader.
    """

    def __init__(
        self,
        task: str = "squad_v1",
        tokenizer=None,
        data_root: str | Path | None = None,
        source: str = "auto",
        max_length: int = 384,
        doc_stride: int = 128,
        train_batch_size: int = 16,
        eval_batch_size: int = 32,
        train_limit: int | None = None,
        eval_limit: int | None = None,
        train_from_eval: int | None = None,
        seed: int = 0,
        n_best: int = 20,
        max_answer_length: int = 30,
        num_workers: int = 0,
        split_seed: int = 0,
        null_score_diff_threshold: float = 0.0,
        fallback_train_cap: int | None = None,
        fallback_eval_limit: int | None = None,
    ):
        super().__init__()
        self.spec: TaskSpec = get_task(task)
        if self.spec.family != "qa" or self.spec.name not in TASK_VERSION:
            raise ValueError(f"task '{self.spec.name}' is not a SQuAD task; expected one of {tuple(TASK_VERSION)}")
        if tokenizer is None:
            raise ValueError("SquadDataModule needs a tokenizer")
        _require_fast(tokenizer)
        if not 0 < doc_stride < max_length:
            raise ValueError(f"doc_stride={doc_stride} must be positive and smaller than max_length={max_length}")
        self.version = TASK_VERSION[self.spec.name]
        self.tokenizer = tokenizer
        self.data_root, self.source = data_root, source
        self.max_length, self.doc_stride = max_length, doc_stride
        self.train_batch_size, self.eval_batch_size = train_batch_size, eval_batch_size
        self.train_limit, self.eval_limit, self.train_from_eval = train_limit, eval_limit, train_from_eval
        self.seed, self.split_seed, self.num_workers = seed, split_seed, num_workers
        self.n_best, self.max_answer_length = n_best, max_answer_length
        self.null_score_diff_threshold = null_score_diff_threshold
        self.fallback_train_cap, self.fallback_eval_limit = fallback_train_cap, fallback_eval_limit
        self.collator = QACollator(tokenizer)
        self.train_examples: Dataset | None = None
        self.eval_examples: Dataset | None = None
        self.train_features: Dataset | None = None
        self.eval_features: Dataset | None = None
        self._info: dict[str, Any] = {}

    @property
    def eval_names(self) -> tuple[str, ...]:
        return self.spec.eval_names

    def _load_examples(self) -> None:
        root = resolve_data_root(self.data_root)
        folder = SQUAD_LAYOUT[self.version][0]
        source = resolve_source(self.source, root, (folder,))
        eval_examples = load_squad_examples(self.version, "validation", root, source)
        local = source == "local"
        self.train_examples, self.eval_examples, split_info = train_and_eval_examples(
            eval_examples, lambda: load_squad_examples(self.version, "train", root, source), source=source,
            eval_file=squad_local_path(self.version, "validation", root) if local else None,
            train_file=squad_local_path(self.version, "train", root) if local else None,
            train_from_eval=self.train_from_eval, train_limit=self.train_limit, eval_limit=self.eval_limit,
            fallback_train_cap=self.fallback_train_cap, fallback_eval_limit=self.fallback_eval_limit,
            split_seed=self.split_seed, group_column="title", what="questions (whole articles)")
        self._info = {"task": self.spec.name, "source": source, **split_info}

    def setup(self, stage: str | None = None) -> None:
        if self.eval_examples is None:
            self._load_examples()
        if self.eval_features is None:
            self.eval_features = build_features(self.eval_examples, self.tokenizer, False, self.max_length, self.doc_stride)
        if stage in (None, "fit") and self.train_features is None:
            self.train_features = build_features(self.train_examples, self.tokenizer, True, self.max_length, self.doc_stride)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return train_loader(self.train_features, self.train_batch_size, self.seed, self.collator, self.num_workers,
                            getattr(self, "resume_position", None), *process_layout(self))

    def val_dataloader(self) -> list[DataLoader]:
        self.setup("validate")
        return [eval_loader(self.eval_features, self.eval_batch_size, self.collator, self.num_workers,
                            *process_layout(self))]

    def make_evaluator(self) -> SquadEvaluator:
        self.setup("validate")
        return SquadEvaluator(self.eval_examples, self.eval_features, version_2=self.version == "v2",
                              n_best=self.n_best, max_answer_length=self.max_answer_length,
                              null_score_diff_threshold=self.null_score_diff_threshold)

    def data_info(self) -> dict[str, Any]:
        if not self._info:
            self._load_examples()
        info = dict(self._info, max_length=self.max_length, doc_stride=self.doc_stride)
        if self.train_features is not None:
            info["n_train_features"] = len(self.train_features)
        if self.eval_features is not None:
            info["n_eval_features"] = len(self.eval_features)
        return info

