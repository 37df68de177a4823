"""``python -m dcft_lab.evaluate run=<run folder> [adapter=final|best] [split=validation|test|train] [file=<path>]
[out=<dir>] [data.root=...] [data.eval_limit=N] [run.verbose=true]``: score a saved adapter again, or write
predictions, without retraining.

``adapter=best`` loads ``<run>/adapter-best/``, the adapter of the run's best evaluation (``split=validation`` then
reproduces the record's best metrics); the default ``adapter=final`` is the adapter at the end of training.

The backbone and method come from the run's own resolved config (``saved_run.py``); the data from the same data
module and evaluator as in training (``build_datamodule`` + ``val_dataloader`` + ``make_evaluator``), run through
the same LightningModule (``AdapterModule``) and a Lightning ``validate`` loop with the run's accelerator, precision
and thread count, so ``split=validation`` reproduces the record's final evaluation exactly.

Writes ``<out>/eval-<split>.json`` (metrics, counts, files, adapter checksum, commit; ``out`` defaults to the run
folder; ``results.json`` is never touched) and, for ``split=test``, ``file=...`` or any input without labels,
predictions: GLUE in the leaderboard's format (``predictions-<split>/<Task>.tsv``, ``index<TAB>prediction``),
SQuAD as the official ``{id: answer}`` JSON (``predictions-<split>.json``), summarization as JSON lines
``{"id", "summary"}`` (``predictions-<split>.jsonl``).

Decoder-only backbones: the run's model family (``SavedRun.family``: GLUE through the ``score`` head, generation as
"causal_lm") and backbone options come from its record. GLUE and summarization (prompt -> summary, ROUGE of
``generate``) work as above; ``sft`` scores perplexity on the dev set, the run's train set (``split=train``) or any
prompt/response JSON-lines file (``file=``) and has no predictions to write.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .saved_run import (
    RunInputError,
    SavedRun,
    cli_main,
    load_adapted_model,
    open_run,
    parse_command_line,
    verbose_requested,
)

USAGE = ("python -m dcft_lab.evaluate run=<run folder> [adapter=final|best] [split=validation|test|train] "
         "[file=<path>] [out=<dir>] [data.root=<folder>] [data.eval_limit=N] [run.verbose=true]")
OPTIONS = {"run": None, "adapter": "final", "split": "validation", "file": None, "out": None}
# what may change between training and evaluation: where the data is and how much of it, batch size, decoding
OVERRIDABLE = ("data.", "task.eval_batch_size", "task.generation", "task.n_best", "task.max_answer_length",
               "task.null_score_diff_threshold", "task.eval_file", "run.threads", "run.verbose",
               "trainer.accelerator", "trainer.precision", "backbone.path")
if __name__ == "__main__":  # python -m dcft_lab.evaluate: --help and argument errors answer before torch is imported
    parse_command_line(sys.argv[1:], OPTIONS, OVERRIDABLE, USAGE, __doc__)

import torch  # noqa: E402
from torch import nn  # noqa: E402

SPLITS = ("validation", "test", "train")
# GLUE leaderboard file names (one per eval set); the others are the task's GLUE folder name
GLUE_BOARD_NAMES = {"mnli": ("MNLI-m", "MNLI-mm")}
GLUE_TEST_FILES = {"mnli": ("test_matched.tsv", "test_mismatched.tsv")}  # others: test.tsv
GLUE_ID_COLUMNS = ("index", "id")  # "id" in QQP
# SQuAD has no public test set (CodaLab runs the model on a hidden file in the dev format): this is where a local
# one is looked for; file=<path> takes any SQuAD-format JSON.
SQUAD_TEST_FILES = {"v1": "test-v1.1.json", "v2": "test-v2.0.json"}


@dataclass
class EvalSet:
    """What one evaluation runs on: loaders (one per eval set) and the evaluator that scores them."""

    loaders: list
    evaluator: nn.Module
    names: tuple[str, ...]
    labeled: bool
    counts: dict
    files: list[str]
    ids: list[list] | None = None  # per loader, the example ids in loader order (for predictions)
    data: dict = field(default_factory=dict)  # the data module's own description (data_info), when built by it
    rename: dict = field(default_factory=dict)  # metric renames (e.g. MNLI train: accuracy_m -> accuracy)


# ------------------------------------------------------------------------------------------------ evaluation
class PredictionRecorder(nn.Module):
    """Wraps the task's evaluator and keeps the predictions.

    Labeled GLUE data without predictions to write goes straight to the evaluator (GlueEvaluator.update, as in
    training); otherwise the same forward pass as GlueEvaluator.update, its logits fed to update_logits.
    SQuAD / summarization evaluators keep their predictions themselves; they are copied at compute().
    """

    def __init__(self, evaluator: nn.Module, spec, labeled: bool, record: bool):
        super().__init__()
        self.evaluator = evaluator
        self.spec, self.labeled, self.record = spec, labeled, record
        self.glue = spec.family in ("classification", "regression")
        self.outputs: dict[int, list[torch.Tensor]] = {}
        self.metrics: dict[str, float] = {}
        self.predictions: Any = None

    @torch.no_grad()
    def update(self, model: nn.Module, batch: dict, dataloader_idx: int = 0) -> None:
        if not self.glue or (self.labeled and not self.record):
            self.evaluator.update(model, batch, dataloader_idx)
            return
        from .data.metrics import predictions_from_logits

        inputs = {key: value for key, value in batch.items() if key not in ("meta", "labels")}
        logits = model(**inputs).logits
        self.outputs.setdefault(dataloader_idx, []).append(predictions_from_logits(self.spec, logits.detach()).cpu())
        if self.labeled:
            self.evaluator.update_logits(logits, batch["labels"], dataloader_idx)

    def compute(self) -> dict[str, float]:
        metrics = {k: float(v) for k, v in self.evaluator.compute().items()}
        if self.glue:
            self.predictions = {i: torch.cat(chunks).tolist() for i, chunks in self.outputs.items()}
        elif isinstance(getattr(self.evaluator, "predictions", None), dict):  # SQuAD: {id: answer}
            self.predictions = dict(self.evaluator.predictions)
        else:  # summaries, in loader order (reset() drops them)
            self.predictions = list(getattr(self.evaluator, "predictions", None) or [])
        self.metrics = metrics if self.labeled else {}
        return self.metrics

    def reset(self) -> None:
        self.evaluator.reset()


def _trainer(saved: SavedRun):
    import pytorch_lightning as pl

    trainer_cfg = saved.rc.trainer
    return pl.Trainer(
        accelerator=trainer_cfg.get("accelerator", "auto"), devices=1,
        precision=trainer_cfg.get("precision", "32-true"),
        deterministic=trainer_cfg.get("deterministic", saved.rc.run.deterministic),
        inference_mode=trainer_cfg.get("inference_mode", True), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )


def run_evaluation(saved: SavedRun, model: nn.Module, eval_set: EvalSet, record_predictions: bool
                   ) -> tuple[dict[str, float], Any, str]:
    """(metrics, predictions, device): the eval set through AdapterModule's validation step and a Lightning loop."""
    from .module import AdapterModule

    recorder = PredictionRecorder(eval_set.evaluator, saved.spec, eval_set.labeled, record_predictions)
    module = AdapterModule(model, saved.method, recorder, main_metric=saved.spec.main_metric,
                           eval_names=eval_set.names, seed=saved.rc.seed)  # validation only: no optim settings
    trainer = _trainer(saved)
    trainer.validate(module, dataloaders=eval_set.loaders, verbose=False)
    metrics = {eval_set.rename.get(k, k): v for k, v in recorder.metrics.items()}
    return metrics, recorder.predictions, str(trainer.strategy.root_device)


# ----------------------------------------------------------------------------------------------- data: shared
def _explicit_limit(overrides: list[str]) -> int | None:
    """data.eval_limit when given on this command line (test / train / file inputs are subsampled only then)."""
    from omegaconf import OmegaConf

    value = OmegaConf.from_dotlist(list(overrides)).get("data", {}).get("eval_limit")
    if value is not None and (not isinstance(value, int) or value < 1):
        raise RunInputError(f"data.eval_limit={value!r}; expected an integer >= 1")
    return value


def _subset(n: int, limit: int | None) -> list[int]:
    """Row indices kept by data.eval_limit: the seeded subset GLUE eval sets use (EVAL_SUBSET_SEED), file order."""
    from .data.glue import EVAL_SUBSET_SEED
    from .data.splits import subset_indices

    chosen = subset_indices(n, limit, EVAL_SUBSET_SEED)
    return list(range(n)) if chosen is None else chosen.tolist()


def _data_root(saved: SavedRun) -> Path | None:
    from .data.tasks import resolve_data_root

    return resolve_data_root(saved.rc.data.root)


def _require_file(path: Path | None, what: str, expected: str) -> Path:
    if path is None or not path.is_file():
        raise RunInputError(f"{what}: {path} not found; expected {expected}")
    return path


def _input_files(saved: SavedRun, file: str | None, file_expected: str, test_files, expected: str,
                 hint: str = "") -> list[Path]:
    """What a test / file= evaluation reads: [file=<path>] when given, else the task's test file(s) under the data
    root (``test_files(root)``); a one-line RunInputError when the file, the data root or a test file is missing.
    ``file_expected`` / ``expected`` say what a file= input / the test split should be, ``hint`` how to do without
    it."""
    if file is not None:
        return [_require_file(Path(file).expanduser(), "file", file_expected)]
    root = _data_root(saved)
    if root is None:
        raise RunInputError(f"no data root (data.root / $DCFT_LAB_DATA) to find the test split of task "
                            f"'{saved.spec.name}' in; expected {expected}")
    return [_require_file(path, f"data folder {root} has no test split for task '{saved.spec.name}'{hint}", expected)
            for path in test_files(root)]


def _loader(dataset, batch_size: int, collator):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)


def build_eval_set(saved: SavedRun, tokenizer, split: str, file: str | None, limit: int | None) -> EvalSet:
    """By the task's family; the run's model family (saved.family) chooses the data module's form (on a
    decoder-only backbone summarization is prompt -> summary for a causal LM)."""
    family = saved.spec.family
    if family in ("classification", "regression"):
        return _glue_eval_set(saved, tokenizer, split, file, limit)
    if family == "qa":
        return _squad_eval_set(saved, tokenizer, split, file, limit)
    if family == "seq2seq":
        return _summarization_eval_set(saved, tokenizer, split, file, limit)
    if family == "causal_lm":
        return _prompt_response_eval_set(saved, tokenizer, split, file, limit)
    raise RunInputError(f"task '{saved.spec.name}' has family '{family}', which dcft_lab.evaluate does not know")


def has_predictions(spec) -> bool:
    """Whether the task has predictions to write: labels, answers, summaries; not sft (scored by perplexity)."""
    return spec.family in ("classification", "regression", "qa", "seq2seq")


# ------------------------------------------------------------------------------------------------------ GLUE
def read_glue_file(path: Path, spec) -> tuple[dict[str, list[str]], list | None, list[str]]:
    """(texts per text field, labels or None, ids) of a GLUE-layout TSV: a train/dev file, or a test file (its
    header names the text columns and an ``index`` / ``id`` column, and there is no label column)."""
    from .data.glue import read_glue_tsv

    layout = spec.glue.tsv
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    if not rows:
        raise ValueError(f"{path} is empty; expected a {spec.name} file in the GLUE layout")
    header = rows[0]
    if not layout.has_header and "sentence" not in header:  # CoLA train/dev: no header, labeled
        columns = read_glue_tsv(path, spec)
        return {f: columns[f] for f in spec.text_fields}, columns["label"], [str(i) for i in range(len(rows))]
    text_columns = layout.text_columns if layout.has_header else ("sentence",)  # CoLA's test file has a header
    label_column = layout.label_column if layout.has_header else "label"
    position = {name: i for i, name in enumerate(header)}
    missing = [name for name in text_columns if name not in position]
    if missing:
        raise ValueError(f"{path}: header lacks column(s) {missing} of task '{spec.name}'; got header {header}; "
                         f"expected {', '.join(map(str, text_columns))} (and {label_column} when labeled)")
    labeled = label_column in position
    id_column = next((c for c in GLUE_ID_COLUMNS if c in position), None)
    label_ids = {v: i for i, v in enumerate(layout.label_values)} if layout.label_values is not None else None
    texts: dict[str, list[str]] = {f: [] for f in spec.text_fields}
    labels: list = []
    ids: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: got {len(row)} columns, expected {len(header)} (as the header)")
        for field_name, column in zip(spec.text_fields, text_columns):
            texts[field_name].append(row[position[column]])
        ids.append(row[position[id_column]] if id_column else str(line - 2))
        if labeled:
            raw = row[position[label_column]].strip()
            if label_ids is None:
                try:
                    labels.append(float(raw))
                except ValueError:
                    raise ValueError(f"{path}:{line}: score '{raw}' is not a number") from None
            elif raw in label_ids:
                labels.append(label_ids[raw])
            else:
                raise ValueError(f"{path}:{line}: label '{raw}' is not one of the expected labels "
                                 f"{list(layout.label_values)} of task '{spec.name}'")
    if not ids:
        raise ValueError(f"{path} has no data rows; expected {spec.name} rows in the GLUE layout")
    return texts, (labels if labeled else None), ids


def _glue_expected(spec) -> str:
    files = [f for _, f in spec.glue.split_files] + list(GLUE_TEST_FILES.get(spec.name, ("test.tsv",)))
    return f"<data_root>/glue/{spec.glue.folder}/{{{','.join(files)}}}"


def _glue_eval_set(saved: SavedRun, tokenizer, split: str, file: str | None, limit: int | None) -> EvalSet:
    from .data.glue import local_split_path
    from .data.metrics import GlueEvaluator, loader_metric_kinds

    rc, spec = saved.rc, saved.spec
    root = _data_root(saved)
    if file is None and split != "test":
        if rc.data.source != "hub" and root is not None and not (split == "validation" and rc.data.train_holdout):
            for name in (spec.eval_names if split == "validation" else ("train",)):
                _require_file(local_split_path(spec, name, root), f"data folder {root} has no {split} split for "
                              f"task '{spec.name}'", _glue_expected(spec) + " (or data.source=hub)")
        dm = saved.datamodule(tokenizer)
        if split == "validation":
            dm.setup_eval()
            names = tuple(dm.eval_names)
            return EvalSet(dm.val_dataloader(), dm.make_evaluator(), names, True,
                           {n: len(dm.dataset(n)) for n in names}, [dm.data_info()["files"][n] for n in names],
                           data=dm.data_info())
        dm.setup()  # the train split as the run used it (train_limit, holdout)
        train = dm.dataset("train")
        if limit is not None:
            train = train.select(_subset(len(train), limit))
        kinds = loader_metric_kinds(spec)[0]
        return EvalSet([_loader(train, rc.task.eval_batch_size, dm.collator)], dm.make_evaluator(), ("train",), True,
                       {"train": len(train)}, [dm.data_info()["files"]["train"]], data=dm.data_info(),
                       rename={k: v for k, v in kinds.items() if k != v})

    # test split / an explicit file: read here (GLUE test files have no labels), tokenized as the data module does
    paths = _input_files(saved, file, f"a {spec.name} TSV in the GLUE layout",
                         lambda root: [root / "glue" / spec.glue.folder / name
                                       for name in GLUE_TEST_FILES.get(spec.name, ("test.tsv",))],
                         _glue_expected(spec))
    loaders, ids, counts, labeled_flags = [], [], {}, []
    names = GLUE_BOARD_NAMES.get(spec.name, (spec.glue.folder,))[: len(paths)]
    for path, name in zip(paths, names):
        texts, labels, row_ids = read_glue_file(path, spec)
        keep = _subset(len(row_ids), limit)
        dataset = _tokenized_glue(spec, tokenizer, rc.task.max_length,
                                  {f: [v[i] for i in keep] for f, v in texts.items()},
                                  [labels[i] for i in keep] if labels is not None else None)
        loaders.append(_loader(dataset, rc.task.eval_batch_size, _glue_collator(tokenizer)))
        ids.append([row_ids[i] for i in keep])
        counts[name] = len(keep)
        labeled_flags.append(labels is not None)
    if len(set(labeled_flags)) > 1:
        raise RunInputError(f"{', '.join(map(str, paths))}: some files have labels and some do not; expected "
                            "either all labeled or all unlabeled")
    rename = {}
    if len(paths) == 1:  # one eval set: report metric kinds (MNLI: accuracy, not accuracy_m)
        rename = {k: v for k, v in loader_metric_kinds(spec)[0].items() if k != v}
    return EvalSet(loaders, GlueEvaluator(spec), names, labeled_flags[0], counts, [str(p) for p in paths], ids=ids,
                   rename=rename)


def _glue_collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, return_tensors="pt")  # as GlueDataModule (decoders: right-padded)


def _tokenized_glue(spec, tokenizer, max_length: int, texts: dict, labels: list | None):
    import datasets

    from .data.glue import _tokenize_batch

    columns = dict(texts)
    if labels is not None:
        columns["labels"] = labels
    dataset = datasets.Dataset.from_dict(columns).map(
        _tokenize_batch, batched=True, remove_columns=list(spec.text_fields),
        fn_kwargs={"tokenizer": tokenizer, "text_fields": spec.text_fields, "max_length": max_length})
    keep = [c for c in tokenizer.model_input_names if c in dataset.column_names]
    return dataset.select_columns(keep + (["labels"] if labels is not None else []))


def write_glue_predictions(folder: Path, spec, names: tuple[str, ...], ids: list[list], predictions: dict) -> list[str]:
    """One leaderboard file per eval set: ``index<TAB>prediction``, labels as the GLUE files spell them (0/1 for
    CoLA, SST-2, MRPC, QQP; entailment / not_entailment / ...), STS-B scores with 3 decimals."""
    values = spec.glue.tsv.label_values
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, name in enumerate(names):
        preds = predictions.get(index, [])
        if len(preds) != len(ids[index]):
            raise RuntimeError(f"{len(preds)} predictions for {len(ids[index])} rows of {name}")
        lines = ["index\tprediction"]
        lines += [f"{i}\t{values[int(p)] if values is not None else f'{float(p):.3f}'}"
                  for i, p in zip(ids[index], preds)]
        path = folder / f"{name}.tsv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(str(path))
    return written


# ----------------------------------------------------------------------------------------------------- SQuAD
def read_squad_questions(path: Path):
    """(examples, labeled): an official SQuAD JSON file; questions without ``answers`` (a test file) are read with
    empty answers and make the file unlabeled."""
    from datasets import Dataset

    from .data.squad import EXPECTED_JSON, SQUAD_FEATURES, read_squad_json

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        questions = [qa for article in raw["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
        labeled = all("answers" in qa or qa.get("is_impossible") for qa in questions)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); expected {EXPECTED_JSON}") from None
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed SQuAD JSON ({type(err).__name__}: {err}); expected {EXPECTED_JSON}") \
            from None
    if labeled:
        return read_squad_json(path), True
    rows: dict[str, list] = {name: [] for name in SQUAD_FEATURES}
    try:
        for article in raw["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    rows["id"].append(qa["id"])
                    rows["title"].append(article.get("title", ""))
                    rows["context"].append(paragraph["context"])
                    rows["question"].append(qa["question"])
                    rows["answers"].append({"text": [], "answer_start": []})
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed SQuAD JSON ({type(err).__name__}: {err}); expected {EXPECTED_JSON}") \
            from None
    return Dataset.from_dict(rows, features=SQUAD_FEATURES), False


def _squad_eval_set(saved: SavedRun, tokenizer, split: str, file: str | None, limit: int | None) -> EvalSet:
    from .data.splits import seeded_subset
    from .data.squad import SQUAD_LAYOUT, TASK_VERSION, squad_layout
    from .data.squad_metrics import SquadEvaluator
    from .data.squad_processing import QACollator, build_features

    rc, spec = saved.rc, saved.spec
    version = TASK_VERSION[spec.name]
    folder = SQUAD_LAYOUT[version][0]
    root = _data_root(saved)
    if file is None and split != "test":
        if rc.data.source != "hub" and root is not None and not (root / folder).is_dir():
            raise RunInputError(f"data folder {root} has no {folder}/ for task '{spec.name}'; expected "
                                f"{squad_layout(version)}")
        dm = saved.datamodule(tokenizer)
        dm.setup("validate")  # the eval set as training made it (carving, eval_limit), train examples too
        if split == "validation":
            return EvalSet(dm.val_dataloader(), dm.make_evaluator(), tuple(dm.eval_names), True,
                           {"examples": len(dm.eval_examples), "features": len(dm.eval_features)},
                           list(dm.data_info().get("files", [])), data=dm.data_info())
        examples = seeded_subset(dm.train_examples, limit, dm.split_seed)
        labeled, files, data = True, list(dm.data_info().get("files", [])), dm.data_info()
    else:
        [path] = _input_files(saved, file, "an official SQuAD JSON file",
                              lambda root: [root / folder / SQUAD_TEST_FILES[version]],
                              f"a SQuAD-format JSON file <data_root>/{folder}/{SQUAD_TEST_FILES[version]}",
                              hint=" (SQuAD has no public test set; pass file=<questions.json>)")
        examples, labeled = read_squad_questions(path)
        examples = seeded_subset(examples, limit, 0)
        files, data = [str(path)], {}
    features = build_features(examples, tokenizer, False, rc.task.max_length, rc.task.doc_stride)
    evaluator = SquadEvaluator(examples, features, version_2=version == "v2", n_best=rc.task.n_best,
                               max_answer_length=rc.task.max_answer_length,
                               null_score_diff_threshold=rc.task.null_score_diff_threshold)
    return EvalSet([_loader(features, rc.task.eval_batch_size, QACollator(tokenizer))], evaluator, (split,), labeled,
                   {"examples": len(examples), "features": len(features)}, files, ids=[list(examples["id"])],
                   data=data)


# --------------------------------------------------------------------------------------------- summarization
def read_documents(path: Path):
    """(examples with document / summary, ids, labeled) of a JSON-lines file: ``document`` required, ``summary``
    optional (all rows have one: labeled), ``id`` optional (else the 0-based row number)."""
    from datasets import Dataset

    from .data.jsonl import iter_jsonl
    from .data.summarization import SUMMARY_FEATURES

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


def _summarization_eval_set(saved: SavedRun, tokenizer, split: str, file: str | None, limit: int | None
                            ) -> EvalSet:
    """BART: documents -> summaries; a decoder-only run (model family causal_lm): the run's prompts
    (``task.prompt_template``), left-padded, continued by ``generate`` -- both through the run's data module."""
    from .data.splits import seeded_subset
    from .data.summarization import (
        SUMMARIZATION_DATASETS,
        Seq2SeqCollator,
        summarization_local_path,
        tokenize_summaries,
    )

    rc, spec = saved.rc, saved.spec
    dm = saved.datamodule(tokenizer)  # Seq2SeqDataModule, or DecoderSummarizationDataModule on a decoder
    folder = SUMMARIZATION_DATASETS[spec.name].folder
    root = _data_root(saved)
    expected = f"<data_root>/{folder}/{{train,validation,test}}.jsonl (fields document, summary[, id])"
    if file is None and split != "test":
        if rc.data.source != "hub" and root is not None and not dm.has_local_copy(root):
            raise RunInputError(f"data folder {root} has no {folder}/ for task '{spec.name}'; "
                                f"expected {expected}")
        dm.setup("validate")
        if split == "validation":
            return EvalSet(dm.val_dataloader(), dm.make_evaluator(), tuple(dm.eval_names), True,
                           {"examples": len(dm.eval_examples)}, list(dm.data_info().get("files", [])),
                           data=dm.data_info())
        examples = seeded_subset(dm.train_examples, limit, dm.split_seed)
        ids, labeled, files, data = [str(i) for i in range(len(examples))], True, list(dm.data_info()["files"]), \
            dm.data_info()
    else:
        [path] = _input_files(saved, file, "JSON lines with 'document' (and 'summary', 'id')",
                              lambda root: [summarization_local_path(spec, "test", root)], expected)
        examples, ids, labeled = read_documents(path)
        keep = _subset(len(ids), limit)
        examples, ids = examples.select(keep), [ids[i] for i in keep]
        files, data = [str(path)], {}
    if saved.family == "causal_lm":  # prompts as the run's eval set has them, left-padded for generate()
        features, collator = dm._features(examples, train=False), dm.eval_collator
    else:
        features = tokenize_summaries(examples, tokenizer, rc.task.max_source_length, rc.task.max_target_length,
                                      keep_references=True)
        collator = Seq2SeqCollator(tokenizer)
    evaluator = dm.make_evaluator()  # ROUGE with the run's generation settings (task.generation)
    return EvalSet([_loader(features, rc.task.eval_batch_size, collator)], evaluator, (split,), labeled,
                   {"examples": len(examples)}, files, ids=[ids], data=data)


# ------------------------------------------------------------------------------------- prompt -> response (sft)
def sft_no_predictions(task: str) -> str:
    return (f"predictions (generated responses) are not supported for task '{task}': it is scored by perplexity on "
            "JSON lines with string fields 'prompt' and 'response'")


def _check_prompt_response_rows(path: Path, task: str) -> None:
    """A one-line error for a prompts-only file (a row with a 'prompt' and no 'response': a request for
    predictions); other malformed rows are left to read_prompt_response_jsonl, which names the line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                return
            if isinstance(row, dict) and isinstance(row.get("prompt"), str) and "response" not in row:
                raise RunInputError(f"{path}:{number} has no 'response'; {sft_no_predictions(task)}")


def _response_tokens(features) -> int:
    from .data.causal_lm import IGNORE_INDEX

    return sum(sum(label != IGNORE_INDEX for label in row) for row in features["labels"])


def _prompt_response_eval_set(saved: SavedRun, tokenizer, split: str, file: str | None, limit: int | None
                              ) -> EvalSet:
    """Task sft (decoder-only): loss and perplexity on the response tokens of the dev set (the run's data module, as
    in training), of the run's train set (split=train), or of a prompt/response JSON-lines file (file=)."""
    from .data.causal_lm import (
        CausalLMCollator,
        PerplexityEvaluator,
        read_prompt_response_jsonl,
        tokenize_prompt_response,
    )

    rc, spec = saved.rc, saved.spec
    if split == "test":
        raise RunInputError(f"task '{spec.name}' has no test split and {sft_no_predictions(spec.name)}; expected "
                            "split=validation|train, or file=<prompt/response .jsonl> to score perplexity on it")
    dropped = 0
    if file is None:
        dm = saved.datamodule(tokenizer)  # PromptResponseDataModule, as training built it
        dm.setup("fit" if split == "train" else "validate")
        data = dm.data_info()
        run_files = [str(f) for f in data.get("files", [])]  # [train file,] eval file
        if split == "validation":
            features = dm.eval_features
            return EvalSet(dm.val_dataloader(), dm.make_evaluator(), tuple(dm.eval_names), True,
                           {"examples": len(features), "response_tokens": _response_tokens(features)},
                           run_files[-1:], data=data)
        features = dm.train_features  # the run's training rows (train_limit, or carved out of the eval file)
        if limit is not None:
            features = features.select(_subset(len(features), limit))
        files = run_files[:1]
    else:
        path = _require_file(Path(file).expanduser(), "file", "JSON lines with string fields 'prompt' and 'response'")
        _check_prompt_response_rows(path, spec.name)
        rows = read_prompt_response_jsonl(path)
        features, dropped = tokenize_prompt_response(rows.select(_subset(len(rows), limit)), tokenizer,
                                                     rc.task.max_length)
        files, data = [str(path)], {}
    counts = {"examples": len(features), "response_tokens": _response_tokens(features)}
    if dropped:
        counts["dropped_prompt_too_long"] = dropped
    collator = CausalLMCollator(tokenizer.pad_token_id, "right")  # as the data module: right-padded, labels -100
    return EvalSet([_loader(features, rc.task.eval_batch_size, collator)], PerplexityEvaluator(),
                   ("train" if file is None else "file",), True, counts, files, data=data)


# ------------------------------------------------------------------------------------------------- the command
def _write_predictions(out: Path, label: str, saved: SavedRun, eval_set: EvalSet, predictions: Any) -> list[str]:
    family = saved.spec.family  # the task's: decoder-only runs write the same files
    if not has_predictions(saved.spec):
        return []
    if family in ("classification", "regression"):
        return write_glue_predictions(out / f"predictions-{label}", saved.spec, eval_set.names, eval_set.ids,
                                      predictions)
    if family == "qa":
        path = out / f"predictions-{label}.json"
        ordered = {qid: predictions.get(qid, "") for qid in eval_set.ids[0]}
        path.write_text(json.dumps(ordered, indent=1) + "\n", encoding="utf-8")
        return [str(path)]
    path = out / f"predictions-{label}.jsonl"
    if len(predictions) != len(eval_set.ids[0]):
        raise RuntimeError(f"{len(predictions)} summaries for {len(eval_set.ids[0])} documents")
    path.write_text("".join(json.dumps({"id": i, "summary": s}, ensure_ascii=False) + "\n"
                            for i, s in zip(eval_set.ids[0], predictions)), encoding="utf-8")
    return [str(path)]


def _overlap_note(saved: SavedRun, eval_set: EvalSet, split: str) -> str | None:
    """A test / other file that the run carved its training slice out of shares examples with training."""
    from .data.splits import CARVED

    data = (saved.record or {}).get("data") or {}
    if split == "validation" or data.get("train_source") != CARVED:
        return None
    carved_from = {str(Path(f).resolve()) for f in data.get("files", [])}
    if any(str(Path(f).resolve()) in carved_from for f in eval_set.files):
        return (f"the run carved its {data.get('n_train')} training examples out of this file: some of the examples "
                "evaluated here were trained on")
    return None


def evaluate(run_dir: str | Path, split: str = "validation", file: str | None = None,
             out: str | Path | None = None, overrides: list[str] = (), adapter: str = "final") -> dict:
    """Evaluate (and/or predict with) a run's saved adapter (``adapter``: "final" or "best"); returns the
    eval-<split>.json payload (``eval-<split>-best.json`` for the best adapter)."""
    from .records import git_commit, now_iso, write_json_atomic

    if split not in SPLITS:
        raise RunInputError(f"split={split!r}; expected one of {', '.join(SPLITS)}")
    if file is not None and split != "validation":
        raise RunInputError("give either split= or file=, not both")
    start = time.time()
    saved = open_run(run_dir, overrides, adapter)
    limit = _explicit_limit(list(overrides))
    model, tokenizer, _ = load_adapted_model(saved)
    try:
        eval_set = build_eval_set(saved, tokenizer, split, file, limit)
    except RunInputError:
        raise
    except (ValueError, FileNotFoundError) as err:  # a data file that does not fit the run's task
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunInputError(f"data for the run's task '{saved.spec.name}': {message}") from None
    label = (split if file is None else f"file-{Path(file).stem}") + ("-best" if adapter == "best" else "")
    write_predictions = (file is not None or split == "test" or not eval_set.labeled) and has_predictions(saved.spec)
    metrics, predictions, device = run_evaluation(saved, model, eval_set, write_predictions)

    out_dir = Path(out).expanduser() if out else saved.run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    prediction_files = _write_predictions(out_dir, label, saved, eval_set, predictions) if write_predictions else []
    record = saved.record or {}
    root = _data_root(saved)
    payload: dict[str, Any] = {
        "run_dir": str(saved.run_dir), "task": saved.spec.name, "method": saved.method.name,
        "method_label": saved.method.label, "backbone": saved.rc.backbone.name, "seed": saved.rc.seed,
        "split": split if file is None else "file", "labeled": eval_set.labeled, "main_metric": saved.spec.main_metric,
        "metrics": metrics, "counts": eval_set.counts, "files": eval_set.files,
        "data_root": str(root) if root else None, "overrides": list(overrides),
        "predictions": prediction_files,
    }
    payload["adapter_choice"], payload["adapter_step"] = adapter, saved.adapter_step
    same_data = not any(o.startswith(("data.", "task.")) for o in overrides)  # the run's own dev set
    if split == "validation" and file is None and same_data and record.get("metrics", {}).get(adapter):
        recorded = record["metrics"][adapter]  # the final adapter: the final evaluation; the best: the best one
        payload[f"recorded_{adapter}"] = recorded
        payload[f"equals_recorded_{adapter}"] = metrics == recorded
    note = _overlap_note(saved, eval_set, split if file is None else "file")
    if note:
        payload["note"] = note
    payload.update({
        "adapter": saved.adapter_checksum(), "commit": git_commit(), "run_commit": saved.recorded_commit,
        "device": device, "torch_threads": torch.get_num_threads(), "data": eval_set.data,
        "wall_time_s": round(time.time() - start, 3), "created_at": now_iso(),
    })
    write_json_atomic(out_dir / f"eval-{label}.json", payload)
    payload["path"] = str(out_dir / f"eval-{label}.json")
    return payload


def _print_summary(payload: dict) -> None:
    what = f"{payload['task']} | {payload['method_label']} | {payload['backbone']} | seed {payload['seed']}"
    print(f"{what} | {payload['split']} ({', '.join(f'{k} {v}' for k, v in payload['counts'].items())})")
    if payload["metrics"]:
        print("  " + "  ".join(f"{k} {v:.2f}" for k, v in payload["metrics"].items()))
        choice = payload.get("adapter_choice", "final")
        if f"equals_recorded_{choice}" in payload:
            same = "equals" if payload[f"equals_recorded_{choice}"] else "DIFFERS FROM"
            print(f"  {same} the run record's {choice} evaluation (adapter-{choice}, step {payload['adapter_step']})"
                  if choice == "best" else f"  {same} the run record's final evaluation")
    else:
        print("  no labels: predictions only")
    if payload.get("note"):
        print(f"  note: {payload['note']}")
    for path in payload["predictions"]:
        print(f"  predictions: {path}")
    print(f"  record: {payload['path']}")


def main(argv: list[str] | None = None) -> dict:
    options, overrides = parse_command_line(list(sys.argv[1:] if argv is None else argv), OPTIONS, OVERRIDABLE,
                                            USAGE, __doc__)

    def body() -> dict:
        if not options["run"]:
            raise RunInputError(f"run=<run folder> is required; usage: {USAGE}")
        payload = evaluate(options["run"], options["split"], options["file"], options["out"], overrides,
                           adapter=options["adapter"])
        _print_summary(payload)
        return payload

    return cli_main(body, verbose=verbose_requested(overrides))


if __name__ == "__main__":
    main()
