"""XSum / CNN-DailyMail summarization: loaders (local JSONL or hub), seq2seq data module, ROUGE evaluator."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from datasets import Dataset, Features, Value
from rouge_score import rouge_scorer
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric, MetricCollection
from transformers import DataCollatorForSeq2Seq

from dcft_lab.data.splits import resolve_source, train_and_eval_examples
from dcft_lab.data.tasks import TaskSpec, get_task, resolve_data_root

from .resumable import eval_loader, process_layout, train_loader

SPLITS = ("train", "validation", "test")
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
SUMMARY_FEATURES = Features({"document": Value("string"), "summary": Value("string")})


@dataclass(frozen=True)
class SummarizationSource:
    folder: str  # <root>/<folder>/{train,validation,test}.jsonl with fields document, summary
    hub: tuple[str, str | None]  # (path, config name) for datasets.load_dataset
    hub_fields: tuple[str, str]  # hub column names holding (document, summary)
    # Smaller stand-in file used for validation/test when the full folder is absent: (folder, file name).
    sample: tuple[str, str] | None = None


SOURCES = {
    "xsum": SummarizationSource("xsum", ("EdinburghNLP/xsum", None), ("document", "summary"),
                                sample=("xsum_test_sample", "xsum_test_1000.jsonl")),
    "cnn_dailymail": SummarizationSource("cnn_dailymail", ("abisee/cnn_dailymail", "3.0.0"), ("article", "highlights")),
}


@dataclass(frozen=True)
class GenerationSettings:
    """Beam-search settings for evaluation. max_new_tokens, when set, replaces max_length (which counts the
    decoder start token). Defaults per task are those of facebook/bart-large-xsum and facebook/bart-large-cnn."""

    num_beams: int = 4
    max_length: int = 62
    max_new_tokens: int | None = None
    min_length: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    early_stopping: bool = True

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs = asdict(self)
        kwargs.pop("max_length" if self.max_new_tokens is not None else "max_new_tokens")
        return kwargs


DEFAULT_GENERATION = {
    "xsum": GenerationSettings(num_beams=6, max_length=62, min_length=11, length_penalty=1.0, no_repeat_ngram_size=3),
    "cnn_dailymail": GenerationSettings(num_beams=4, max_length=142, min_length=56, length_penalty=2.0,
                                        no_repeat_ngram_size=3),
}


def generation_settings(task: str, overrides: Mapping[str, Any] | GenerationSettings | None = None) -> GenerationSettings:
    """The task's default generation settings with `overrides` (a mapping of field -> value) applied."""
    if isinstance(overrides, GenerationSettings):
        return overrides
    base = DEFAULT_GENERATION.get(task, GenerationSettings())
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {f.name for f in fields(GenerationSettings)})
    if unknown:
        raise ValueError(f"unknown generation setting(s) {unknown}; expected some of {[f.name for f in fields(GenerationSettings)]}")
    return replace(base, **overrides)


# ----------------------------------------------------------------------------------------------------- loading
def _source_of(task: str) -> SummarizationSource:
    if task not in SOURCES:
        raise ValueError(f"summarization task '{task}' is not one of {tuple(SOURCES)}")
    return SOURCES[task]


def summarization_local_path(task: str, split: str, data_root: str | Path) -> Path:
    """<root>/<task folder>/<split>.jsonl; for XSum without that folder, validation/test fall back to
    <root>/xsum_test_sample/xsum_test_1000.jsonl."""
    source = _source_of(task)
    if split not in SPLITS:
        raise ValueError(f"summarization split '{split}' is not one of {SPLITS}")
    root = Path(data_root)
    if not (root / source.folder).is_dir() and source.sample is not None and split != "train":
        sample_path = root / source.sample[0] / source.sample[1]
        if sample_path.is_file():
            return sample_path
    return root / source.folder / f"{split}.jsonl"


def read_summary_jsonl(path: str | Path) -> Dataset:
    """Rows with string fields document and summary (other fields ignored), one JSON object per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"summarization file not found: {path}; expected JSON lines with 'document' and 'summary'")
    rows: dict[str, list[str]] = {"document": [], "summary": []}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg}); expected one object per line") from None
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in rows):
                raise ValueError(f"{path}:{line_number}: expected an object with string fields 'document' and 'summary'")
            rows["document"].append(record["document"])
            rows["summary"].append(record["summary"])
    return Dataset.from_dict(rows, features=SUMMARY_FEATURES)


def load_summarization_split(task: str, split: str, data_root: str | Path | None, source: str = "auto") -> Dataset:
    """Columns document, summary. source "auto" is local when the task folder (or, for XSum, the test sample
    folder) exists under the data root, else the hub (EdinburghNLP/xsum, abisee/cnn_dailymail 3.0.0)."""
    spec = _source_of(task)
    if split not in SPLITS:
        raise ValueError(f"summarization split '{split}' is not one of {SPLITS}")
    root = resolve_data_root(data_root)
    folders = (spec.folder,) + ((spec.sample[0],) if spec.sample else ())
    if resolve_source(source, root, folders) == "local":
        return read_summary_jsonl(summarization_local_path(task, split, root))
    from datasets import load_dataset  # hub access only when asked for

    path, name = spec.hub
    dataset = load_dataset(path, name, split=split) if name else load_dataset(path, split=split)
    document, summary = spec.hub_fields
    dataset = dataset.select_columns([document, summary])
    if (document, summary) != ("document", "summary"):
        dataset = dataset.rename_columns({document: "document", summary: "summary"})
    return dataset


# ------------------------------------------------------------------------------------------------------ ROUGE
@functools.cache
def sentence_splitter() -> str:
    """'nltk_punkt' when nltk's punkt_tab data is installed (as in HF run_summarization), else 'regex'."""
    try:
        import nltk

        nltk.data.find("tokenizers/punkt_tab/english/")
        return "nltk_punkt"
    except (ImportError, LookupError):
        return "regex"


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: nltk sent_tokenize if punkt is available offline, else split after . ! ? followed by
    whitespace (and at newlines)."""
    text = text.strip()
    if sentence_splitter() == "nltk_punkt":
        import nltk

        return nltk.sent_tokenize(text)
    return [sentence for sentence in re.split(r"(?<=[.!?])\s+|\n+", text) if sentence.strip()]


@functools.cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_f1(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE F-measures (0-1) of one prediction against one reference with stemming; texts are put one sentence
    per line first, which only rougeLsum (summary-level LCS over sentences) depends on."""
    scores = _scorer().score("\n".join(split_sentences(reference)), "\n".join(split_sentences(prediction)))
    return {key: scores[key].fmeasure for key in ROUGE_KEYS}


def corpus_rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean per-example ROUGE F-measure, 0-100 (no bootstrap resampling)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions ({len(predictions)}) and references ({len(references)}), >0")
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for prediction, reference in zip(predictions, references):
        for key, value in rouge_f1(prediction, reference).items():
            totals[key] += value
    return {key: 100.0 * total / len(predictions) for key, total in totals.items()}


class RougeEvaluator(nn.Module):
    """ROUGE-1/2/L/Lsum (0-100, mean per-example F-measure, stemmed) of generated summaries.

    update() calls model.generate (works for PEFT models too) on the batch's input_ids / attention_mask with the
    configured beam-search settings, decodes, and scores each prediction against batch["meta"]["references"].
    Per-example scores are averaged with torchmetrics MeanMetric; the decoded texts are kept in .predictions /
    .references for inspection. Under DDP the training module gathers every process's score_batch() outputs and
    adds them in single-process order (AdapterModule), so the means are summed in the same order as in one process.
    """

    def __init__(self, tokenizer, generation: GenerationSettings | Mapping[str, Any] | None = None, task: str = "xsum"):
        super().__init__()
        self.tokenizer = tokenizer
        self.generation = generation_settings(task, generation)
        self.scores = MetricCollection({key: MeanMetric() for key in ROUGE_KEYS}, compute_groups=False)
        self.predictions: list[str] = []
        self.references: list[str] = []

    @torch.no_grad()
    def update(self, model: nn.Module, batch: Mapping[str, Any], dataloader_idx: int = 0) -> None:
        self.add_scored(self.score_batch(model, batch, dataloader_idx), dataloader_idx)

    @torch.no_grad()
    def score_batch(self, model: nn.Module, batch: Mapping[str, Any], dataloader_idx: int = 0) -> tuple:
        """The model's part of update(): (decoded predictions, references) of one eval batch."""
        if "meta" not in batch or "references" not in batch["meta"]:
            raise ValueError("summarization eval batch lacks meta['references']; use the data module's val_dataloader()")
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   **self.generation.generate_kwargs())
        predictions = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return predictions, batch["meta"]["references"]

    def add_scored(self, scored: tuple, dataloader_idx: int = 0) -> None:
        self.update_texts(*scored)

    def update_texts(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        for prediction, reference in zip(predictions, references):
            prediction = prediction.strip()
            for key, value in rouge_f1(prediction, reference).items():
                self.scores[key].update(torch.tensor(value, dtype=torch.float64))
            self.predictions.append(prediction)
            self.references.append(reference)

    def compute(self) -> dict[str, float]:
        if self.scores[ROUGE_KEYS[0]].update_count == 0:
            return {}
        return {key: 100.0 * float(value) for key, value in self.scores.compute().items()}

    def reset(self) -> None:
        self.scores.reset()
        self.predictions, self.references = [], []


# ------------------------------------------------------------------------------------------------ data module
class Seq2SeqCollator:
    """Pads inputs and labels (label padding -100, ignored by the loss); reference summaries go to batch["meta"]."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(self.pad([{k: v for k, v in row.items() if k != "references"} for row in rows]))
        if "references" in rows[0]:
            batch["meta"] = {"references": [row["references"] for row in rows]}
        return batch


def tokenize_summaries(dataset: Dataset, tokenizer, max_source_length: int, max_target_length: int,
                       keep_references: bool) -> Dataset:
    """input_ids / attention_mask of the documents and labels of the summaries (both truncated)."""

    def encode(batch: Mapping[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch["document"], max_length=max_source_length, truncation=True)
        encoded["labels"] = tokenizer(text_target=batch["summary"], max_length=max_target_length, truncation=True)["input_ids"]
        if keep_references:
            encoded["references"] = list(batch["summary"])
        return dict(encoded)

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, load_from_cache_file=False)


class Seq2SeqDataModule(pl.LightningDataModule):
    """XSum / CNN-DailyMail for an encoder-decoder model (BART). Batches: input_ids, attention_mask, labels
    (pad -> -100); eval batches also carry batch["meta"]["references"] (raw summaries).

    The eval set is the task's `eval_split` ("validation"; for XSum with only the local test sample, that sample).
    Without a local train file set train_from_eval=N: N random eval rows (split_seed) become the training set.
    Without train_from_eval a missing train file is an error, unless fallback_train_cap is set: then 10% of the
    eval file (at most fallback_train_cap rows) is carved and an unset eval_limit becomes fallback_eval_limit,
    with a warning and data_info()["fallback"] saying so (the CLI's smoke default; see data/factory.py).
    train_limit / eval_limit take seeded (split_seed) random subsets; `seed` shuffles the train loader.
    `generation` overrides the task's beam-search defaults (see GenerationSettings) used by make_evaluator().
    """

    def __init__(
        self,
        task: str = "xsum",
        tokenizer=None,
        data_root: str | Path | None = None,
        source: str = "auto",
        max_source_length: int = 512,
        max_target_length: int = 64,
        train_batch_size: int = 8,
        eval_batch_size: int = 16,
        train_limit: int | None = None,
        eval_limit: int | None = None,
        train_from_eval: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        split_seed: int = 0,
        eval_split: str = "validation",
        generation: Mapping[str, Any] | None = None,
        fallback_train_cap: int | None = None,
        fallback_eval_limit: int | None = None,
    ):
        super().__init__()
        self.spec: TaskSpec = get_task(task)
        if self.spec.family != "seq2seq" or self.spec.name not in SOURCES:
            raise ValueError(f"task '{self.spec.name}' is not a summarization task; expected one of {tuple(SOURCES)}")
        if tokenizer is None:
            raise ValueError("Seq2SeqDataModule needs a tokenizer")
        if eval_split not in ("validation", "test"):
            raise ValueError(f"eval_split '{eval_split}' is not 'validation' or 'test'")
        self.tokenizer = tokenizer
        self.data_root, self.source, self.eval_split = data_root, source, eval_split
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.train_batch_size, self.eval_batch_size = train_batch_size, eval_batch_size
        self.train_limit, self.eval_limit, self.train_from_eval = train_limit, eval_limit, train_from_eval
        self.seed, self.split_seed, self.num_workers = seed, split_seed, num_workers
        self.generation = generation_settings(self.spec.name, generation)
        self.fallback_train_cap, self.fallback_eval_limit = fallback_train_cap, fallback_eval_limit
        self.collator = Seq2SeqCollator(tokenizer)
        self.train_examples: Dataset | None = None
        self.eval_examples: Dataset | None = None
        self.train_features: Dataset | None = None
        self.eval_features: Dataset | None = None
        self._info: dict[str, Any] = {}

    @property
    def eval_names(self) -> tuple[str, ...]:
        return self.spec.eval_names

    def _load_examples(self) -> None:
        task = self.spec.name
        root = resolve_data_root(self.data_root)
        spec = SOURCES[task]
        folders = (spec.folder,) + ((spec.sample[0],) if spec.sample else ())
        source = resolve_source(self.source, root, folders)
        eval_examples = load_summarization_split(task, self.eval_split, root, source)
        local = source == "local"
        info: dict[str, Any] = {"task": task, "source": source, "eval_split": self.eval_split}
        if local and spec.sample is not None and not (root / spec.folder).is_dir():
            info["eval_file_is_test_sample"] = True  # e.g. XSum: the 1000-row test sample stands in for validation
        self.train_examples, self.eval_examples, split_info = train_and_eval_examples(
            eval_examples, lambda: load_summarization_split(task, "train", root, source), source=source,
            eval_file=summarization_local_path(task, self.eval_split, root) if local else None,
            train_file=summarization_local_path(task, "train", root) if local else None,
            train_from_eval=self.train_from_eval, train_limit=self.train_limit, eval_limit=self.eval_limit,
            fallback_train_cap=self.fallback_train_cap, fallback_eval_limit=self.fallback_eval_limit,
            split_seed=self.split_seed)
        info.update(split_info)
        self._info = info

    def setup(self, stage: str | None = None) -> None:
        if self.eval_examples is None:
            self._load_examples()
        if self.eval_features is None:
            self.eval_features = tokenize_summaries(self.eval_examples, self.tokenizer, self.max_source_length,
                                                    self.max_target_length, keep_references=True)
        if stage in (None, "fit") and self.train_features is None:
            self.train_features = tokenize_summaries(self.train_examples, self.tokenizer, self.max_source_length,
                                                     self.max_target_length, keep_references=False)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return train_loader(self.train_features, self.train_batch_size, self.seed, self.collator, self.num_workers,
                            getattr(self, "resume_position", None), *process_layout(self))

    def val_dataloader(self) -> list[DataLoader]:
        self.setup("validate")
        return [eval_loader(self.eval_features, self.eval_batch_size, self.collator, self.num_workers,
                            *process_layout(self))]

    def make_evaluator(self) -> RougeEvaluator:
        return RougeEvaluator(self.tokenizer, self.generation, task=self.spec.name)

    def data_info(self) -> dict[str, Any]:
        if not self._info:
            self._load_examples()
        return dict(self._info, max_source_length=self.max_source_length, max_target_length=self.max_target_length,
                    generation=asdict(self.generation), sentence_splitter=sentence_splitter())
