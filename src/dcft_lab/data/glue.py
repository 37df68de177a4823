"""GLUE loaders (official TSV files or the HF hub) and the GLUE LightningDataModule."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import DataCollatorWithPadding

from .base import DataInputError, EvalSet, TaskDataModule
from .splits import EVAL_SUBSET_SEED, check_source, eval_subset_rows, resolve_source, subset_indices
from .tasks import FAMILY_TASK_KEYS, TASKS, TaskSpec, get_task, resolve_data_root

CACHE_ENV = "DCFT_LAB_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/dcft_lab"
_CACHE_FORMAT = 1  # bump when the cached dataset layout changes
_CACHE_META = "dcft_lab_meta.json"
# data.train_holdout: the held-out slice of the train split is drawn with this fixed seed, so every pilot run (any
# method, lr or seed) selects on the same examples.
HOLDOUT_SEED = 1234
GLUE_ID_COLUMNS = ("index", "id")  # a test file's row ids ("id" in QQP)


def glue_spec(task: str | TaskSpec) -> TaskSpec:
    spec = get_task(task)
    if spec.glue is None:
        glue_names = ", ".join(name for name, s in TASKS.items() if s.glue is not None)
        raise ValueError(f"task '{spec.name}' is not a GLUE task; expected one of: {glue_names}")
    return spec


def _check_split(spec: TaskSpec, split: str) -> None:
    if split not in spec.splits:
        raise ValueError(f"unknown split '{split}' for task '{spec.name}'; expected one of: {', '.join(spec.splits)}")


def _expected_layout(spec: TaskSpec) -> str:
    files = ",".join(file for _, file in spec.glue.split_files)
    return f"<data_root>/glue/{spec.glue.folder}/{{{files}}}"


def local_split_path(spec: TaskSpec, split: str, data_root: Path) -> Path:
    return data_root / "glue" / spec.glue.folder / spec.glue.file_for(split)


def _require_local_file(spec: TaskSpec, split: str, data_root: Path | None) -> Path:
    """The TSV path, or a FileNotFoundError saying which level of the layout is missing."""
    layout = _expected_layout(spec)
    if data_root is None:
        raise FileNotFoundError(f"no GLUE data root given (data_root unset and $DCFT_LAB_DATA unset); expected {layout}")
    path = local_split_path(spec, split, data_root)
    for level, what in ((data_root, "data root"), (path.parent, "GLUE folder"), (path, "GLUE file")):
        if not level.exists():
            raise FileNotFoundError(f"{what} {level} not found; expected layout {layout}")
    return path


def _features(spec: TaskSpec) -> datasets.Features:
    label = datasets.ClassLabel(names=list(spec.label_names)) if spec.family == "classification" else datasets.Value("float32")
    return datasets.Features({**{field: datasets.Value("string") for field in spec.text_fields}, "label": label})


def read_glue_tsv(path: str | Path, task: str | TaskSpec) -> dict[str, list]:
    """Read an official GLUE train / dev TSV into columns {text fields..., "label"} (label ids, or float scores for
    STS-B)."""
    texts, labels, _ = read_glue_file(path, task, labels_required=True)
    return {**texts, "label": labels}


def read_glue_file(path: str | Path, task: str | TaskSpec, labels_required: bool = False
                   ) -> tuple[dict[str, list[str]], list | None, list[str]]:
    """(texts per text field, labels or None, row ids) of any GLUE-layout TSV of the task: a train / dev file (CoLA's
    have no header), or a test file, whose header names the text columns and an ``index`` / ``id`` column and has no
    label column (unlabeled: labels None). Ids are that column's values, else 0-based row numbers."""
    spec, path = glue_spec(task), Path(path)
    layout = spec.glue.tsv
    label_ids = {value: i for i, value in enumerate(layout.label_values)} if layout.label_values is not None else None
    # utf-8-sig drops the BOM that starts some GLUE headers (MRPC); QUOTE_NONE because sentences hold bare quotes.
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = ((reader.line_num, row) for row in reader if row)  # (line, fields), blank lines (a trailing one) skipped
        first = next(rows, None)
        if first is None:  # not a line
            what = "is empty" if layout.has_header else "has no data rows"
            raise ValueError(f"{path} {what}; expected {spec.name} rows in the GLUE layout")
        if not layout.has_header and "sentence" not in first[1]:  # CoLA train / dev: no header, labeled
            text_idx, label_idx, id_idx = list(layout.text_columns), layout.label_column, None
            width, what, data = layout.num_columns, "", itertools.chain([first], rows)
        else:
            header = first[1]
            text_idx, label_idx, id_idx = _header_columns(path, spec, header, labels_required)
            width, what, data = len(header), " (as the header)", rows
        texts: dict[str, list[str]] = {field: [] for field in spec.text_fields}
        labels: list = []
        ids: list[str] = []
        for line, row in data:
            if len(row) != width:
                raise ValueError(f"{path}:{line}: got {len(row)} columns, expected {width}{what}")
            for field, i in zip(spec.text_fields, text_idx):
                texts[field].append(row[i])
            ids.append(row[id_idx] if id_idx is not None else str(len(ids)))
            if label_idx is not None:
                labels.append(_label(row[label_idx].strip(), label_ids, layout, spec, f"{path}:{line}"))
    if not ids:
        raise ValueError(f"{path} has no data rows; expected {spec.name} rows in the GLUE layout")
    return texts, (labels if label_idx is not None else None), ids


def _header_columns(path: Path, spec: TaskSpec, header: list[str], labels_required: bool
                    ) -> tuple[list[int], int | None, int | None]:
    """(text column indices, label column index or None, id column index or None) from a GLUE file's header."""
    layout = spec.glue.tsv
    text_columns = layout.text_columns if layout.has_header else ("sentence",)  # CoLA's test file has a header
    label_column = layout.label_column if layout.has_header else "label"
    position = {name: i for i, name in enumerate(header)}
    wanted = (*text_columns, label_column) if labels_required else text_columns
    missing = [name for name in wanted if name not in position]
    if missing:
        labeled = "" if labels_required else f" (and {label_column} when labeled)"
        raise ValueError(f"{path}: header lacks column(s) {missing} of task '{spec.name}'; got header {header}; "
                         f"expected {', '.join(map(str, wanted))}{labeled}")
    id_column = next((c for c in GLUE_ID_COLUMNS if c in position), None)
    return ([position[name] for name in text_columns], position.get(label_column),
            position[id_column] if id_column else None)


def _label(raw: str, label_ids: dict[str, int] | None, layout, spec: TaskSpec, where: str) -> int | float:
    if label_ids is None:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{where}: score '{raw}' is not a number") from None
    if raw not in label_ids:
        raise ValueError(f"{where}: label '{raw}' is not one of the expected labels {list(layout.label_values)} of "
                         f"task '{spec.name}'")
    return label_ids[raw]


def split_source(spec: TaskSpec, split: str, data_root: Path | None, source: str) -> tuple[str, Path | None]:
    """("local", path) or ("hub", None). "auto" prefers the local file when it exists; "local" requires it."""
    kind = resolve_source(source, data_root, lambda root: local_split_path(spec, split, root).is_file(), "GLUE",
                          _expected_layout(spec))
    if kind == "hub":
        return "hub", None
    if source == "auto":
        return "local", local_split_path(spec, split, data_root)
    return "local", _require_local_file(spec, split, data_root)


def _load_hub_split(spec: TaskSpec, split: str) -> datasets.Dataset:
    path, name = spec.glue.hub
    ds = datasets.load_dataset(path, name, split=split)
    renames = {hub: ours for hub, ours in zip(spec.glue.hub_text_fields, spec.text_fields) if hub != ours}
    ds = ds.rename_columns(renames).select_columns([*spec.text_fields, "label"])
    return ds.cast(_features(spec))


def load_glue_split(
    task: str | TaskSpec, split: str, data_root: str | os.PathLike | None = None, source: str = "auto"
) -> datasets.Dataset:
    """One GLUE split as a Dataset with columns sentence1, [sentence2], label.

    data_root defaults to $DCFT_LAB_DATA; source: "local" (TSV under <root>/glue/<Folder>/), "hub"
    (datasets.load_dataset("nyu-mll/glue", name)) or "auto" (local file if present, else hub).
    """
    spec = glue_spec(task)
    _check_split(spec, split)
    root = resolve_data_root(data_root)
    return _read_split(spec, split, root, source, *split_source(spec, split, root, source))


def _read_split(spec: TaskSpec, split: str, root: Path | None, source: str, kind: str, path: Path | None
                ) -> datasets.Dataset:
    """One split, its source already resolved by split_source: (kind, path)."""
    if kind == "local":
        return datasets.Dataset.from_dict(read_glue_tsv(path, spec), features=_features(spec))
    try:
        return _load_hub_split(spec, split)
    except Exception as error:
        if source == "hub":
            raise
        # auto: say both where we looked locally and why the hub failed.
        local = local_split_path(spec, split, root) if root is not None else "(no data root)"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        offline = next((f"; {k}={os.environ[k]} is set" for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                        if os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")), "")
        raise FileNotFoundError(
            f"{local} not found and hub load {'/'.join(spec.glue.hub)} failed ({reason}{offline}); expected "
            f"{_expected_layout(spec)}"
        ) from error


def _tokenize_batch(batch: dict[str, list], tokenizer: Any, text_fields: tuple[str, ...], max_length: int) -> dict:
    return tokenizer(*(batch[field] for field in text_fields), truncation=True, max_length=max_length)


def test_paths(spec: TaskSpec, data_root: Path) -> list[Path]:
    """The task's test split under a data root: one unlabeled TSV per eval set (GlueSource.test_files)."""
    return [data_root / "glue" / spec.glue.folder / name for name in spec.glue.test_files]


def _all_files_layout(spec: TaskSpec) -> str:
    """Every file of the task's GLUE folder, train / dev / test, for errors."""
    files = [file for _, file in spec.glue.split_files] + list(spec.glue.test_files)
    return f"<data_root>/glue/{spec.glue.folder}/{{{','.join(files)}}}"


def _tokenizer_id(tokenizer: Any) -> str:
    """name_or_path, made absolute when it is a local folder (a relative path depends on the cwd)."""
    name = str(getattr(tokenizer, "name_or_path", "") or "")
    return str(Path(name).resolve()) if name and Path(name).is_dir() else name


def _fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class GlueDataModule(TaskDataModule):
    """Tokenized GLUE train / eval sets with on-disk caching and seeded subsampling.

    Batches: input_ids, attention_mask, [token_type_ids], labels (long; float for STS-B), padded per batch.
    """

    persistent_eval_workers = True

    task_keys = FAMILY_TASK_KEYS["classification"]  # = regression's

    def __init__(self, spec: TaskSpec, task: Any, data: Any, tokenizer: Any, seed: int):
        """``spec``: a GLUE task; ``task`` / ``data``: the run's config_schema.TaskConfig / DataConfig (range-checked
        there); ``seed``: the run's (train shuffle, and the train_limit subsample unless data.train_subset_seed)."""
        spec = glue_spec(spec)
        check_source(data.source)
        # pads to the longest in the batch
        super().__init__(spec, task, data, tokenizer, DataCollatorWithPadding(tokenizer, return_tensors="pt"), seed)
        self.data_root = resolve_data_root(data.root)
        self.source = data.source
        self.max_length = task.max_length
        self.train_limit = data.train_limit
        self.eval_limit = data.eval_limit
        self.train_holdout = data.train_holdout
        self.train_subset_seed = seed if data.train_subset_seed is None else data.train_subset_seed
        self._holdout_info: dict | None = None
        self.cache_dir = Path(data.cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()
        self._datasets: dict[str, datasets.Dataset] = {}
        self._split_info: dict[str, dict] = {}

    # ---- preparation -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        if self.train_holdout is None:
            for split in self.spec.splits:
                self._datasets[split], self._split_info[split] = self._prepare_split(split)
        else:
            self._hold_out_from_train()
        self._check_eval_labels_in_train()

    def setup_eval(self) -> None:
        """Prepare the eval sets only, exactly as setup() does, without reading the train split (re-evaluating a
        saved adapter: dcft_lab.evaluate). A train_holdout eval set comes out of the train split: full setup()."""
        if self.train_holdout is not None:
            return self.setup()
        for split in self.eval_names:
            if split not in self._datasets:
                self._datasets[split], self._split_info[split] = self._prepare_split(split)

    def _hold_out_from_train(self) -> None:
        """Evaluate on a fixed held-out slice of the train split instead of the dev set (hyper-parameter pilots):
        the dev set is never read, so numbers reported on it stay untouched by the selection."""
        train, info = self._prepare_split("train")
        n = len(train)
        if self.train_holdout >= n:
            raise ValueError(f"data.train_holdout={self.train_holdout} leaves no training data: the train split has "
                             f"{n} examples; expected fewer than {n}")
        order = np.random.default_rng(HOLDOUT_SEED).permutation(n)
        held, kept = np.sort(order[: self.train_holdout]), np.sort(order[self.train_holdout:])
        self._datasets["train"] = train.select(kept)
        self._split_info["train"] = {**info, "count": len(kept)}
        for split in self.eval_names:  # every eval set of the task is the same held-out slice
            self._datasets[split] = train.select(held)
            self._split_info[split] = {**info, "count": len(held), "source": "train_holdout"}
        self._holdout_info = {"count": len(held), "seed": HOLDOUT_SEED,
                              "sha1": hashlib.sha1(held.tobytes()).hexdigest(), "of_train_count": n}

    def _prepare_split(self, split: str) -> tuple[datasets.Dataset, dict]:
        kind, path = split_source(self.spec, split, self.data_root, self.source)
        is_train = split == "train"
        limit = self.train_limit if is_train else self.eval_limit
        subset_seed = self.train_subset_seed if is_train else EVAL_SUBSET_SEED
        origin = str(path.resolve()) if path is not None else f"hub:{'/'.join(self.spec.glue.hub)}:{split}"
        key_parts = {
            "format": _CACHE_FORMAT, "task": self.spec.name, "split": split, "origin": origin,
            "tokenizer": _tokenizer_id(self.tokenizer), "tokenizer_class": type(self.tokenizer).__name__,
            "vocab_size": len(self.tokenizer), "max_length": self.max_length,
            # the seed only matters when a subset is drawn; a full split is shared across seeds
            "limit": limit, "subset_seed": subset_seed if limit is not None else None,
        }
        if path is not None:
            stat = path.stat()
            key_parts.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        key = _fingerprint(key_parts)
        folder = self.cache_dir / "glue" / self.spec.name / f"{split}-{key[:20]}"
        meta_path = folder / _CACHE_META
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            return datasets.load_from_disk(str(folder)), {**meta, "cache": "hit", "cache_path": str(folder)}

        raw = _read_split(self.spec, split, self.data_root, self.source, kind, path)  # auto: errors name both
        full_count = len(raw)
        indices = subset_indices(full_count, limit, subset_seed)
        if indices is not None:
            raw = raw.select(indices)
        tokenized = raw.map(
            _tokenize_batch,
            batched=True,
            fn_kwargs={"tokenizer": self.tokenizer, "text_fields": self.spec.text_fields, "max_length": self.max_length},
            remove_columns=list(self.spec.text_fields),
            new_fingerprint=key,  # our own key: avoids hashing the tokenizer
            desc=f"tokenizing {self.spec.name}/{split}",
        ).rename_column("label", "labels")
        model_columns = [c for c in self.tokenizer.model_input_names if c in tokenized.column_names]
        tokenized = tokenized.select_columns([*model_columns, "labels"])
        meta = {
            "source": kind, "file": origin, "full_count": full_count, "count": len(tokenized),
            "limit": limit, "subset_seed": subset_seed if indices is not None else None,
            "subset_sha1": hashlib.sha1(indices.tobytes()).hexdigest() if indices is not None else None,
            "key": key_parts,
        }
        self._save_atomically(tokenized, folder, meta)
        return tokenized, {**meta, "cache": "miss", "cache_path": str(folder)}

    @staticmethod
    def _save_atomically(dataset: datasets.Dataset, folder: Path, meta: dict) -> None:
        """Write into a temp folder and rename, so a concurrent run never reads a half-written cache."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        dataset.save_to_disk(str(tmp))
        (tmp / _CACHE_META).write_text(json.dumps(meta, indent=1, default=str))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first; its copy is equivalent
            shutil.rmtree(tmp, ignore_errors=True)

    def _check_eval_labels_in_train(self) -> None:
        if self.spec.family != "classification":
            return
        train_labels = set(self._datasets["train"]["labels"])
        for split in self.eval_names:
            absent = sorted(set(self._datasets[split]["labels"]) - train_labels)
            if absent:
                names = [self.spec.label_names[i] for i in absent]
                hint = f" (train_limit={self.train_limit}: raise it)" if self.train_limit is not None else ""
                raise ValueError(
                    f"task '{self.spec.name}': {split} labels {names} are labels absent from the train set "
                    f"({len(self._datasets['train'])} train examples{hint}); expected every eval label in train"
                )

    # ---- access ------------------------------------------------------------------------------
    def dataset(self, split: str) -> datasets.Dataset:
        _check_split(self.spec, split)
        if split not in self._datasets:
            raise RuntimeError(f"GlueDataModule for '{self.spec.name}' is not set up; call setup() first")
        return self._datasets[split]

    def _train_set(self) -> datasets.Dataset:
        # train_batch_size is per process (training.py sets it from the global batch); see data/resumable.py.
        return self.dataset("train")

    def _eval_sets(self) -> list[datasets.Dataset]:
        return [self.dataset(split) for split in self.eval_names]

    def make_evaluator(self):
        from dcft_lab.data.metrics import GlueEvaluator

        return GlueEvaluator(self.spec)

    # ---- what dcft_lab.evaluate scores -------------------------------------------------------
    @property
    def file_expected(self) -> str:
        return f"a {self.spec.name} TSV in the GLUE layout"

    def check_eval_input(self, split: str, file: str | None) -> None:
        """The run's local files of ``split`` are still under the data root (unless read from the hub, or a
        train_holdout eval set, which is the train file's)."""
        if file is not None or split == "test" or self.source == "hub" or self.data_root is None:
            return
        if split == "validation" and self.train_holdout:
            return
        for name in (self.eval_names if split == "validation" else ("train",)):
            path = local_split_path(self.spec, name, self.data_root)
            if not path.is_file():
                raise DataInputError(f"data folder {self.data_root} has no {split} split for task '{self.spec.name}':"
                                     f" {path} not found; expected {_all_files_layout(self.spec)} (or data.source=hub)")

    def test_files(self, root: Path) -> list[Path]:
        return test_paths(self.spec, root)

    def test_layout(self) -> str:
        return _all_files_layout(self.spec)

    def validation_eval_set(self) -> EvalSet:
        self.setup_eval()
        names, info = tuple(self.eval_names), self.data_info()
        return EvalSet(self.val_dataloader(), self.make_evaluator(), names, True,
                       {n: len(self.dataset(n)) for n in names}, [info["files"][n] for n in names], data=info)

    def train_eval_set(self, limit: int | None) -> EvalSet:
        self.setup()  # the train split as the run used it (train_limit, holdout)
        train = self.dataset("train")
        if limit is not None:
            train = train.select(eval_subset_rows(len(train), limit))
        info = self.data_info()
        return EvalSet([self._eval_loader(train)], self.make_evaluator(), ("train",), True, {"train": len(train)},
                       [info["files"]["train"]], data=info, rename=self._single_set_renames())

    def file_eval_set(self, paths: list[Path], split: str, limit: int | None) -> EvalSet:
        """Test files (one per eval set, named as the leaderboard names them) or a user-given file; labeled or not."""
        loaders, ids, counts, labeled_flags = [], [], {}, []
        names = self.spec.board_names[: len(paths)]
        for path, name in zip(paths, names):
            texts, labels, row_ids = read_glue_file(path, self.spec)
            keep = eval_subset_rows(len(row_ids), limit)
            dataset = self._tokenized({f: [v[i] for i in keep] for f, v in texts.items()},
                                      [labels[i] for i in keep] if labels is not None else None)
            loaders.append(self._eval_loader(dataset))
            ids.append([row_ids[i] for i in keep])
            counts[name] = len(keep)
            labeled_flags.append(labels is not None)
        if len(set(labeled_flags)) > 1:
            raise DataInputError(f"{', '.join(map(str, paths))}: some files have labels and some do not; expected "
                                 "either all labeled or all unlabeled")
        rename = self._single_set_renames() if len(paths) == 1 else {}
        return EvalSet(loaders, self.make_evaluator(), names, labeled_flags[0], counts, [str(p) for p in paths],
                       ids=ids, rename=rename)

    def _single_set_renames(self) -> dict[str, str]:
        """One eval set scored alone reports metric kinds (MNLI: accuracy, not accuracy_m)."""
        return {name: kind for name, kind in self.spec.metric_kinds()[0].items() if name != kind}

    def _tokenized(self, texts: dict[str, list[str]], labels: list | None) -> datasets.Dataset:
        """Rows read from a file, tokenized as the data module's splits (labels kept when there are some)."""
        columns = dict(texts) if labels is None else {**texts, "labels": labels}
        dataset = datasets.Dataset.from_dict(columns).map(
            _tokenize_batch, batched=True, remove_columns=list(self.spec.text_fields),
            fn_kwargs={"tokenizer": self.tokenizer, "text_fields": self.spec.text_fields, "max_length": self.max_length})
        keep = [c for c in self.tokenizer.model_input_names if c in dataset.column_names]
        return dataset.select_columns(keep + (["labels"] if labels is not None else []))

    def data_info(self) -> dict:
        if not self._split_info:
            raise RuntimeError(f"GlueDataModule for '{self.spec.name}' is not set up; call setup() first")
        info = self._split_info
        return {
            "task": self.spec.name,
            "family": self.spec.family,
            "eval_names": list(self.eval_names),
            "counts": {split: i["count"] for split, i in info.items()},
            "full_counts": {split: i["full_count"] for split, i in info.items()},
            "files": {split: i["file"] for split, i in info.items()},
            "sources": {split: i["source"] for split, i in info.items()},
            "train_limit": self.train_limit,
            "eval_limit": self.eval_limit,
            "seed": self.seed,
            "train_subset_seed": self.train_subset_seed if self.train_limit is not None else None,
            "eval_subset_seed": EVAL_SUBSET_SEED,
            "subset_sha1": {split: i["subset_sha1"] for split, i in info.items()},
            "max_length": self.max_length,
            "tokenizer": _tokenizer_id(self.tokenizer) or type(self.tokenizer).__name__,
            "cache": {split: i["cache"] for split, i in info.items()},
            "cache_paths": {split: i["cache_path"] for split, i in info.items()},
            "train_carved_from_eval": False,
            # "dev": the task's dev set; "train_holdout": a held-out slice of the train split (hyper-parameter pilot)
            "eval_source": "train_holdout" if self._holdout_info else "dev",
            "train_holdout": self._holdout_info,
        }
