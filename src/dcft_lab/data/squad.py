"""SQuAD v1.1 / v2.0: loaders (official JSON or the hub) and the data module.

Features and post-processing live in squad_processing.py, the official EM/F1 and the evaluator in squad_metrics.py
(their public names are importable from here too).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value

from .base import ExampleDataModule
from .splits import resolve_source
from .squad_metrics import SquadEvaluator, exact_match_score, f1_score, normalize_answer, squad_em_f1
from .squad_processing import (
    META_KEYS,
    QACollator,
    _require_fast,
    build_features,
    postprocess_qa_predictions,
    prepare_eval_features,
    prepare_train_features,
)
from .tasks import TaskSpec, check_task_keys, resolve_data_root

__all__ = [
    "EXPECTED_JSON", "META_KEYS", "SPLITS", "SQUAD_FEATURES", "SQUAD_LAYOUT", "TASK_VERSION", "QACollator",
    "SquadDataModule", "SquadEvaluator", "build_features", "exact_match_score", "f1_score", "load_squad_examples",
    "normalize_answer", "postprocess_qa_predictions", "prepare_eval_features", "prepare_train_features",
    "read_squad_json", "read_squad_questions", "squad_em_f1", "squad_local_path",
]

# version -> (local folder, train file, dev file, hub dataset)
SQUAD_LAYOUT = {
    "v1": ("squad_v1.1", "train-v1.1.json", "dev-v1.1.json", "rajpurkar/squad"),
    "v2": ("squad_v2.0", "train-v2.0.json", "dev-v2.0.json", "rajpurkar/squad_v2"),
}
TASK_VERSION = {"squad_v1": "v1", "squad_v2": "v2"}
# SQuAD has no public test set (CodaLab runs the model on a hidden file in the dev format): where a local one is looked
# for (dcft_lab.evaluate split=test), in the version's folder; evaluate file=<path> takes any SQuAD-format JSON.
SQUAD_TEST_FILES = {"v1": "test-v1.1.json", "v2": "test-v2.0.json"}
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


# ----------------------------------------------------------------------------------------------------- loading
def _check_version(version: str) -> None:
    if version not in SQUAD_LAYOUT:
        raise ValueError(f"SQuAD version '{version}' is not one of {tuple(SQUAD_LAYOUT)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"SQuAD split '{split}' is not one of {SPLITS}")


def squad_local_path(version: str, split: str, data_root: str | Path) -> Path:
    """<root>/squad_v1.1/{train-v1.1.json,dev-v1.1.json} or <root>/squad_v2.0/{train-v2.0.json,dev-v2.0.json}."""
    _check_version(version)
    _check_split(split)
    folder, train_file, dev_file, _ = SQUAD_LAYOUT[version]
    return Path(data_root) / folder / (train_file if split == "train" else dev_file)


def squad_layout(version: str) -> str:
    """The expected local layout of a version, for errors: <data_root>/squad_v1.1/{train-v1.1.json,dev-v1.1.json}."""
    folder, train_file, dev_file, _ = SQUAD_LAYOUT[version]
    return f"<data_root>/{folder}/{{{train_file},{dev_file}}}"


def _folder_present(version: str) -> Callable[[Path], bool]:
    """data.source=auto reads the local files when the version's folder exists under the data root."""
    return lambda root: (root / SQUAD_LAYOUT[version][0]).is_dir()


def read_squad_json(path: str | Path) -> Dataset:
    """Flatten an official SQuAD JSON file (v1.1 or v2.0) into the HF `squad` schema, one row per question.

    Unanswerable v2.0 questions (is_impossible) get empty answer lists, as in the hub's squad_v2.
    """
    examples, labeled = _read_questions(path, answers_required=True)
    return examples


def read_squad_questions(path: str | Path) -> tuple[Dataset, bool]:
    """(examples, labeled) of a SQuAD-format JSON file that may lack answers (a test file, questions to answer): when
    any question has no ``answers`` (and is not is_impossible) the file is unlabeled and every answer list is empty."""
    return _read_questions(path, answers_required=False)


def _read_questions(path: str | Path, answers_required: bool) -> tuple[Dataset, bool]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file not found: {path}; expected {EXPECTED_JSON}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}); expected {EXPECTED_JSON}") from None
    rows: dict[str, list] = {name: [] for name in SQUAD_FEATURES}
    labeled = True
    try:
        for article in raw["data"]:
            title = article.get("title", "")
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    if qa.get("is_impossible", False):
                        answers = []
                    elif answers_required or "answers" in qa:
                        answers = qa["answers"]
                    else:
                        answers, labeled = [], False
                    rows["id"].append(qa["id"])
                    rows["title"].append(title)
                    rows["context"].append(context)
                    rows["question"].append(qa["question"])
                    rows["answers"].append(
                        {"text": [a["text"] for a in answers], "answer_start": [int(a["answer_start"]) for a in answers]}
                    )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: malformed SQuAD JSON ({type(error).__name__}: {error}); expected {EXPECTED_JSON}") from None
    if not labeled:  # questions to answer: no file-wide scores, so no answers at all
        rows["answers"] = [{"text": [], "answer_start": []} for _ in rows["id"]]
    return Dataset.from_dict(rows, features=SQUAD_FEATURES), labeled


def _read_split(version: str, split: str, root: Path | None, source: str) -> Dataset:
    """One split; ``source`` is already resolved ('local' or 'hub')."""
    if source == "local":
        return read_squad_json(squad_local_path(version, split, root))
    from datasets import load_dataset  # hub access only when asked for

    return load_dataset(SQUAD_LAYOUT[version][3], split=split).select_columns(list(SQUAD_FEATURES))


def load_squad_examples(version: str, split: str, data_root: str | Path | None, source: str = "auto") -> Dataset:
    """SQuAD questions with columns id, title, context, question, answers {text: [...], answer_start: [...]}.

    version: "v1" | "v2"; split: "train" | "validation"; source: "local" | "hub" | "auto" (local when the
    version's folder exists under the data root, else datasets.load_dataset of rajpurkar/squad[_v2]).
    """
    _check_version(version)
    _check_split(split)
    root = resolve_data_root(data_root)
    return _read_split(version, split, root,
                       resolve_source(source, root, _folder_present(version), "SQuAD", squad_layout(version)))


# ------------------------------------------------------------------------------------------------ data module
class SquadDataModule(ExampleDataModule):
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

    what = "SQuAD"
    group_column = "title"  # carve whole articles
    carve_unit = "questions (whole articles)"

    def __init__(self, spec: TaskSpec, task: Any, data: Any, tokenizer: Any, seed: int, *, split_seed: int = 0,
                 fallback_train_cap: int | None = None, fallback_eval_limit: int | None = None):
        """``task`` / ``data``: the run's config_schema.TaskConfig / DataConfig; ``seed``: the run's."""
        if spec.family != "qa" or spec.name not in TASK_VERSION:
            raise ValueError(f"task '{spec.name}' is not a SQuAD task; expected one of {tuple(TASK_VERSION)}")
        if tokenizer is None:
            raise ValueError("SquadDataModule needs a tokenizer")
        _require_fast(tokenizer)
        self.version = TASK_VERSION[spec.name]
        check_task_keys(spec, task, spec.task_keys)
        if not 0 < task.doc_stride < task.max_length:
            raise ValueError(f"doc_stride={task.doc_stride} must be positive and smaller than "
                             f"max_length={task.max_length}")
        super().__init__(spec, task, data, tokenizer, QACollator(tokenizer), seed, split_seed=split_seed,
                         fallback_train_cap=fallback_train_cap, fallback_eval_limit=fallback_eval_limit)
        self.layout = squad_layout(self.version)
        self.max_length, self.doc_stride = task.max_length, task.doc_stride
        self.n_best, self.max_answer_length = task.n_best, task.max_answer_length
        self.null_score_diff_threshold = task.null_score_diff_threshold  # SQuAD v2 only (None for v1)

    def has_local_copy(self, root: Path) -> bool:
        return _folder_present(self.version)(root)

    def _local_path(self, split: str) -> Path:
        return squad_local_path(self.version, split, self.data_root)

    def _read_split(self, split: str, source: str) -> Dataset:
        return _read_split(self.version, split, self.data_root, source)

    def _features(self, examples: Dataset, train: bool) -> Dataset:
        return build_features(examples, self.tokenizer, train, self.max_length, self.doc_stride)

    def make_evaluator(self) -> SquadEvaluator:
        self.setup("validate")
        return self._evaluator_for(self.eval_examples, self.eval_features)

    def _evaluator_for(self, examples: Dataset, features: Dataset) -> SquadEvaluator:
        return SquadEvaluator(examples, features, version_2=self.version == "v2", n_best=self.n_best,
                              max_answer_length=self.max_answer_length,
                              null_score_diff_threshold=self.null_score_diff_threshold)

    # ---- what dcft_lab.evaluate scores -------------------------------------------------------
    file_expected = "an official SQuAD JSON file"
    test_hint = " (SQuAD has no public test set; pass file=<questions.json>)"

    @property
    def local_folder(self) -> str:
        return SQUAD_LAYOUT[self.version][0]

    @property
    def local_layout(self) -> str:
        return self.layout

    def test_files(self, root: Path) -> list[Path]:
        return [root / self.local_folder / SQUAD_TEST_FILES[self.version]]

    def test_layout(self) -> str:
        return f"a SQuAD-format JSON file <data_root>/{self.local_folder}/{SQUAD_TEST_FILES[self.version]}"

    def _read_file(self, path: Path) -> tuple[Dataset, list[str], bool]:
        examples, labeled = read_squad_questions(path)
        return examples, list(examples["id"]), labeled

    def _example_ids(self, examples: Dataset) -> list[str]:
        return list(examples["id"])

    def _counts(self, examples: Dataset, features: Dataset) -> dict[str, int]:
        return {"examples": len(examples), "features": len(features)}

    def _settings_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"max_length": self.max_length, "doc_stride": self.doc_stride}
        if self.train_features is not None:
            info["n_train_features"] = len(self.train_features)
        if self.eval_features is not None:
            info["n_eval_features"] = len(self.eval_features)
        return info
