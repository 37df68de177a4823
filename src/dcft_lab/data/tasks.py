"""Task registry: what each task is (family, labels, metrics) and, for GLUE, where its data lives.

Pure standard library so any module (configs, reports) can look tasks up cheaply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAMILIES = ("classification", "regression", "qa", "seq2seq", "causal_lm")  # causal_lm: decoder-only backbones
# The task settings (TaskConfig keys) each family's data module reads: conf/task/<name>.yaml sets them, null means
# "not a setting of this task". config_schema.validate checks them before anything heavy runs; the data modules
# check them again when built on their own. TaskSpec.extra_task_keys adds a task's own (SQuAD v2's threshold).
FAMILY_TASK_KEYS = {"classification": ("max_length",), "regression": ("max_length",), "causal_lm": ("max_length",),
                    "qa": ("max_length", "doc_stride", "n_best", "max_answer_length"),
                    "seq2seq": ("max_source_length", "max_target_length", "generation")}
DATA_ROOT_ENV = "DCFT_LAB_DATA"
GLUE_HUB_PATH = "nyu-mll/glue"


@dataclass(frozen=True)
class TsvLayout:
    """Where text and label sit in an official GLUE TSV (as written by download_glue_data.py).

    With a header, columns are found by name and every row must be as wide as the header; without
    one (CoLA), columns are 0-based indices and rows must have ``num_columns`` fields.
    """

    has_header: bool
    text_columns: tuple[str | int, ...]
    label_column: str | int
    num_columns: int | None = None
    # Raw label strings in label-id order; None means the label is a float score (STS-B).
    label_values: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.has_header and self.num_columns is None:
            raise ValueError("TsvLayout without a header needs num_columns")


@dataclass(frozen=True)
class GlueSource:
    """GLUE-specific location info: local folder/files and the matching hub config."""

    folder: str  # e.g. "SST-2" under <data_root>/glue/
    hub: tuple[str, str]  # (path, name) for datasets.load_dataset
    hub_text_fields: tuple[str, ...]  # hub column names, in the order of TaskSpec.text_fields
    tsv: TsvLayout
    split_files: tuple[tuple[str, str], ...]  # (split, file name) pairs
    # the test split: one unlabeled file per eval set (its header names an index / id column), read by
    # dcft_lab.evaluate split=test to write leaderboard predictions
    test_files: tuple[str, ...] = ("test.tsv",)

    def file_for(self, split: str) -> str:
        files = dict(self.split_files)
        if split not in files:
            raise ValueError(f"unknown split '{split}' for GLUE folder {self.folder}; expected one of: {', '.join(files)}")
        return files[split]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str  # one of FAMILIES
    num_labels: int  # 1 for regression, 0 for qa / seq2seq
    main_metric: str
    metrics: tuple[str, ...]
    eval_names: tuple[str, ...] = ("validation",)  # one per validation dataloader
    label_names: tuple[str, ...] = ()  # label-id order, same as the HF hub dataset
    text_fields: tuple[str, ...] = ()  # text columns of the loaded dataset
    glue: GlueSource | None = None
    greater_is_better: bool = True  # of main_metric: False for losses / perplexity (the best evaluation is the lowest)
    # Chance level of main_metric on the dev set (what a constant prediction scores): the majority class's share
    # for accuracy, 0 for MCC and correlations; None where not known. Reports draw and print it; one home.
    chance_level: float | None = None
    # Per eval set (eval_names order), the metrics it reports as (reported name, metric kind) pairs; () for one eval
    # set that reports every metric under its own name. MNLI: accuracy_m on matched, accuracy_mm on mismatched.
    eval_metrics: tuple[tuple[tuple[str, str], ...], ...] = ()
    # GLUE leaderboard names, one per eval set: predictions-<split>/<name>.tsv of dcft_lab.evaluate (MNLI-m, MNLI-mm)
    board_names: tuple[str, ...] = ()
    extra_task_keys: tuple[str, ...] = ()  # task settings beyond its family's FAMILY_TASK_KEYS

    @property
    def task_keys(self) -> tuple[str, ...]:
        """The TaskConfig settings this task's data module reads (each must be set)."""
        return FAMILY_TASK_KEYS[self.family] + self.extra_task_keys

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"task '{self.name}': family '{self.family}' is not one of {FAMILIES}")
        if self.main_metric not in self.metrics:
            raise ValueError(f"task '{self.name}': main_metric '{self.main_metric}' is not in metrics {self.metrics}")
        if self.family == "classification" and len(self.label_names) != self.num_labels:
            raise ValueError(f"task '{self.name}': {len(self.label_names)} label names for num_labels={self.num_labels}")
        if len(self.eval_names) > 1 and len(self.eval_metrics) != len(self.eval_names):
            raise ValueError(f"task '{self.name}' has eval sets {self.eval_names} but {len(self.eval_metrics)} "
                             "per-set metric assignments (eval_metrics); expected one per eval set")
        reported = [name for pairs in self.eval_metrics for name, _ in pairs]
        if self.eval_metrics and sorted(reported) != sorted(self.metrics):
            raise ValueError(f"task '{self.name}': eval_metrics report {reported}; expected each of {self.metrics} once")
        if self.board_names and len(self.board_names) != len(self.eval_names):
            raise ValueError(f"task '{self.name}': board_names {self.board_names}; expected one per eval set "
                             f"{self.eval_names}")

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.eval_names)

    @property
    def head_size(self) -> int:
        """The size of the model's task head: num_labels, and 1 where that is 0 ("no label head": QA, summarization
        and sft models ignore it)."""
        return max(self.num_labels, 1)

    def metric_kinds(self) -> tuple[dict[str, str], ...]:
        """For each eval set, the metrics it reports: reported name -> metric kind."""
        if self.eval_metrics:
            return tuple(dict(pairs) for pairs in self.eval_metrics)
        return ({name: name for name in self.metrics},)

    @property
    def headline_metrics(self) -> tuple[str, ...]:
        """The main metric on each eval set, as reported (MNLI: accuracy_m, accuracy_mm): what a table shows."""
        kinds = self.metric_kinds()
        main_kind = next(per_set[self.main_metric] for per_set in kinds if self.main_metric in per_set)
        return tuple(name for per_set in kinds for name, kind in per_set.items() if kind == main_kind)


_SINGLE = ("sentence1",)
_PAIR = ("sentence1", "sentence2")
_BINARY_DIGITS = ("0", "1")
_NLI_BINARY = ("entailment", "not_entailment")
_DEFAULT_FILES = (("train", "train.tsv"), ("validation", "dev.tsv"))


def _glue(name, folder, hub_fields, tsv, files=_DEFAULT_FILES, test_files=("test.tsv",)) -> GlueSource:
    return GlueSource(folder=folder, hub=(GLUE_HUB_PATH, name), hub_text_fields=hub_fields, tsv=tsv, split_files=files,
                      test_files=test_files)


def _glue_task(name, metrics, main, label_names, text_fields, glue, eval_names=("validation",),
               chance_level=None, eval_metrics=(), board_names=None) -> TaskSpec:
    family = "regression" if not label_names else "classification"
    return TaskSpec(
        name=name,
        family=family,
        num_labels=len(label_names) or 1,
        main_metric=main,
        metrics=metrics,
        eval_names=eval_names,
        label_names=label_names,
        text_fields=text_fields,
        glue=glue,
        chance_level=chance_level,
        eval_metrics=eval_metrics,
        board_names=board_names or (glue.folder,),  # the leaderboard names a task by its GLUE folder
    )


_GLUE_TASKS = (
    # CoLA has no header: source, label, original annotation, sentence.
    _glue_task(
        "cola", ("matthews",), "matthews", ("unacceptable", "acceptable"), _SINGLE,
        _glue("cola", "CoLA", ("sentence",),
              TsvLayout(False, (3,), 1, num_columns=4, label_values=_BINARY_DIGITS)),
        chance_level=0.0,  # MCC of any constant prediction
    ),
    _glue_task(
        "sst2", ("accuracy",), "accuracy", ("negative", "positive"), _SINGLE,
        _glue("sst2", "SST-2", ("sentence",),
              TsvLayout(True, ("sentence",), "label", label_values=_BINARY_DIGITS)),
        chance_level=50.92,  # 444 of 872 dev sentences positive
    ),
    _glue_task(
        "mrpc", ("accuracy", "f1"), "accuracy", ("not_equivalent", "equivalent"), _PAIR,
        _glue("mrpc", "MRPC", ("sentence1", "sentence2"),
              TsvLayout(True, ("#1 String", "#2 String"), "Quality", label_values=_BINARY_DIGITS)),
        chance_level=68.38,  # 279 of 408 dev pairs equivalent
    ),
    _glue_task(
        "qqp", ("accuracy", "f1"), "accuracy", ("not_duplicate", "duplicate"), _PAIR,
        _glue("qqp", "QQP", ("question1", "question2"),
              TsvLayout(True, ("question1", "question2"), "is_duplicate", label_values=_BINARY_DIGITS)),
    ),
    _glue_task(
        "stsb", ("pearson", "spearman"), "pearson", (), _PAIR,
        _glue("stsb", "STS-B", ("sentence1", "sentence2"),
              TsvLayout(True, ("sentence1", "sentence2"), "score", label_values=None)),
        chance_level=0.0,  # correlation of a constant prediction (undefined; 0 by convention)
    ),
    _glue_task(
        "mnli", ("accuracy_m", "accuracy_mm"), "accuracy_m", ("entailment", "neutral", "contradiction"), _PAIR,
        _glue("mnli", "MNLI", ("premise", "hypothesis"),
              TsvLayout(True, ("sentence1", "sentence2"), "gold_label",
                        label_values=("entailment", "neutral", "contradiction")),
              files=(("train", "train.tsv"), ("validation_matched", "dev_matched.tsv"),
                     ("validation_mismatched", "dev_mismatched.tsv")),
              test_files=("test_matched.tsv", "test_mismatched.tsv")),
        eval_names=("validation_matched", "validation_mismatched"),
        eval_metrics=((("accuracy_m", "accuracy"),), (("accuracy_mm", "accuracy"),)),
        board_names=("MNLI-m", "MNLI-mm"),
    ),
    _glue_task(
        "qnli", ("accuracy",), "accuracy", _NLI_BINARY, _PAIR,
        _glue("qnli", "QNLI", ("question", "sentence"),
              TsvLayout(True, ("question", "sentence"), "label", label_values=_NLI_BINARY)),
    ),
    _glue_task(
        "rte", ("accuracy",), "accuracy", _NLI_BINARY, _PAIR,
        _glue("rte", "RTE", ("sentence1", "sentence2"),
              TsvLayout(True, ("sentence1", "sentence2"), "label", label_values=_NLI_BINARY)),
        chance_level=52.71,  # 146 of 277 dev pairs entailment
    ),
)

_ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_OTHER_TASKS = (
    TaskSpec("squad_v1", "qa", 0, "f1", ("exact_match", "f1")),
    TaskSpec("squad_v2", "qa", 0, "f1", ("exact_match", "f1"), extra_task_keys=("null_score_diff_threshold",)),
    TaskSpec("xsum", "seq2seq", 0, "rouge1", _ROUGE),
    TaskSpec("cnn_dailymail", "seq2seq", 0, "rouge1", _ROUGE),
    # generative fine-tuning of a decoder-only LM on {"prompt", "response"} JSON lines (task.train_file /
    # task.eval_file): causal-LM loss on the response tokens only; dev loss (mean NLL per response token, nats) and
    # perplexity = exp(loss)
    TaskSpec("sft", "causal_lm", 0, "perplexity", ("loss", "perplexity"), greater_is_better=False),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _GLUE_TASKS + _OTHER_TASKS}
GLUE_TASKS: tuple[str, ...] = tuple(spec.name for spec in _GLUE_TASKS)


def check_task_keys(spec: TaskSpec, task: Any, keys: tuple[str, ...]) -> None:
    """The task settings a data module reads are set (conf/task/<name>.yaml sets each one its family reads; a
    None in the typed config means the task has no such setting)."""
    missing = [key for key in keys if getattr(task, key, None) is None]
    if missing:
        raise ValueError(f"task '{spec.name}' has no {', '.join(f'task.{k}' for k in missing)}; expected "
                         f"{'them' if len(missing) > 1 else 'it'} in conf/task/{spec.name}.yaml (or as an override)")


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Look a task up by name (a TaskSpec is passed through)."""
    if isinstance(task, TaskSpec):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; expected one of: {', '.join(TASKS)}")
    return TASKS[task]


def task_name(task: str | TaskSpec) -> str:
    """The task's name (a TaskSpec or a name; not looked up)."""
    return task.name if isinstance(task, TaskSpec) else task


def resolve_data_root(data_root: str | os.PathLike | None) -> Path | None:
    """The data root to use: the explicit value, else $DCFT_LAB_DATA, else None (no local data)."""
    value = data_root if data_root not in (None, "") else os.environ.get(DATA_ROOT_ENV) or None
    return Path(value).expanduser() if value is not None else None
