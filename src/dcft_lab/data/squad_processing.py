"""SQuAD extractive-QA features and post-processing (as in transformers' examples/pytorch/question-answering run_qa.py
+ utils_qa.py): question/context windows with answer positions (train) or offsets (eval), the collator, and the
answer text per question from the model's start/end logits."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding

# Keys of an eval batch that are not model inputs; they travel in batch["meta"].
META_KEYS = ("example_id", "offset_mapping", "feature_index")


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
