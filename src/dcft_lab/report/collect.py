"""Reading run records: every results.json under a folder, parsed, sorted into completed / failed / running /
corrupt / superseded, and the selections and expected cells that decide what a report shows.

Standard library only (no torch, no matplotlib): the report must start fast.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dcft_lab.data.tasks import TASKS
from dcft_lab.method_scale import update_scale

TASK_ORDER = list(TASKS)   # the task registry's order: GLUE, then SQuAD, summarization, SFT
# A task with several eval sets shows its main metric on each (TaskSpec.headline_metrics: MNLI matched/mismatched);
# its single score (for averages, comparisons and figures) is their mean.
DISPLAY_METRICS = {name: list(spec.headline_metrics) for name, spec in TASKS.items() if len(spec.eval_names) > 1}
# --metric: which per-run summary enters the cells; the text is what table.md says about it.
METRIC_SOURCES = {
    "best": "metrics.best, the best dev-set evaluation of each run (picked on that same dev set, so optimistic)",
    "final": "metrics.final, the last dev-set evaluation of each run (end of training)",
}
REQUIRED_KEYS = ("status", "task", "method_label", "seed")


@dataclass
class Run:
    path: Path
    status: str
    label: str
    task: str
    seed: object
    backbone: str
    main_metric: str
    chosen: dict                  # metrics.best or metrics.final, per --metric
    params: dict
    experiment: str | None
    failure: str
    finished_at: str
    scale: float | None = None    # method_scale.update_scale() of the record's config.method
    method: dict = field(default_factory=dict)        # the record's resolved config.method ({} when absent)
    lr: float | None = None       # config.optim.lr
    evaluations: list = field(default_factory=list)   # the record's [{step, epoch, metrics}]
    epochs: int | None = None     # config.trainer.max_epochs (the budget the lr schedule spans)
    steps: int | None = None      # global_steps: optimizer steps the run made

    @property
    def cell(self) -> tuple:
        return (self.label, self.task, self.seed)


@dataclass
class Collected:
    completed: list = field(default_factory=list)     # Run, one per (label, task, seed)
    failed: list = field(default_factory=list)        # Run (status failed, or completed without its metrics)
    running: list = field(default_factory=list)       # Run
    corrupt: list = field(default_factory=list)       # (path, reason)
    duplicates: list = field(default_factory=list)    # Run, superseded by a later completed run of the same cell
    n_files: int = 0


def display_metrics(task: str, main_metric: str) -> list[str]:
    return DISPLAY_METRICS.get(task, [main_metric])


def score_of(metrics: Mapping, names: list[str]) -> float:
    """The single score of one evaluation: the mean of the displayed metrics (MNLI: (m + mm) / 2)."""
    return statistics.fmean(float(metrics[m]) for m in names)


def _parse_run(path: Path, source: str = "best") -> Run:
    """Raises ValueError with a short reason when the file is not a usable results.json."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if record.get(k) is None]
    if missing:
        raise ValueError(f"missing keys {missing}")
    if not isinstance(record["seed"], (int, str)) or isinstance(record["seed"], bool):
        raise ValueError(f"seed must be an integer or string, got {record['seed']!r}")
    if (record.get("data") or {}).get("eval_source") == "train_holdout":  # a study's pilot run
        raise ValueError("scored on a held-out slice of its training split (a pilot run); expected a dev / test "
                         "set result")
    metrics = record.get("metrics")
    chosen = metrics.get(source) if isinstance(metrics, dict) else None
    params = record.get("params")
    failure = record.get("failure") or {}
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    optim = config.get("optim") if isinstance(config.get("optim"), dict) else {}
    method = config.get("method") if isinstance(config.get("method"), dict) else {}
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    evaluations = record.get("evaluations")
    return Run(path=path, status=str(record["status"]), label=str(record["method_label"]),
               task=str(record["task"]), seed=record["seed"], backbone=str(record.get("backbone") or ""),
               main_metric=str(record.get("main_metric") or ""),
               chosen=chosen if isinstance(chosen, dict) else {},
               params=params if isinstance(params, dict) else {}, experiment=record.get("experiment"),
               failure=str(failure.get("reason", "")) if isinstance(failure, dict) else str(failure),
               finished_at=str(record.get("finished_at") or ""),
               scale=update_scale(method), method=method,
               lr=float(optim["lr"]) if is_number(optim.get("lr")) else None,
               evaluations=evaluations if isinstance(evaluations, list) else [],
               epochs=_whole(trainer.get("max_epochs")), steps=_whole(record.get("global_steps")))


def _whole(value) -> int | None:
    """A positive integer count from a record, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _missing_metrics(run: Run) -> list[str]:
    wanted = display_metrics(run.task, run.main_metric) if run.main_metric else ["<main_metric>"]
    return [m for m in wanted if not is_number(run.chosen.get(m))]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def collect_runs(folder: Path, source: str = "best") -> Collected:
    """Every results.json under `folder`, sorted into completed / failed / running / corrupt."""
    out = Collected()
    latest: dict[tuple, Run] = {}
    for path in sorted(folder.rglob("results.json")):
        out.n_files += 1
        try:
            run = _parse_run(path, source)
        except ValueError as err:
            out.corrupt.append((path, str(err)))
            continue
        if run.status == "completed":
            missing = _missing_metrics(run)
            if missing:
                run.failure = f"completed but metrics.{source} lacks {missing}"
                out.failed.append(run)
                continue
            previous = latest.get(run.cell)
            # A re-run of the same cell replaces the older one instead of counting twice.
            if previous is None or run.finished_at > previous.finished_at:
                if previous is not None:
                    out.duplicates.append(previous)
                latest[run.cell] = run
            else:
                out.duplicates.append(run)
        elif run.status == "failed":
            out.failed.append(run)
        elif run.status == "running":
            out.running.append(run)
        else:
            out.corrupt.append((path, f"unknown status {run.status!r}"))
    out.completed = list(latest.values())
    return out


def parse_task_list(option: str, tasks_csv: str, known: list[str]) -> list[str]:
    wanted = [t.strip() for t in tasks_csv.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in known]
    if unknown or not wanted:
        raise ValueError(f"{option}: unknown task(s) {unknown or wanted}; tasks: {known}")
    return wanted


def label_pattern(option: str, regex: str) -> re.Pattern:
    try:
        return re.compile(regex)
    except re.error as err:
        raise ValueError(f"{option} {regex!r} is not a valid regular expression ({err})") from None


def labels_matching(option: str, regex: str, labels: list[str]) -> list[str]:
    """The ``labels`` that ``regex`` finds (re.search), in their order: the selection of ``option`` (--labels,
    --curves-labels); ValueError when it is not a regular expression or finds none."""
    pattern = label_pattern(option, regex)
    found = [label for label in labels if pattern.search(label)]
    if not found:
        raise ValueError(f"{option} {regex!r} matches no label; labels: {labels}")
    return found


def select_runs(collected: Collected, expected: set[tuple], labels_regex: str | None,
                tasks_csv: str | None) -> tuple[Collected, set[tuple]]:
    """The runs and expected cells of the labels matching ``labels_regex`` (re.search) and of the tasks in
    ``tasks_csv`` (--labels / --tasks); ValueError when a selection matches nothing. Corrupt records are kept:
    which cell they belong to is unknown."""
    if not labels_regex and not tasks_csv:
        return collected, expected
    runs = collected.completed + collected.failed + collected.running + collected.duplicates
    labels = sorted({r.label for r in runs} | {c[0] for c in expected})
    tasks = sort_tasks({r.task for r in runs} | {c[1] for c in expected})
    if labels_regex:
        labels = labels_matching("--labels", labels_regex, labels)
    if tasks_csv:
        tasks = parse_task_list("--tasks", tasks_csv, tasks)

    def keep(items):
        return [r for r in items if r.label in labels and r.task in tasks]

    kept = Collected(completed=keep(collected.completed), failed=keep(collected.failed),
                     running=keep(collected.running), corrupt=collected.corrupt, duplicates=keep(collected.duplicates))
    kept.n_files = sum(map(len, (kept.completed, kept.failed, kept.running, kept.corrupt, kept.duplicates)))
    return kept, {c for c in expected if c[0] in labels and c[1] in tasks}


def load_expected(path: Path) -> set[tuple]:
    """--expect file: a JSON list of {"method_label", "task", "seed"} objects."""
    try:
        grid = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--expect file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--expect file {path} is not valid JSON ({err})") from None
    if not isinstance(grid, list):
        raise ValueError(f"--expect file {path}: expected a JSON list of objects, got {type(grid).__name__}")
    cells = set()
    for item in grid:
        if not isinstance(item, dict) or any(k not in item for k in ("method_label", "task", "seed")):
            raise ValueError(f"--expect file {path}: bad entry {item!r}; expected keys method_label, task, seed")
        cells.add((str(item["method_label"]), str(item["task"]), item["seed"]))
    return cells


def infer_expected(collected: Collected) -> set[tuple]:
    """Cross product of every label, task and seed seen in any readable record."""
    seen = collected.completed + collected.failed + collected.running
    labels = {r.label for r in seen}
    tasks = {r.task for r in seen}
    seeds = {r.seed for r in seen}
    return {(label, task, seed) for label in labels for task in tasks for seed in seeds}


def sort_tasks(tasks) -> list[str]:
    return sorted(tasks, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER), t))


def missing_cells(collected: Collected, expected: set[tuple]) -> list[tuple]:
    """Expected cells with no completed run and no failed/running record (those are listed on their own)."""
    accounted = {r.cell for r in collected.completed + collected.failed + collected.running}
    return sorted((c for c in expected if c not in accounted), key=lambda c: (c[0], c[1], str(c[2])))
