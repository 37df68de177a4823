"""Shared data helpers: the local-vs-hub choice (``data.source``) of every loader, seeded subsets, and, for the QA /
summarization / prompt-response loaders, carving a training slice out of an evaluation file (used when only the
dev/test file of a dataset is available locally)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

SOURCES = ("auto", "local", "hub")  # data.source
CARVED = "carved_from_validation"
# Eval subsets use a fixed seed so that every run (any seed, any method) is scored on the same examples.
EVAL_SUBSET_SEED = 0
log = logging.getLogger(__name__)


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source '{source}'; expected one of: {', '.join(SOURCES)}")


def resolve_source(source: str, root: Path | None, has_local_copy: Callable[[Path], bool], what: str = "local",
                   expected: str = "<data_root>") -> str:
    """'local' or 'hub' for ``data.source``. 'auto' is local when there is a data root and ``has_local_copy(root)``
    (the dataset's folder or file exists under it), else hub. 'local' without a data root is a FileNotFoundError
    naming ``what`` data and the ``expected`` layout."""
    check_source(source)
    if source == "auto":
        return "local" if root is not None and has_local_copy(root) else "hub"
    if source == "local" and root is None:
        raise FileNotFoundError(f"no {what} data root given (data_root unset and $DCFT_LAB_DATA unset); "
                                f"expected {expected}")
    return source


def subset_indices(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Row indices of a seeded random subset of ``limit`` of ``n`` rows, in file order (sorted); None when the limit
    keeps everything. Every subsample (GLUE train/eval limits, QA / summarization limits, dcft_lab.evaluate) uses it."""
    if limit is None or limit >= n:
        return None
    if limit <= 0:
        raise ValueError(f"limit must be a positive number of examples or None, got {limit}")
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def eval_subset_rows(n: int, limit: int | None) -> list[int]:
    """Row indices of an eval file kept by ``limit`` (data.eval_limit): the seeded subset every eval set uses
    (EVAL_SUBSET_SEED), in file order; all rows when limit is None."""
    chosen = subset_indices(n, limit, EVAL_SUBSET_SEED)
    return list(range(n)) if chosen is None else chosen.tolist()


def seeded_subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most `limit` rows chosen at random (seeded) and kept in file order; the whole set if limit is None."""
    indices = subset_indices(len(dataset), limit, seed)
    return dataset if indices is None else dataset.select(indices.tolist())


def carve_train_from_eval(
    dataset: Dataset, n_train: int, seed: int, group_column: str | None = None
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """Split an eval set into a training slice of `n_train` rows and the remaining eval rows, disjointly.

    With `group_column` (e.g. SQuAD's article "title"), whole groups go to one side so no text is shared between
    training and evaluation: groups are drawn in seeded random order until they hold n_train rows; the drawn groups'
    rows beyond the first n_train (file order) are dropped from both sides. Returns (train, eval, info), file order.
    """
    total = len(dataset)
    if not 0 < n_train < total:
        raise ValueError(f"train_from_eval={n_train} must be between 1 and {total - 1} (the eval file has {total} rows)")
    rng = np.random.default_rng(seed)
    if group_column is None:
        order = rng.permutation(total)
        train_rows, eval_rows, n_groups = sorted(order[:n_train].tolist()), sorted(order[n_train:].tolist()), None
    else:
        rows_of: dict[Any, list[int]] = {}
        for row, group in enumerate(dataset[group_column]):
            rows_of.setdefault(group, []).append(row)
        groups = list(rows_of)
        taken: list[int] = []
        train_rows = []
        for group_index in rng.permutation(len(groups)).tolist():
            if len(train_rows) >= n_train:
                break
            taken.append(group_index)
            train_rows.extend(rows_of[groups[group_index]])
        taken_set = set(taken)
        eval_rows = sorted(row for index, group in enumerate(groups) if index not in taken_set for row in rows_of[group])
        if not eval_rows:
            raise ValueError(
                f"train_from_eval={n_train} uses every '{group_column}' group of the eval file; nothing left to evaluate"
            )
        train_rows = sorted(train_rows)[:n_train]
        n_groups = (len(taken), len(groups) - len(taken))
    info: dict[str, Any] = {
        "train_source": CARVED,
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
        "carve_seed": seed,
        "carve_group": group_column,
        "n_dropped": total - len(train_rows) - len(eval_rows),
    }
    if n_groups is not None:
        info["n_train_groups"], info["n_eval_groups"] = n_groups
    return dataset.select(train_rows), dataset.select(eval_rows), info


def fallback_carve(n_rows: int, missing_train: Path, train_cap: int, eval_cap: int | None,
                   eval_limit: int | None) -> tuple[int, int | None, dict[str, Any]]:
    """(train_from_eval, eval_limit, record) for a run whose train file is missing and that set no train_from_eval.

    Such a run can only check the pipeline, so it stays small: 10% of the eval file (at least 1, at most
    `train_cap`) becomes the training slice, and an unset eval_limit becomes `eval_cap`. Logs a warning.
    """
    if n_rows < 2:
        raise ValueError(f"the eval file has {n_rows} row(s); at least 2 are needed to carve a training slice")
    train_from_eval = min(train_cap, max(1, n_rows // 10))
    eval_limit = eval_limit if eval_limit is not None else eval_cap
    reason = f"train file {missing_train} not found and train_from_eval not set"
    log.warning("%s: smoke run, training on %d examples carved from the eval file and evaluating on %s of the rest; "
                "set data.train_from_eval=N (and data.eval_limit) to choose", reason, train_from_eval,
                eval_limit if eval_limit is not None else "all")
    return train_from_eval, eval_limit, {"reason": reason, "train_from_eval": train_from_eval, "eval_limit": eval_limit}


def train_and_eval_examples(
    eval_examples: Dataset, load_train: Callable[[], Dataset], *, source: str, eval_file: Path | None,
    train_file: Path | None, train_from_eval: int | None, train_limit: int | None, eval_limit: int | None,
    fallback_train_cap: int | None, fallback_eval_limit: int | None, split_seed: int,
    group_column: str | None = None, what: str = "examples",
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """The training and evaluation sets of a QA / summarization run, and the record of how they were made.

    Training comes from the train split (`load_train`) unless `train_from_eval` carves it out of the eval set. A
    local run whose train file is missing either fails with a one-line error (fallback_train_cap=None) or becomes
    a small recorded smoke run (`fallback_carve`). `what` names the carved unit in that error ("questions").
    """
    info: dict[str, Any] = {}
    files = [str(eval_file)] if eval_file is not None else []
    if train_from_eval is None and train_file is not None and not train_file.is_file():
        if fallback_train_cap is None:
            raise FileNotFoundError(f"train file not found: {train_file}; set train_from_eval=N to carve N training "
                                    f"{what} out of {eval_file}")
        train_from_eval, eval_limit, info["fallback"] = fallback_carve(
            len(eval_examples), train_file, fallback_train_cap, fallback_eval_limit, eval_limit)
    if train_from_eval is not None:
        train_examples, eval_examples, carve_info = carve_train_from_eval(eval_examples, train_from_eval, split_seed,
                                                                          group_column=group_column)
        info.update(carve_info)
    else:
        train_examples = load_train()
        if train_file is not None:
            files.insert(0, str(train_file))
        info["train_source"] = "train_file" if source == "local" else "hub_train"
    train_examples = seeded_subset(train_examples, train_limit, split_seed)
    eval_examples = seeded_subset(eval_examples, eval_limit, split_seed)
    info.update(files=files, train_limit=train_limit, eval_limit=eval_limit, split_seed=split_seed,
                n_train=len(train_examples), n_eval=len(eval_examples))
    return train_examples, eval_examples, info
