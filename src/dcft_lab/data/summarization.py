"""XSum / CNN-DailyMail summarization: loaders (local JSONL or hub), seq2seq data module, ROUGE evaluator."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, Features, Value
from rouge_score import rouge_scorer
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from transformers import DataCollatorForSeq2Seq

from .base import ExampleDataModule
from .evaluator import Evaluator
from .jsonl import iter_jsonl, string_columns
from .splits import resolve_source
from .tasks import FAMILY_TASK_KEYS, TaskSpec, resolve_data_root, task_name

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


# task -> where its dataset lives
SUMMARIZATION_DATASETS = {
    "xsum": SummarizationSource("xsum", ("EdinburghNLP/xsum", None), ("document", "summary"),
                                sample=("xsum_test_sample", "xsum_test_1000.jsonl")),
    "cnn_dailymail": SummarizationSource("cnn_dailymail", ("abisee/cnn_dailymail", "3.0.0"), ("article", "highlights")),
}


@dataclass(frozen=True)
class GenerationSettings:
    """Beam-search settings for evaluation. max_new_tokens, when set, replaces max_length (which counts the
    decoder start token). The values live in one place, the task's ``generation`` in conf/task/<name>.yaml (no
    defaults here: a second copy would be free to disagree)."""

    num_beams: int
    max_length: int
    max_new_tokens: int | None
    min_length: int
    length_penalty: float
    no_repeat_ngram_size: int
    early_stopping: bool

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs = asdict(self)
        kwargs.pop("max_length" if self.max_new_tokens is not None else "max_new_tokens")
        return kwargs


def generation_settings(generation: Mapping[str, Any] | GenerationSettings) -> GenerationSettings:
    """The settings of a run's ``task.generation`` (complete: conf/task/<name>.yaml gives every field)."""
    if isinstance(generation, GenerationSettings):
        return generation
    names = [f.name for f in fields(GenerationSettings)]
    given = dict(generation or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"unknown generation setting(s) {unknown}; expected some of {names}")
    missing = [name for name in names if name not in given]
    if missing:
        raise ValueError(f"task.generation lacks {missing}; expected every one of {names} (conf/task/<name>.yaml)")
    return GenerationSettings(**given)


# ----------------------------------------------------------------------------------------------------- loading
def _source_of(task: str | TaskSpec) -> SummarizationSource:
    name = task_name(task)
    if name not in SUMMARIZATION_DATASETS:
        raise ValueError(f"summarization task '{name}' is not one of {tuple(SUMMARIZATION_DATASETS)}")
    return SUMMARIZATION_DATASETS[name]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"summarization split '{split}' is not one of {SPLITS}")


def summarization_layout(task: str | TaskSpec) -> str:
    """The expected local layout of a task's files, for errors."""
    folder = _source_of(task).folder
    return f"<data_root>/{folder}/{{train,validation,test}}.jsonl (fields document, summary)"


def _folders_present(source: SummarizationSource) -> Callable[[Path], bool]:
    """data.source=auto reads local files when the task folder (or, for XSum, the test sample folder) exists."""
    folders = (source.folder,) + ((source.sample[0],) if source.sample else ())
    return lambda root: any((root / folder).is_dir() for folder in folders)


def summarization_local_path(task: str | TaskSpec, split: str, data_root: str | Path) -> Path:
    """<root>/<task folder>/<split>.jsonl; for XSum without that folder, validation/test fall back to
    <root>/xsum_test_sample/xsum_test_1000.jsonl."""
    source = _source_of(task)
    _check_split(split)
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
    return Dataset.from_dict(string_columns(path, ("document", "summary")), features=SUMMARY_FEATURES)


def read_documents(path: str | Path) -> tuple[Dataset, list[str], bool]:
    """(examples with document / summary, ids, labeled) of documents to summarize, one JSON object per line:
    ``document`` required, ``summary`` optional (all rows have one: labeled; else summaries are ""), ``id`` optional
    (else the 0-based row number)."""
    documents, summaries, ids = [], [], []
    labeled = True
    expected = "an object with a string field 'document'"
    for number, row in iter_jsonl(path, expected):
        if not isinstance(row.get("document"), str):
            raise ValueError(f"{path}:{number}: expected {expected}")
        summary = row.get("summary")
        labeled = labeled and isinstance(summary, str)
        documents.append(row["document"])
        summaries.append(summary if isinstance(summary, str) else "")
        ids.append(str(row["id"]) if row.get("id") is not None else str(len(ids)))
    if not documents:
        raise ValueError(f"{path} has no rows; expected JSON lines with 'document' (and 'summary', 'id')")
    return Dataset.from_dict({"document": documents, "summary": summaries}, features=SUMMARY_FEATURES), ids, labeled


def _read_split(task: str | TaskSpec, split: str, root: Path | None, source: str) -> Dataset:
    """One split; ``source`` is already resolved ('local' or 'hub')."""
    if source == "local":
        return read_summary_jsonl(summarization_local_path(task, split, root))
    from datasets import load_dataset  # hub access only when asked for

    spec = _source_of(task)
    path, name = spec.hub
    dataset = load_dataset(path, name, split=split) if name else load_dataset(path, split=split)
    document, summary = spec.hub_fields
    dataset = dataset.select_columns([document, summary])
    if (document, summary) != ("document", "summary"):
        dataset = dataset.rename_columns({document: "document", summary: "summary"})
    return dataset


def load_summarization_split(task: str | TaskSpec, split: str, data_root: str | Path | None, source: str = "auto"
                             ) -> Dataset:
    """Columns document, summary. source "auto" is local when the task folder (or, for XSum, the test sample
    folder) exists under the data root, else the hub (EdinburghNLP/xsum, abisee/cnn_dailymail 3.0.0)."""
    dataset_source = _source_of(task)
    _check_split(split)
    root = resolve_data_root(data_root)
    kind = resolve_source(source, root, _folders_present(dataset_source), "summarization", summarization_layout(task))
    return _read_split(task, split, root, kind)


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


class RougeEvaluator(Evaluator):
    """ROUGE-1/2/L/Lsum (0-100, mean per-example F-measure, stemmed) of generated summaries.

    update() calls model.generate (works for PEFT models too) on the batch's input_ids / attention_mask with the
    configured beam-search settings, decodes, and scores each prediction against batch["meta"]["references"].
    Per-example scores are averaged with torchmetrics MeanMetric; the decoded texts are kept in .predictions /
    .references for inspection. Under DDP the training module gathers every process's score_batch() outputs and
    adds them in single-process order (AdapterModule), so the means are summed in the same order as in one process.
    """

    def __init__(self, tokenizer, generation: GenerationSettings | Mapping[str, Any]):
        super().__init__()
        self.tokenizer = tokenizer
        self.generation = generation_settings(generation)
        self.scores = MetricCollection({key: MeanMetric() for key in ROUGE_KEYS}, compute_groups=False)
        self.predictions: list[str] = []
        self.references: list[str] = []

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


class Seq2SeqDataModule(ExampleDataModule):
    """XSum / CNN-DailyMail for an encoder-decoder model (BART). Batches: input_ids, attention_mask, labels
    (pad -> -100); eval batches also carry batch["meta"]["references"] (raw summaries).

    The eval set is the task's `eval_split` ("validation"; for XSum with only the local test sample, that sample).
    Without a local train file set train_from_eval=N: N random eval rows (split_seed) become the training set.
    Without train_from_eval a missing train file is an error, unless fallback_train_cap is set: then 10% of the
    eval file (at most fallback_train_cap rows) is carved and an unset eval_limit becomes fallback_eval_limit,
    with a warning and data_info()["fallback"] saying so (the CLI's smoke default; see data/factory.py).
    train_limit / eval_limit take seeded (split_seed) random subsets; `seed` shuffles the train loader.
    `task.generation` (conf/task/<name>.yaml: see GenerationSettings) is the beam search make_evaluator() uses.
    """

    what = "summarization"

    task_keys = FAMILY_TASK_KEYS["seq2seq"]

    def __init__(self, spec: TaskSpec, task: Any, data: Any, tokenizer: Any, seed: int, *, split_seed: int = 0,
                 eval_split: str = "validation", fallback_train_cap: int | None = None,
                 fallback_eval_limit: int | None = None):
        """``task`` / ``data``: the run's config_schema.TaskConfig / DataConfig; ``seed``: the run's."""
        if spec.family != "seq2seq" or spec.name not in SUMMARIZATION_DATASETS:
            raise ValueError(f"task '{spec.name}' is not a summarization task; expected one of "
                             f"{tuple(SUMMARIZATION_DATASETS)}")
        if tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs a tokenizer")
        if eval_split not in ("validation", "test"):
            raise ValueError(f"eval_split '{eval_split}' is not 'validation' or 'test'")
        super().__init__(spec, task, data, tokenizer, Seq2SeqCollator(tokenizer), seed, split_seed=split_seed,
                         fallback_train_cap=fallback_train_cap, fallback_eval_limit=fallback_eval_limit,
                         eval_split=eval_split)
        self.dataset_source = SUMMARIZATION_DATASETS[spec.name]
        self.layout = summarization_layout(spec)
        self.max_source_length, self.max_target_length = task.max_source_length, task.max_target_length
        self.generation = generation_settings(task.generation)

    def has_local_copy(self, root: Path) -> bool:
        return _folders_present(self.dataset_source)(root)

    def _local_path(self, split: str) -> Path:
        return summarization_local_path(self.spec, split, self.data_root)

    def _read_split(self, split: str, source: str) -> Dataset:
        return _read_split(self.spec, split, self.data_root, source)

    def _source_info(self, source: str) -> dict[str, Any]:
        info: dict[str, Any] = {"eval_split": self.eval_split}
        sample = self.dataset_source.sample
        if source == "local" and sample is not None and not (self.data_root / self.dataset_source.folder).is_dir():
            info["eval_file_is_test_sample"] = True  # e.g. XSum: the 1000-row test sample stands in for validation
        return info

    def _features(self, examples: Dataset, train: bool) -> Dataset:
        return tokenize_summaries(examples, self.tokenizer, self.max_source_length, self.max_target_length,
                                  keep_references=not train)

    def make_evaluator(self) -> RougeEvaluator:
        return RougeEvaluator(self.tokenizer, self.generation)

    # ---- what dcft_lab.evaluate scores (ROUGE with the run's generation settings) -------------
    file_expected = "JSON lines with 'document' (and 'summary', 'id')"

    @property
    def local_folder(self) -> str:
        return self.dataset_source.folder

    @property
    def local_layout(self) -> str:
        return f"<data_root>/{self.local_folder}/{{train,validation,test}}.jsonl (fields document, summary[, id])"

    def test_files(self, root: Path) -> list[Path]:
        return [summarization_local_path(self.spec, "test", root)]

    def test_layout(self) -> str:
        return self.local_layout

    def _read_file(self, path: Path) -> tuple[Dataset, list[str], bool]:
        return read_documents(path)

    def _settings_info(self) -> dict[str, Any]:
        return {"max_source_length": self.max_source_length, "max_target_length": self.max_target_length,
                "generation": asdict(self.generation), "sentence_splitter": sentence_splitter()}
