"""``python -m dcft_lab.evaluate run=<run folder> [adapter=final|best] [split=validation|test|train] [file=<path>]
[out=<dir>] [data.root=...] [data.eval_limit=N] [run.verbose=true]``: score a saved adapter again, or write
predictions, without retraining.

``adapter=best`` loads ``<run>/adapter-best/``, the adapter of the run's best evaluation (``split=validation`` then
reproduces the record's best metrics); the default ``adapter=final`` is the adapter at the end of training.

The backbone and method come from the run's own resolved config (``saved_run.py``); the data from the same data
module and evaluator as in training (``build_datamodule`` + ``val_dataloader`` + ``make_evaluator``), run through
the same LightningModule (``AdapterModule``) and a Lightning ``validate`` loop with the run's accelerator, precision
and thread count, so ``split=validation`` reproduces the record's final evaluation exactly. The data module also
reads the task's test files and ``file=`` inputs (``build_eval_set``); this module runs the model, keeps the metrics
and writes the predictions.

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

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .saved_run import (
    RunInputError,
    SavedRun,
    cli_main,
    load_adapted_model,
    open_run,
    parse_command_line,
    verbose_requested,
)

if TYPE_CHECKING:
    from .data.base import EvalSet

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

    # The run's device / numerics settings where its config names them (Lightning's own defaults otherwise);
    # one device, no logging or checkpoints: evaluation only.
    kept = {k: v for k, v in saved.rc.trainer.items() if k in ("accelerator", "precision", "inference_mode")}
    return pl.Trainer(**kept, devices=1, deterministic=saved.rc.trainer.get("deterministic", saved.rc.run.deterministic),
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


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


# ------------------------------------------------------------------------------------------------------ data
def _explicit_limit(overrides: list[str]) -> int | None:
    """data.eval_limit when given on this command line (test / train / file inputs are subsampled only then)."""
    from omegaconf import OmegaConf

    value = OmegaConf.from_dotlist(list(overrides)).get("data", {}).get("eval_limit")
    if value is not None and (not isinstance(value, int) or value < 1):
        raise RunInputError(f"data.eval_limit={value!r}; expected an integer >= 1")
    return value


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


def build_eval_set(saved: SavedRun, tokenizer, split: str, file: str | None, limit: int | None) -> EvalSet:
    """What to score, prepared by the run's data module (built as training built it: on a decoder-only backbone
    summarization is prompt -> summary): its dev set, the run's train split, or the task's test files / ``file``,
    which the data module reads itself."""
    dm = saved.datamodule(tokenizer)
    dm.check_eval_input(split, file)
    if file is None and split == "validation":
        return dm.validation_eval_set()
    if file is None and split == "train":
        return dm.train_eval_set(limit)
    paths = _input_files(saved, file, dm.file_expected, dm.test_files, dm.test_layout(), dm.test_hint)
    return dm.file_eval_set(paths, split, limit)


def has_predictions(spec) -> bool:
    """Whether the task has predictions to write: labels, answers, summaries; not sft (scored by perplexity)."""
    return spec.family in ("classification", "regression", "qa", "seq2seq")


# ------------------------------------------------------------------------------------------------ predictions
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


# ------------------------------------------------------------------------------------------------- the command
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
    from .data.base import DataInputError
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
    except (RunInputError, DataInputError):  # already one complete line
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
        agreement = recorded_agreement(metrics, recorded, pruned=saved.pruned_ranks)
        payload[f"equals_recorded_{adapter}"] = agreement == "exact"
        payload[f"agreement_recorded_{adapter}"] = agreement
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


# An AdaLoRA adapter saved after its budget holds only the surviving ranks (rank_pattern), while the run evaluated
# the full-rank matrices with the pruned singular values masked to 0: the same function, but the matmuls reduce over
# another length, so on some CPUs the last digits differ (seen: Pearson 2.758604 vs 2.758641). Only there is a
# difference this small called rounding; everywhere else evaluate must reproduce the record bit for bit.
ROUNDING_POINTS = 1e-3  # metric points (metrics are percentages)


def recorded_agreement(metrics: dict, recorded: dict, pruned: bool) -> str:
    """'exact' (bit-identical), 'rounding' (pruned adapter, every metric within ROUNDING_POINTS) or 'differs'."""
    if metrics == recorded:
        return "exact"
    close = metrics.keys() == recorded.keys() and all(abs(metrics[k] - recorded[k]) <= ROUNDING_POINTS
                                                      for k in metrics)
    return "rounding" if pruned and close else "differs"


def _print_summary(payload: dict) -> None:
    what = f"{payload['task']} | {payload['method_label']} | {payload['backbone']} | seed {payload['seed']}"
    print(f"{what} | {payload['split']} ({', '.join(f'{k} {v}' for k, v in payload['counts'].items())})")
    if payload["metrics"]:
        print("  " + "  ".join(f"{k} {v:.2f}" for k, v in payload["metrics"].items()))
        choice = payload.get("adapter_choice", "final")
        if f"equals_recorded_{choice}" in payload:
            same = {"exact": "equals", "differs": "DIFFERS FROM",
                    "rounding": f"equals (within float rounding, <= {ROUNDING_POINTS} points: the adapter holds only "
                                "AdaLoRA's pruned ranks)"}[payload[f"agreement_recorded_{choice}"]]
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
