"""What the data modules of every task family share.

``TaskDataModule``: the task spec, the eval set names, and the train / eval DataLoaders (resumable and DDP-aware,
see data/resumable.py) over the datasets a subclass's setup() prepares (``train_features`` / ``eval_features``;
GLUE, prompt -> response, and the two below).
``ExampleDataModule``: QA and summarization -- raw examples read from the task's eval file and train file (or the
hub), with the training slice carved out of the eval file when asked (or as a smoke-run fallback) and seeded
subsets (data/splits.py: train_and_eval_examples), tokenized lazily into features by the subclass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from datasets import Dataset
from torch.utils.data import DataLoader

from .resumable import eval_loader, process_layout, train_loader
from .splits import check_source, resolve_source, train_and_eval_examples
from .tasks import TaskSpec, resolve_data_root


def check_task_keys(spec: TaskSpec, task: Any, keys: tuple[str, ...]) -> None:
    """The task settings a data module reads are set (conf/task/<name>.yaml sets each one its family reads; a
    None in the typed config means the task has no such setting)."""
    missing = [key for key in keys if getattr(task, key, None) is None]
    if missing:
        raise ValueError(f"task '{spec.name}' has no {', '.join(f'task.{k}' for k in missing)}; expected "
                         f"{'them' if len(missing) > 1 else 'it'} in conf/task/{spec.name}.yaml (or as an override)")


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
