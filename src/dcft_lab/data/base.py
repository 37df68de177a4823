"""What the data modules of every task family share.

``TaskDataModule``: the task spec, the eval set names, and the train / eval DataLoaders (resumable and DDP-aware,
see data/resumable.py) over the datasets a subclass's setup() prepares (``train_features`` / ``eval_features``;
GLUE, prompt -> response, and the two below).
``ExampleDataModule``: QA and summarization -- raw examples read from the task's eval file and train file (or the
hub), with the training slice carved out of the eval file when asked (or as a smoke-run fallback) and seeded
subsets (data/splits.py: train_and_eval_examples), tokenized lazily into features by the subclass.

Both also prepare what ``dcft_lab.evaluate`` scores a saved adapter on (an ``EvalSet``): the dev set as training
made it, the run's train split, or test / user-given files, which each data module reads itself (its test files
sit beside its train and dev files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from datasets import Dataset
from torch.utils.data import DataLoader

from .resumable import eval_loader, process_layout, train_loader
from .splits import check_source, eval_subset_rows, resolve_source, seeded_subset, train_and_eval_examples
from .tasks import TaskSpec, check_task_keys, resolve_data_root


class DataInputError(ValueError):
    """A one-line error about the data a command was pointed at (a data folder without the run's files, a split the
    task lacks, a file it cannot score), complete as it stands: callers show it unchanged."""


@dataclass
class EvalSet:
    """What one evaluation of a saved adapter runs on: loaders (one per eval set) and the evaluator that scores them."""

    loaders: list
    evaluator: Any
    names: tuple[str, ...]
    labeled: bool
    counts: dict
    files: list[str]
    ids: list[list] | None = None  # per loader, the example ids in loader order (for predictions)
    data: dict = field(default_factory=dict)  # the data module's own description (data_info), when built by it
    rename: dict = field(default_factory=dict)  # metric renames (e.g. MNLI train: accuracy_m -> accuracy)


class TaskDataModule(pl.LightningDataModule):
    """Train / eval DataLoaders over ``_train_set()`` and ``_eval_sets()`` (one per eval name, in order).

    The settings come from the run's typed config sections, never from defaults of their own (issue 33): ``task``
    (config_schema.TaskConfig; ``task_keys`` names the family's settings a subclass reads, checked to be set) and
    ``data`` (config_schema.DataConfig); ``seed`` is the run's.
    The train shuffle is a function of (seed, epoch) alone and ``resume_position`` (set by ``callbacks.ResumePosition``) skips the
    batches already trained; ``train_batch_size`` is per process. Eval batches use ``eval_collator`` when a
    subclass sets one (decoder generation: left padding), else ``collator``.
    """

    persistent_eval_workers = False  # keep eval DataLoader workers alive between evaluations (GLUE)
    eval_collator: Callable | None = None
    task_keys: tuple[str, ...] = ()  # the TaskConfig settings of the family this module reads (check_task_keys)

    def __init__(self, spec: TaskSpec, task: Any, data: Any, tokenizer: Any, collator: Callable, seed: int):
        super().__init__()
        check_task_keys(spec, task, self.task_keys)
        self.spec = spec
        self.tokenizer = tokenizer
        self.collator = collator
        self.train_batch_size, self.eval_batch_size = task.train_batch_size, task.eval_batch_size
        self.seed, self.num_workers = seed, data.num_workers

    @property
    def eval_names(self) -> tuple[str, ...]:
        return self.spec.eval_names

    # A subclass's setup() fills these (GLUE keeps its own sets and overrides the two methods below).
    train_features: Any = None
    eval_features: Any = None

    def _train_set(self) -> Any:
        self.setup("fit")
        return self.train_features

    def _eval_sets(self) -> list[Any]:
        self.setup("validate")
        return [self.eval_features]

    def train_dataloader(self) -> DataLoader:
        return train_loader(self._train_set(), self.train_batch_size, self.seed, self.collator, self.num_workers,
                            getattr(self, "resume_position", None), *process_layout(self))

    def val_dataloader(self) -> list[DataLoader]:
        # under DDP each process gets whole single-process batches, none twice (data/resumable.py: eval_loader)
        collator = self.eval_collator if self.eval_collator is not None else self.collator
        extra = {"persistent_workers": self.num_workers > 0} if self.persistent_eval_workers else {}
        return [eval_loader(dataset, self.eval_batch_size, collator, self.num_workers, *process_layout(self), **extra)
                for dataset in self._eval_sets()]

    def make_evaluator(self):
        raise NotImplementedError

    def data_info(self) -> dict[str, Any]:
        raise NotImplementedError

    # ---- what dcft_lab.evaluate scores (EvalSet) ----------------------------------------------
    file_expected = "a file in the task's format"  # what a user-given file (evaluate file=) must be, for errors
    test_hint = ""  # how to do without the test split, for errors

    def check_eval_input(self, split: str, file: str | None) -> None:
        """A DataInputError when ``split`` ("validation" / "train" / "test") or ``file`` cannot be evaluated (the run's
        local files gone from the data root, a split the task lacks), before anything is read."""

    def test_files(self, root: Path) -> list[Path]:
        """The task's test split under a data root, one file per eval set."""
        raise DataInputError(f"task '{self.spec.name}' has no test split")

    def test_layout(self) -> str:
        """Where test_files() looks, for errors."""
        return "<data_root>"

    def validation_eval_set(self) -> EvalSet:
        """The dev set exactly as training evaluated it."""
        raise NotImplementedError

    def train_eval_set(self, limit: int | None) -> EvalSet:
        """The run's train split (``limit`` rows of it, seeded), scored like the dev set."""
        raise NotImplementedError

    def file_eval_set(self, paths: list[Path], split: str, limit: int | None) -> EvalSet:
        """Test files or a user-given file (``limit`` rows of each, seeded): read, tokenized as the dev set; their ids
        kept for predictions."""
        raise NotImplementedError

    def _eval_loader(self, dataset: Any) -> DataLoader:
        """One plain in-order loader, batched and collated as the eval sets (no DDP: evaluate runs one process)."""
        collator = self.eval_collator if self.eval_collator is not None else self.collator
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collator)


class ExampleDataModule(TaskDataModule):
    """Examples -> features for QA / summarization; see the subclasses for the carving / fallback rules.

    A subclass says where its data lives (``has_local_copy``, ``_local_path``, ``_read_split``), how examples
    become features (``_features``), and what its record adds (``_source_info``, ``_settings_info``).
    """

    what = "local"  # names the data in errors ("SQuAD", "summarization")
    layout = "<data_root>"  # the expected local layout, for errors
    group_column: str | None = None  # carve whole groups of rows (SQuAD: articles, by title)
    carve_unit = "examples"  # what a missing train file's error says train_from_eval carves

    def __init__(self, spec: TaskSpec, task: Any, data: Any, tokenizer: Any, collator: Callable, seed: int, *,
                 split_seed: int, fallback_train_cap: int | None, fallback_eval_limit: int | None,
                 eval_split: str = "validation"):
        super().__init__(spec, task, data, tokenizer, collator, seed)
        check_source(data.source)
        self.data_root = resolve_data_root(data.root)  # once: every split is read from the same root
        self.source, self.eval_split = data.source, eval_split
        self.train_limit, self.eval_limit, self.train_from_eval = data.train_limit, data.eval_limit, data.train_from_eval
        self.split_seed = split_seed
        self.fallback_train_cap, self.fallback_eval_limit = fallback_train_cap, fallback_eval_limit
        self.train_examples: Dataset | None = None
        self.eval_examples: Dataset | None = None
        self.train_features: Dataset | None = None
        self.eval_features: Dataset | None = None
        self._info: dict[str, Any] = {}

    # ---- what a subclass provides ------------------------------------------------------------
    def has_local_copy(self, root: Path) -> bool:
        raise NotImplementedError

    def _local_path(self, split: str) -> Path:
        raise NotImplementedError

    def _read_split(self, split: str, source: str) -> Dataset:
        """The examples of one split; ``source`` is resolved ('local' or 'hub')."""
        raise NotImplementedError

    def _features(self, examples: Dataset, train: bool) -> Dataset:
        raise NotImplementedError

    def _source_info(self, source: str) -> dict[str, Any]:
        return {}

    def _settings_info(self) -> dict[str, Any]:
        return {}

    # ---- preparation -------------------------------------------------------------------------
    def resolved_source(self) -> str:
        return resolve_source(self.source, self.data_root, self.has_local_copy, self.what, self.layout)

    def _load_examples(self) -> None:
        source = self.resolved_source()
        eval_examples = self._read_split(self.eval_split, source)
        local = source == "local"
        self.train_examples, self.eval_examples, split_info = train_and_eval_examples(
            eval_examples, lambda: self._read_split("train", source), source=source,
            eval_file=self._local_path(self.eval_split) if local else None,
            train_file=self._local_path("train") if local else None,
            train_from_eval=self.train_from_eval, train_limit=self.train_limit, eval_limit=self.eval_limit,
            fallback_train_cap=self.fallback_train_cap, fallback_eval_limit=self.fallback_eval_limit,
            split_seed=self.split_seed, group_column=self.group_column, what=self.carve_unit)
        self._info = {"task": self.spec.name, "source": source, **self._source_info(source), **split_info}

    def setup(self, stage: str | None = None) -> None:
        if self.eval_examples is None:
            self._load_examples()
        if self.eval_features is None:
            self.eval_features = self._features(self.eval_examples, train=False)
        if stage in (None, "fit") and self.train_features is None:
            self.train_features = self._features(self.train_examples, train=True)

    def data_info(self) -> dict[str, Any]:
        if not self._info:
            self._load_examples()
        return dict(self._info, **self._settings_info())

    # ---- what dcft_lab.evaluate scores -------------------------------------------------------
    local_folder = ""  # the task's folder under the data root
    local_layout = "<data_root>"  # what that folder holds, for evaluate's errors

    def check_eval_input(self, split: str, file: str | None) -> None:
        if file is not None or split == "test" or self.source == "hub" or self.data_root is None:
            return
        if not self.has_local_copy(self.data_root):
            raise DataInputError(f"data folder {self.data_root} has no {self.local_folder}/ for task "
                                 f"'{self.spec.name}'; expected {self.local_layout}")

    def _read_file(self, path: Path) -> tuple[Dataset, list[str], bool]:
        """(examples, their ids, labeled) of a test / user-given file."""
        raise NotImplementedError

    def _example_ids(self, examples: Dataset) -> list[str]:
        return [str(i) for i in range(len(examples))]

    def _counts(self, examples: Dataset, features: Dataset) -> dict[str, int]:
        return {"examples": len(examples)}

    def _evaluator_for(self, examples: Dataset, features: Dataset):
        """The evaluator of an eval set other than the dev set (make_evaluator's, by default)."""
        return self.make_evaluator()

    def validation_eval_set(self) -> EvalSet:
        self.setup("validate")
        info = self.data_info()
        return EvalSet(self.val_dataloader(), self.make_evaluator(), tuple(self.eval_names), True,
                       self._counts(self.eval_examples, self.eval_features), list(info.get("files", [])), data=info)

    def train_eval_set(self, limit: int | None) -> EvalSet:
        self.setup("validate")  # the examples as training split them (carving, limits); no train features
        examples = seeded_subset(self.train_examples, limit, self.split_seed)
        info = self.data_info()
        return self._examples_eval_set(examples, self._example_ids(examples), "train", True,
                                       list(info.get("files", [])), info)

    def file_eval_set(self, paths: list[Path], split: str, limit: int | None) -> EvalSet:
        [path] = paths
        examples, ids, labeled = self._read_file(path)
        keep = eval_subset_rows(len(ids), limit)
        return self._examples_eval_set(examples.select(keep), [ids[i] for i in keep], split, labeled, [str(path)], {})

    def _examples_eval_set(self, examples: Dataset, ids: list[str], name: str, labeled: bool, files: list[str],
                           data: dict) -> EvalSet:
        features = self._features(examples, train=False)
        return EvalSet([self._eval_loader(features)], self._evaluator_for(examples, features), (name,), labeled,
                       self._counts(examples, features), files, ids=[ids], data=data)
