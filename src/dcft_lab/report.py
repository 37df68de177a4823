"""Results aggregator: every results.json under a folder -> table.md, table.csv and figures.

    python -m dcft_lab.report FOLDER [--out DIR] [--expect GRID.json] [--table table1] [--metric best|final]
        [--compare "LABEL A" "LABEL B"]... [--labels REGEX] [--tasks mrpc,stsb] [--order "LABEL"]...
        [--curves-labels REGEX] [--curves-tasks mrpc,stsb] [--curves-name curves.png] [--note TEXT]...

One row per method_label, one column per task; a cell is `mean ± std (n=N)` (std with ddof=1, none for n=1) over
seeds of the run's main metric, taken from metrics.best (default: the best dev evaluation of each run, chosen on
that same dev set, so optimistic) or metrics.final (`--metric final`: the last evaluation). Columns `scale` (the
effective update scale alpha/r; AdaLoRA alpha/init_r) and `lr` come from each record's resolved config. The
paper's numbers are a separate table below ours (often another backbone: for orientation only). Failed, running,
corrupt and missing runs are listed and never enter a mean. `--labels` / `--tasks` restrict the whole report
(table, comparisons, figures) to some rows and columns; `--order` fixes the row order and each label's colour and
marker, so that several reports of one study draw a method alike.

Outputs in --out (default FOLDER):
  table.md, table.csv   our table (CSV keeps the paper number and ours − paper per cell), the paper table, the
                        comparisons, and the list of missing/failed runs.
  compare.csv           one row per task and `--compare A B` pair: mean(A) − mean(B) with a 95% t-interval,
                        paired over shared seeds when ≥ 2 seeds are shared, else Welch (see compare_seeds).
  params.png            mean score over the tasks every method has vs adapter parameters (log x).
  figure.png            the same panel, plus score vs DCFT kernel size when the folder has a kernel sweep.
  curves.png            learning curves (--curves-name): per task, dev score vs optimizer step, the mean over
                        seeds per method label with a ±1 std band; --curves-labels / --curves-tasks select.

No torch import (stdlib, plus matplotlib and scipy imported lazily): it must start fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dcft_lab import paper
from dcft_lab.data.tasks import GLUE_TASKS, TASKS

TASK_ORDER = list(TASKS)   # the task registry's order: GLUE, then SQuAD, summarization, SFT
# MNLI is shown as matched/mismatched; its single score (for averages, comparisons and figures) is their mean.
DISPLAY_METRICS = {"mnli": ["accuracy_m", "accuracy_mm"]}
# --metric: which per-run summary enters the cells; the text is what table.md says about it.
METRIC_SOURCES = {
    "best": "metrics.best, the best dev-set evaluation of each run (picked on that same dev set, so optimistic)",
    "final": "metrics.final, the last dev-set evaluation of each run (end of training)",
}
# Effective scale of the update ΔW = alpha / <this config key>: PEFT LoRA and LoKr scale by alpha / r, AdaLoRA by
# alpha / ranknum (= init_r at the start), DCFT (official code) by alpha / lora_r. Head-only ("none") has no ΔW.
SCALE_RANK_KEY = {"dcft": "r", "lora": "r", "lokr": "r", "adalora": "init_r"}
# Where a configuration appears in several paper tables, this order decides which printed number is shown.
TABLE_PREFERENCE = ["table1", "table3", "summarization", "table4", "table5", "table6", "other_backbones"]
# The paper's main backbones, preferred when none of its rows uses our backbone.
BACKBONE_PREFERENCE = ["deberta-v3-base", "bart-large"]
# Task sets a printed paper average covers (used only when per-task paper numbers cannot give the average).
GLUE8 = frozenset(GLUE_TASKS)
PRINTED_AVG_TASKS = {"table4": frozenset(["sst2", "cola", "qnli", "rte", "mrpc", "stsb"])}
FAMILY_ORDER = ["Full FT", "BitFit", "HAdapter", "PAdapter", "LoRA", "LoRA-FA", "SoRA", "AdaLoRA", "DCFT"]
REQUIRED_KEYS = ("status", "task", "method_label", "seed")
CSV_COLUMNS = ["method_label", "task", "metric", "n", "mean", "std", "paper", "diff",
               "params_adapter", "params_trainable", "n_expected", "paper_backbone", "paper_table",
               "source", "scale", "lr"]
COMPARE_COLUMNS = ["label_a", "label_b", "task", "source", "mean_a", "mean_b", "diff", "ci_low", "ci_high",
                   "confidence", "test", "df", "n_a", "n_b", "n_pairs", "significant"]
CONFIDENCE = 0.95
DASH = "—"


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
    scale: float | None = None    # update_scale() of the record's config.method
    method: dict = field(default_factory=dict)        # the record's resolved config.method ({} when absent)
    lr: float | None = None       # config.optim.lr
    evaluations: list = field(default_factory=list)   # the record's [{step, epoch, metrics}]

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


# ---------------------------------------------------------------- collecting


def display_metrics(task: str, main_metric: str) -> list[str]:
    return DISPLAY_METRICS.get(task, [main_metric])


def score_of(metrics: Mapping, names: list[str]) -> float:
    """The single score of one evaluation: the mean of the displayed metrics (MNLI: (m + mm) / 2)."""
    return statistics.fmean(float(metrics[m]) for m in names)


def update_scale(method_cfg) -> float | None:
    """Effective scale of the adapter update ΔW from a resolved `config.method`: alpha / r for dcft, lora and
    lokr; alpha / init_r for adalora. None for head-only (no update) and when the config lacks the numbers."""
    if not isinstance(method_cfg, dict):
        return None
    rank_key = SCALE_RANK_KEY.get(method_cfg.get("name"))
    alpha, rank = method_cfg.get("alpha"), method_cfg.get(rank_key) if rank_key else None
    if not (_is_number(alpha) and _is_number(rank)) or rank == 0:
        return None
    return alpha / rank


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
    metrics = record.get("metrics")
    chosen = metrics.get(source) if isinstance(metrics, dict) else None
    params = record.get("params")
    failure = record.get("failure") or {}
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    optim = config.get("optim") if isinstance(config.get("optim"), dict) else {}
    method = config.get("method") if isinstance(config.get("method"), dict) else {}
    evaluations = record.get("evaluations")
    return Run(path=path, status=str(record["status"]), label=str(record["method_label"]),
               task=str(record["task"]), seed=record["seed"], backbone=str(record.get("backbone") or ""),
               main_metric=str(record.get("main_metric") or ""),
               chosen=chosen if isinstance(chosen, dict) else {},
               params=params if isinstance(params, dict) else {}, experiment=record.get("experiment"),
               failure=str(failure.get("reason", "")) if isinstance(failure, dict) else str(failure),
               finished_at=str(record.get("finished_at") or ""),
               scale=update_scale(method), method=method,
               lr=float(optim["lr"]) if _is_number(optim.get("lr")) else None,
               evaluations=evaluations if isinstance(evaluations, list) else [])


def _missing_metrics(run: Run) -> list[str]:
    wanted = display_metrics(run.task, run.main_metric) if run.main_metric else ["<main_metric>"]
    return [m for m in wanted if not _is_number(run.chosen.get(m))]


def _is_number(value) -> bool:
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


def _task_list(option: str, tasks_csv: str, known: list[str]) -> list[str]:
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


def select_runs(collected: Collected, expected: set[tuple], labels_regex: str | None,
                tasks_csv: str | None) -> tuple[Collected, set[tuple]]:
    """The runs and expected cells of the labels matching ``labels_regex`` (re.search) and of the tasks in
    ``tasks_csv`` (--labels / --tasks); ValueError when a selection matches nothing. Corrupt records are kept:
    which cell they belong to is unknown."""
    if not labels_regex and not tasks_csv:
        return collected, expected
    runs = collected.completed + collected.failed + collected.running + collected.duplicates
    labels = sorted({r.label for r in runs} | {c[0] for c in expected})
    tasks = _sort_tasks({r.task for r in runs} | {c[1] for c in expected})
    if labels_regex:
        pattern = label_pattern("--labels", labels_regex)
        labels = [label for label in labels if pattern.search(label)]
        if not labels:
            raise ValueError(f"--labels {labels_regex!r} matches no label")
    if tasks_csv:
        tasks = _task_list("--tasks", tasks_csv, tasks)

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


# ---------------------------------------------------------------- paper lookup


def _norm_backbone(name: str) -> str:
    return name.lower().rsplit("/", 1)[-1].replace("_", "-")


def pick_paper_row(rows: list[dict], label: str, task: str, metric: str,
                   backbone: str, table: str | None) -> dict | None:
    """The paper row to show beside our cell: our backbone if the paper has it, else its main backbone."""
    candidates = paper.matching_rows(rows, label, task, metric, table=table)
    if not candidates:
        return None
    same = [r for r in candidates if _norm_backbone(r["backbone"]) == _norm_backbone(backbone)]
    if same:
        candidates = same
    else:
        rank = {b: i for i, b in enumerate(BACKBONE_PREFERENCE)}
        best = min(candidates, key=lambda r: rank.get(r["backbone"], len(rank)))["backbone"]
        candidates = [r for r in candidates if r["backbone"] == best]
    order = {t: i for i, t in enumerate(TABLE_PREFERENCE)}
    return min(candidates, key=lambda r: order.get(r["table"], len(order)))


# ---------------------------------------------------------------- aggregation


@dataclass
class Cell:
    label: str
    task: str
    metrics: list                 # displayed metric names
    runs: list                    # completed Run of this (label, task), one per seed
    n_expected: int
    backbone: str
    paper: dict                   # metric -> paper row (or None)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    @property
    def scores(self) -> list[float]:
        """Per-seed single score (MNLI: (m+mm)/2), aligned with `seeds`."""
        return [score_of(r.chosen, self.metrics) for r in self.runs]

    @property
    def adapter(self) -> list:
        return [r.params["adapter"] for r in self.runs if r.params.get("adapter") is not None]

    @property
    def trainable(self) -> list:
        return [r.params["trainable"] for r in self.runs if r.params.get("trainable") is not None]

    def values(self, metric: str) -> list[float]:
        return [float(r.chosen[metric]) for r in self.runs]

    def mean(self, metric: str) -> float:
        return statistics.fmean(self.values(metric))

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def score(self) -> float:
        return statistics.fmean(self.scores)

    def paper_score(self) -> float | None:
        rows = [self.paper.get(m) for m in self.metrics]
        return statistics.fmean(r["value"] for r in rows) if all(rows) else None


@dataclass
class Table:
    labels: list
    tasks: list
    cells: dict                   # (label, task) -> Cell (only cells with >= 1 completed run or expected)
    backbones: set
    paper_table: str | None
    source: str = "best"          # --metric
    missing: list = field(default_factory=list)   # expected (label, task, seed) with no record at all
    order: list = field(default_factory=list)     # --order: labels whose row order and style are fixed

    def row_cells(self, label: str) -> list[Cell]:
        return [c for t in self.tasks if (c := self.cells.get((label, t))) is not None]

    def row_runs(self, label: str) -> list[Run]:
        return [r for c in self.row_cells(label) for r in c.runs]


def _most_common(values) -> str:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else ""


def _sort_labels(labels, first=()) -> list[str]:
    """``first`` (--order) in its own order, then the rest by method family and natural order."""
    first = [label for label in first if label in labels]

    def key(label: str):
        family = next((i for i, f in enumerate(FAMILY_ORDER) if label == f or label.startswith(f + " ")),
                      len(FAMILY_ORDER))
        natural = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", label) if p]
        return (family, natural)
    return first + sorted((label for label in labels if label not in first), key=key)


def _sort_tasks(tasks) -> list[str]:
    return sorted(tasks, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER), t))


def aggregate(collected: Collected, expected: set[tuple], paper_rows: list[dict],
              paper_table: str | None, source: str = "best", order: list[str] = ()) -> Table:
    by_cell = defaultdict(list)
    for run in collected.completed:
        by_cell[(run.label, run.task)].append(run)
    n_expected = Counter((label, task) for label, task, _ in expected)
    main_of_task = {}
    for run in collected.completed + collected.failed + collected.running:
        if run.main_metric:
            main_of_task.setdefault(run.task, run.main_metric)
    labels = _sort_labels({k[0] for k in by_cell} | {k[0] for k in n_expected}, order)
    tasks = _sort_tasks({k[1] for k in by_cell} | {k[1] for k in n_expected})
    cells = {}
    for label in labels:
        for task in tasks:
            runs = sorted(by_cell.get((label, task), []), key=lambda r: str(r.seed))
            if not runs and (label, task) not in n_expected:
                continue
            main = runs[0].main_metric if runs else main_of_task.get(task, "")
            metrics = display_metrics(task, main)
            # An empty cell is compared as if run on the folder's usual backbone.
            backbone = _most_common(r.backbone for r in runs) or _most_common(r.backbone for r in collected.completed)
            cells[(label, task)] = Cell(
                label=label, task=task, metrics=metrics, runs=runs,
                n_expected=max(n_expected.get((label, task), 0), len(runs)), backbone=backbone,
                paper={m: pick_paper_row(paper_rows, label, task, m, backbone, paper_table) for m in metrics})
    backbones = {r.backbone for r in collected.completed}
    return Table(labels=labels, tasks=tasks, cells=cells, backbones=backbones, paper_table=paper_table,
                 source=source, order=list(order))


def row_average(table: Table, label: str) -> float | None:
    """Mean of the task scores, only when the row has a completed run for every task of the table."""
    cells = [table.cells.get((label, t)) for t in table.tasks]
    if not cells or any(c is None or c.n == 0 for c in cells):
        return None
    return statistics.fmean(c.score for c in cells)


def paper_average(table: Table, label: str, paper_rows: list[dict]) -> tuple[float | None, str, str]:
    """Paper average over this table's tasks: from per-task paper numbers, else a printed average covering
    exactly these tasks. Returns (value, kind, paper backbone) with kind "" or "printed"."""
    cells = [table.cells.get((label, t)) for t in table.tasks]
    if cells and all(c is not None for c in cells):
        scores = [c.paper_score() for c in cells]
        if all(s is not None for s in scores):
            return statistics.fmean(scores), "", next(iter(cells[0].paper.values()))["backbone"]
    backbone = next((c.backbone for c in cells if c is not None and c.n), "")
    row = pick_paper_row(paper_rows, label, "avg", "avg", backbone, table.paper_table)
    if row is not None and PRINTED_AVG_TASKS.get(row["table"], GLUE8) == frozenset(table.tasks):
        return row["value"], "printed", row["backbone"]
    return None, "", ""


def common_tasks(table: Table) -> tuple[list[str], list[str]]:
    """(tasks every label with a completed run has, those labels): what the params figure averages over."""
    labels = [label for label in table.labels if any(c.n for c in table.row_cells(label))]
    tasks = [t for t in table.tasks if labels
             and all((c := table.cells.get((label, t))) is not None and c.n for label in labels)]
    return tasks, labels


def seed_averages(table: Table, label: str, tasks: list[str]) -> list[float]:
    """Per seed, the mean score over `tasks`, for the seeds completed on every one of them."""
    by_seed = [dict(zip(table.cells[(label, t)].seeds, table.cells[(label, t)].scores)) for t in tasks]
    shared = set.intersection(*(set(s) for s in by_seed)) if by_seed else set()
    return [statistics.fmean(s[seed] for s in by_seed) for seed in sorted(shared, key=str)]


# ---------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    diff: float          # mean(A) − mean(B) over the seeds used
    low: float           # confidence interval of diff
    high: float
    test: str            # "paired t" or "Welch t"
    df: float
    mean_a: float
    mean_b: float
    n_a: int             # seeds of A used
    n_b: int
    n_pairs: int         # shared seeds (paired test), 0 for Welch

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0


def compare_seeds(a: Mapping, b: Mapping, confidence: float = CONFIDENCE) -> Comparison:
    """mean(A) − mean(B) with a two-sided `confidence` t-interval, from per-seed scores {seed: value}.

    Paired when at least 2 seeds are shared: the same seed gives both methods the same data order and head
    initialisation, so differences within a seed cancel that shared noise. Only shared seeds are used:
    d_i = a_i − b_i, diff = mean(d), CI = diff ± t(1 − (1 − confidence)/2, m − 1) · sd(d) / √m (sd with ddof=1).
    Otherwise Welch: diff = mean(a) − mean(b), se = √(s_a²/n_a + s_b²/n_b) and Welch–Satterthwaite degrees of
    freedom. Needs ≥ 2 values per side (ValueError otherwise). A zero standard error gives a zero-width interval.
    """
    from scipy.stats import t as student_t  # lazily: scipy takes a moment to import

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 seeds per side, got {len(a)} and {len(b)}")
    quantile = (1 + confidence) / 2
    shared = sorted(set(a) & set(b), key=str)
    if len(shared) >= 2:
        diffs = [float(a[s]) - float(b[s]) for s in shared]
        m = len(diffs)
        diff, df = statistics.fmean(diffs), m - 1
        se = statistics.stdev(diffs) / math.sqrt(m)
        mean_a = statistics.fmean(float(a[s]) for s in shared)
        mean_b = statistics.fmean(float(b[s]) for s in shared)
        test, n_a, n_b = "paired t", m, m
    else:
        xa, xb = [float(v) for v in a.values()], [float(v) for v in b.values()]
        n_a, n_b = len(xa), len(xb)
        mean_a, mean_b = statistics.fmean(xa), statistics.fmean(xb)
        va, vb = statistics.variance(xa) / n_a, statistics.variance(xb) / n_b
        diff, se = mean_a - mean_b, math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)) if se > 0 else float(n_a + n_b - 2)
        test, m = "Welch t", 0
    half = student_t.ppf(quantile, df) * se if se > 0 else 0.0
    return Comparison(diff=diff, low=diff - half, high=diff + half, test=test, df=float(df), mean_a=mean_a,
                      mean_b=mean_b, n_a=n_a, n_b=n_b, n_pairs=m)


def compare_rows(table: Table, label_a: str, label_b: str) -> list[tuple[str, Comparison | None, str]]:
    """Per task of the table: (task, comparison or None, why not) for two labels' per-seed scores. A task where
    either label has no cell (no run and none expected, e.g. an extra row left out of a task) is skipped."""
    out = []
    for task in table.tasks:
        ca, cb = table.cells.get((label_a, task)), table.cells.get((label_b, task))
        if ca is None or cb is None:
            continue
        na, nb = ca.n, cb.n
        if min(ca.n_expected, cb.n_expected) < 2:   # e.g. RTE in the CPU study: one seed by design
            out.append((task, None, f"one seed planned ({ca.n_expected} vs {cb.n_expected}): no interval"))
        elif na < 2 or nb < 2:
            out.append((task, None, f"too few seeds ({na} vs {nb}; need 2 each)"))
        else:
            out.append((task, compare_seeds(dict(zip(ca.seeds, ca.scores)), dict(zip(cb.seeds, cb.scores))),
                        ""))
    return out


# ---------------------------------------------------------------- formatting


def _fmt_int(value: int) -> str:
    return f"{int(value):,}"


def _fmt_params(values: list) -> str:
    unique = sorted(set(values))
    if not unique:
        return DASH
    if len(unique) == 1:
        return _fmt_int(unique[0])
    return f"{_fmt_int(unique[0])}–{_fmt_int(unique[-1])}"


def _fmt_csv_params(values: list) -> str:
    unique = sorted(set(values))
    if len(unique) <= 1:
        return str(unique[0]) if unique else ""
    return f"{unique[0]}-{unique[-1]}"


def fmt_lr(value: float) -> str:
    """1e-3, 3e-4, 2.5e-5: the way learning rates are written in configs and papers."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def fmt_scale(value: float) -> str:
    return f"{value:.4g}"


def fmt_distinct(values: list, fmt) -> str:
    """The distinct values of a row, comma-separated (several = its runs disagree); None shows as —."""
    unique = sorted(set(values), key=lambda v: (v is None, v or 0))
    return ", ".join(DASH if v is None else fmt(v) for v in unique) or DASH


def format_cell(cell: Cell | None) -> str:
    """`mean ± std (n=N)` per displayed metric (MNLI: matched / mismatched); (n/N) when seeds are missing."""
    if cell is None:
        return DASH
    if not cell.n:
        return f"{DASH} (0/{cell.n_expected})"
    stats = []
    for m in cell.metrics:
        std = cell.std(m)
        stats.append(f"{cell.mean(m):.2f}" + (f" ± {std:.2f}" if std is not None else ""))
    count = f"({cell.n}/{cell.n_expected})" if cell.n < cell.n_expected else f"(n={cell.n})"
    return " / ".join(stats) + " " + count


def _fmt_lr_scale(run: Run) -> str:
    return (f"lr {DASH if run.lr is None else fmt_lr(run.lr)}, "
            f"scale {DASH if run.scale is None else fmt_scale(run.scale)}")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _our_rows(table: Table) -> tuple[list[list[str]], list[str]]:
    """Rows of our table, and notes about rows whose runs disagree where they should not."""
    rows, notes = [], []
    for label in table.labels:
        row_cells, runs = table.row_cells(label), table.row_runs(label)
        adapter = [v for c in row_cells for v in c.adapter]
        trainable = [v for c in row_cells for v in c.trainable]
        adapter_text = _fmt_params(adapter)
        if len(set(adapter)) > 1:
            notes.append(f"{label}: adapter parameter count differs across runs ({adapter_text}); expected identical.")
        trainable_text = _fmt_params(trainable)
        if len(set(trainable)) > 1:
            trainable_text += " (range)"   # task heads differ (e.g. regression vs 2-way vs 3-way)
        avg = row_average(table, label)
        avg_text = DASH
        if avg is not None:
            avg_text = f"{avg:.2f}" + (" (partial seeds)" if any(c.n < c.n_expected for c in row_cells) else "")
        scale = fmt_distinct([r.scale for r in runs], fmt_scale) if runs else DASH
        lr = fmt_distinct([r.lr for r in runs], fmt_lr) if runs else DASH
        cells = [format_cell(table.cells.get((label, t))) for t in table.tasks]
        rows.append([label, scale, lr, adapter_text, trainable_text] + cells + [avg_text])
    return rows, notes


def _paper_section(table: Table, paper_rows: list[dict]) -> list[str]:
    """The paper's numbers for our labels and tasks: one table per paper backbone, never mixed into ours."""
    by_backbone: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    printed_avg_used = False
    for label in table.labels:
        for cell in table.row_cells(label):
            rows = [cell.paper[m] for m in cell.metrics]
            if all(rows):
                by_backbone[rows[0]["backbone"]].setdefault(label, {})[cell.task] = \
                    "/".join(f"{r['value']:.2f}" for r in rows)
        value, kind, backbone = paper_average(table, label, paper_rows)
        if value is not None:
            printed_avg_used |= kind == "printed"
            by_backbone[backbone].setdefault(label, {})["avg"] = f"{value:.2f}" + ("‡" if kind else "")
    lines = []
    source = f" ({table.paper_table} of experiments/paper_numbers.csv)" if table.paper_table else \
        " (experiments/paper_numbers.csv)"
    for backbone in sorted(by_backbone):
        lines += ["", f"## Paper, {backbone} (for orientation, not comparable when the backbone differs)", ""]
        rows = [[label] + [cells.get(t, DASH) for t in table.tasks] + [cells.get("avg", DASH)]
                for label, cells in by_backbone[backbone].items()]
        lines += _md_table(["method"] + table.tasks + ["avg"], rows)
        lines += ["", f"Printed values{source}; MNLI: matched / mismatched. Our runs use "
                      f"{', '.join(sorted(table.backbones)) or 'an unknown backbone'}."]
    if printed_avg_used:
        lines.append("‡ the paper's printed average (it has no per-task numbers for this configuration/metric).")
    return lines


def _compare_section(table: Table, label_a: str, label_b: str) -> list[str]:
    lines = ["", f"## {label_a} vs {label_b}", "",
             f"Per task: mean({label_a}) − mean({label_b}) of the per-seed score (metric: {table.source}) with a "
             f"{CONFIDENCE:.0%} t-interval; paired over shared seeds when ≥ 2 are shared, else Welch. "
             "Significant = the interval excludes 0.", ""]
    rows = []
    for task, c, why in compare_rows(table, label_a, label_b):
        if c is None:
            rows.append([task, DASH, DASH, DASH, DASH, why])
            continue
        n = f"{c.n_pairs} pairs" if c.n_pairs else f"{c.n_a} vs {c.n_b}"
        rows.append([task, f"{c.diff:+.2f}", f"[{c.low:+.2f}, {c.high:+.2f}]", n, c.test,
                     "significant" if c.significant else "not significant"])
    return lines + _md_table(["task", "A − B", f"{CONFIDENCE:.0%} CI", "n", "test", "verdict"], rows)


def render_markdown(table: Table, collected: Collected, paper_rows: list[dict], folder: Path,
                    compare: list[tuple[str, str]] = (), extra_notes: list[str] = (), out: Path | None = None) -> str:
    """The report; paths in it are relative to ``out`` (the report's folder), so a committed report reads the same
    in any clone."""
    def shown(path: Path) -> str:
        return str(path) if out is None else os.path.relpath(path, out)

    lines = ["# Results", "", f"Metric: **{table.source}** — {METRIC_SOURCES[table.source]}.", ""]
    rows, notes = _our_rows(table)
    lines += _md_table(["method", "scale", "lr", "adapter params", "trainable params"] + table.tasks + ["avg"], rows)
    lines.append("")
    lines.append("Cells: mean ± std (ddof=1) over seeds of the main metric; (n=N) seeds, (n/N) when fewer completed "
                 "seeds than expected. MNLI: matched / mismatched. scale: effective update scale alpha/r "
                 f"(AdaLoRA alpha/init_r; {DASH} for head-only); lr: learning rate; several values = the row's runs "
                 f"differ. avg: mean over all tasks of the table (MNLI = (m+mm)/2), {DASH} when a task is missing.")
    for note in [*notes, *extra_notes]:
        lines += ["", f"Note: {note}"]  # a paragraph each, not run into the legend
    lines += _paper_section(table, paper_rows)
    for label_a, label_b in compare:
        lines += _compare_section(table, label_a, label_b)
    lines += ["", "## Missing or failed runs", ""]
    lines += _problem_lines(table, collected, shown)
    where = shown(folder)
    lines += ["", f"Provenance: {'this folder' if where == '.' else where} · {collected.n_files} results.json "
                  f"({len(collected.completed)} completed, {len(collected.failed)} failed, "
                  f"{len(collected.running)} running, {len(collected.corrupt)} corrupt, "
                  f"{len(collected.duplicates)} superseded) · generated {datetime.now().isoformat(timespec='seconds')}"]
    return "\n".join(lines) + "\n"


def missing_cells(collected: Collected, expected: set[tuple]) -> list[tuple]:
    """Expected cells with no completed run and no failed/running record (those are listed on their own)."""
    accounted = {r.cell for r in collected.completed + collected.failed + collected.running}
    return sorted((c for c in expected if c not in accounted), key=lambda c: (c[0], c[1], str(c[2])))


def _problem_lines(table: Table, collected: Collected, shown) -> list[str]:
    """The failed / running / corrupt / missing / superseded runs; ``shown`` writes a path as the report shows it."""
    lines = []
    for run in sorted(collected.failed, key=lambda r: str(r.path)):
        lines.append(f"- failed: {run.label} / {run.task} / seed {run.seed}: {run.failure or 'no reason given'} "
                     f"({shown(run.path)})")
    for run in sorted(collected.running, key=lambda r: str(r.path)):
        lines.append(f"- running (not finished): {run.label} / {run.task} / seed {run.seed} ({shown(run.path)})")
    for path, reason in collected.corrupt:
        lines.append(f"- corrupt: {shown(path)}: {reason}")
    for label, task, seed in table.missing:
        lines.append(f"- missing: {label} / {task} / seed {seed} (no results.json)")
    kept = {r.cell: r for r in collected.completed}
    for run in collected.duplicates:
        line = f"- superseded (a later completed run of the same cell is used): {shown(run.path)}"
        other = kept.get(run.cell)
        if other is not None and (other.lr, other.scale) != (run.lr, run.scale):
            # Same label, task and seed but another lr / scale: a sweep, not a re-run; only one of them counts.
            line += (f" — differs from the kept run in lr/scale ({_fmt_lr_scale(run)} vs {_fmt_lr_scale(other)}): "
                     "report each configuration from its own folder")
        lines.append(line)
    return lines or ["None."]


def csv_rows(table: Table, paper_rows: list[dict]) -> list[dict]:
    rows = []
    for label in table.labels:
        runs = table.row_runs(label)
        row_facts = {"source": table.source,
                     "scale": fmt_distinct([r.scale for r in runs], fmt_scale) if runs else "",
                     "lr": fmt_distinct([r.lr for r in runs], fmt_lr) if runs else ""}
        for task in table.tasks:
            cell = table.cells.get((label, task))
            if cell is None or cell.n == 0:
                continue
            for m in cell.metrics:
                p = cell.paper[m]
                std = cell.std(m)
                rows.append({"method_label": label, "task": task, "metric": m, "n": cell.n,
                             "mean": f"{cell.mean(m):.10g}", "std": "" if std is None else f"{std:.10g}",
                             "paper": "" if p is None else p["value"],
                             "diff": "" if p is None else f"{cell.mean(m) - p['value']:.10g}",
                             "params_adapter": _fmt_csv_params(cell.adapter),
                             "params_trainable": _fmt_csv_params(cell.trainable),
                             "n_expected": cell.n_expected,
                             "paper_backbone": "" if p is None else p["backbone"],
                             "paper_table": "" if p is None else p["table"], **row_facts})
        avg = row_average(table, label)
        if avg is not None:
            p_avg, _, p_backbone = paper_average(table, label, paper_rows)
            row_cells = table.row_cells(label)
            rows.append({"method_label": label, "task": "avg", "metric": "avg",
                         "n": min(c.n for c in row_cells), "mean": f"{avg:.10g}", "std": "",
                         "paper": "" if p_avg is None else f"{p_avg:.10g}",
                         "diff": "" if p_avg is None else f"{avg - p_avg:.10g}",
                         "params_adapter": _fmt_csv_params([v for c in row_cells for v in c.adapter]),
                         "params_trainable": _fmt_csv_params([v for c in row_cells for v in c.trainable]),
                         "n_expected": min(c.n_expected for c in row_cells), "paper_backbone": p_backbone,
                         "paper_table": table.paper_table or "", **row_facts})
    return rows


def compare_csv_rows(table: Table, compare: list[tuple[str, str]]) -> list[dict]:
    rows = []
    for label_a, label_b in compare:
        for task, c, _ in compare_rows(table, label_a, label_b):
            if c is None:
                continue
            rows.append({"label_a": label_a, "label_b": label_b, "task": task, "source": table.source,
                         "mean_a": f"{c.mean_a:.10g}", "mean_b": f"{c.mean_b:.10g}", "diff": f"{c.diff:.10g}",
                         "ci_low": f"{c.low:.10g}", "ci_high": f"{c.high:.10g}", "confidence": CONFIDENCE,
                         "test": c.test, "df": f"{c.df:.6g}", "n_a": c.n_a, "n_b": c.n_b, "n_pairs": c.n_pairs,
                         "significant": c.significant})
    return rows


# ---------------------------------------------------------------- figures

MARKERS = "osD^vP*Xh<>"          # 11 markers against 10 colours: label i gets a unique (colour, marker) pair
LINESTYLES = ["-", "--", "-.", ":"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _label_style(table: Table, label: str) -> dict:
    """The same label has the same colour / marker / line style in every figure: its index in --order when it is
    listed there (the same in every report given that order), else after those, its index in the table."""
    order = list(table.order) + [x for x in table.labels if x not in table.order]
    i = order.index(label)
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[(i // 10) % 4]}


def _task_metric_name(table: Table, task: str) -> str:
    metrics = next((c.metrics for (_, t), c in table.cells.items() if t == task and c.n), [])
    return "(" + " + ".join(metrics) + f")/{len(metrics)}" if len(metrics) > 1 else "".join(metrics)


def make_params_figure(table: Table, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5), layout="constrained")
    if _plot_params_panel(ax, table):
        fig.legend(loc="outside right upper", fontsize=8, title="method", title_fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_figure(table: Table, path: Path) -> None:
    """figure.png: the params panel, plus score vs kernel size when the folder holds a DCFT kernel sweep."""
    plt = _pyplot()
    sweep = _kernel_sweep(table)
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(14 if sweep else 7.5, 6.5), squeeze=False,
                             layout="constrained")
    if _plot_params_panel(axes[0][0], table):
        # Below the axes, so that it covers no point; the kernel panel sits to the right.
        axes[0][0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, fontsize=7)
    if sweep:
        _plot_kernel_panel(axes[0][1], sweep, table.source)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_params_panel(ax, table: Table) -> bool:
    """Mean score over the tasks every method has vs adapter parameters (log x); True when a point was drawn.

    A method without adapter parameters (head only) cannot sit on a log axis: it is drawn at x = 1 and as a
    dashed horizontal line, the level an adapter has to beat. Error bars: ±1 std over seeds of the per-seed mean
    score (seeds complete on all those tasks, n ≥ 2)."""
    tasks, labels = common_tasks(table)
    ax.set_title("mean score vs adapter parameters\n" + (
        f"over {', '.join(tasks)} (the tasks every method has); metric: {table.source}" if tasks
        else "no task that every method has"), fontsize=10)
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (log scale)")
    ax.set_ylabel(f"mean score ({table.source}) over {len(tasks)} task(s)")
    ax.grid(True, which="major", alpha=0.3)
    points = {}
    for label in labels if tasks else []:
        cells = [table.cells[(label, t)] for t in tasks]
        adapter = [v for c in cells for v in c.adapter]
        if not adapter:
            print(f"warning: params figure: {label} has no adapter parameter count; not drawn", file=sys.stderr)
            continue
        per_seed = seed_averages(table, label, tasks)
        points[label] = (statistics.median(adapter), statistics.fmean(c.score for c in cells),
                         [statistics.stdev(per_seed)] if len(per_seed) > 1 else None)
    dodge = _dodge({label: x for label, (x, _, _) in points.items()})
    drawn = []
    for label, (x, score, yerr) in points.items():
        style, name = _label_style(table, label), label
        if x <= 0:
            x, name = 1, f"{label} (0 adapter params: drawn at x=1 and dashed)"
            ax.axhline(score, color=style["color"], linestyle="--", linewidth=1)
        drawn.append(x * dodge[label])
        ax.errorbar([drawn[-1]], [score], yerr=yerr, fmt=style["marker"], color=style["color"],
                    markersize=7, capsize=3, label=name)
    if drawn:
        # matplotlib's log autoscale puts the extreme points on the frame (one count: limits that can miss it)
        pad = 3 if max(drawn) / min(drawn) < 2 else 1.6
        ax.set_xlim(min(drawn) / pad, max(drawn) * pad)
    if len(set(dodge.values())) > 1:
        ax.set_xlabel("adapter parameters (log scale; equal counts spread slightly sideways)")
    if not points:
        ax.text(0.5, 0.5, "no completed runs to compare" if not labels else "nothing to draw",
                transform=ax.transAxes, ha="center", va="center")
    return bool(points)


def _dodge(xs: dict[str, float], step_decades: float = 0.04) -> dict[str, float]:
    """Multiplicative x offsets that spread labels with the same parameter count (e.g. initialisation variants)
    side by side around their true x, so that their markers and error bars do not hide each other."""
    groups = defaultdict(list)
    for label, x in xs.items():
        groups[x].append(label)
    return {label: 10 ** (step_decades * (k - (len(group) - 1) / 2))
            for group in groups.values() for k, label in enumerate(group)}


def kernel_sweep_size(method: Mapping) -> int | None:
    """The kernel size d of a resolved `config.method` that belongs on the kernel-size panel: DCFT with stride s = d
    (`stride: null` means s = d), the paper's init and all target matrices; None for any other config. A record
    from before `init` / `targets` existed ran the paper's init on all matrices."""
    d = method.get("kernel_size")
    if method.get("name") != "dcft" or not isinstance(d, int) or isinstance(d, bool):
        return None
    if method.get("stride") not in (None, d) or method.get("init") not in (None, "official"):
        return None
    if method.get("targets") not in (None, "all") or method.get("target_modules"):
        return None
    return d


def _kernel_sweep(table: Table) -> dict:
    """task -> sorted [(kernel size, score)] over cells whose runs' config.method passes kernel_sweep_size (the
    runs of a cell share a label, hence d, s, k, init and targets); empty unless the table has two or more kernel
    sizes (one size is no sweep: its panel would be a lone point)."""
    sweep = defaultdict(list)
    for (_, task), cell in table.cells.items():
        sizes = {kernel_sweep_size(r.method) for r in cell.runs}
        if len(sizes) == 1 and (d := sizes.pop()) is not None:
            sweep[task].append((d, cell.score))
    if len({d for points in sweep.values() for d, _ in points}) < 2:
        return {}
    return {task: sorted(points) for task, points in sweep.items()}


def _plot_kernel_panel(ax, sweep: dict, source: str) -> None:
    for task in _sort_tasks(sweep):
        xs, ys = zip(*sweep[task])
        ax.plot(xs, ys, marker="o", label=task)
    ax.set_xlabel("DCFT kernel size d (stride s = d)")
    ax.set_ylabel(f"score ({source}; MNLI = (m+mm)/2)")
    ax.set_title("score vs kernel size", fontsize=10)
    ax.grid(True, alpha=0.3)
    # Below the axes like the params legend: inside, it would sit on some task's line.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=min(len(sweep), 6), fontsize=8)


def seed_curve(run: Run, names: list[str]) -> dict[int, float]:
    """step -> dev score (score_of) of one run's evaluations that carry every displayed metric."""
    points = {}
    for e in run.evaluations:
        metrics = e.get("metrics") if isinstance(e, dict) else None
        if isinstance(metrics, dict) and _is_number(e.get("step")) and all(_is_number(metrics.get(m)) for m in names):
            points[int(e["step"])] = score_of(metrics, names)
    return points


def mean_curve(curves: list[dict]) -> tuple[list[int], list[float], list[float] | None]:
    """Mean over seeds at the steps that every seed evaluated (no interpolation: each point is a real
    evaluation of every seed), and the std over seeds (ddof=1) when there are ≥ 2 seeds."""
    curves = [c for c in curves if c]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    means = [statistics.fmean(c[s] for c in curves) for s in steps]
    stds = [statistics.stdev(c[s] for c in curves) for s in steps] if len(curves) > 1 else None
    return steps, means, stds


def select_curves(table: Table, labels_regex: str | None, tasks_csv: str | None) -> tuple[list[str], list[str]]:
    """(labels, tasks) of the curves figure, in table order (default: the tasks with ≥ 1 completed run of those
    labels); ValueError when a selection matches nothing."""
    labels = table.labels
    if labels_regex:
        pattern = label_pattern("--curves-labels", labels_regex)
        labels = [label for label in labels if pattern.search(label)]
        if not labels:
            raise ValueError(f"--curves-labels {labels_regex!r} matches no label; labels: {table.labels}")
    if tasks_csv:
        wanted = _task_list("--curves-tasks", tasks_csv, table.tasks)
        return labels, [t for t in table.tasks if t in wanted]
    # By default only tasks with a completed run: a task that is only expected so far would be an empty panel.
    completed = {task for (label, task), cell in table.cells.items() if label in labels and cell.n}
    return labels, [t for t in table.tasks if t in completed]


def make_curves(table: Table, path: Path, labels: list[str], tasks: list[str]) -> None:
    """One panel per task: dev score vs optimizer step, per label the mean over its completed seeds (mean_curve)
    and a ±1 std band when ≥ 2 seeds; one shared legend below the panels, so that it hides no line."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    if not tasks:   # e.g. a folder of corrupt records only: still a figure, saying so
        fig, ax = plt.subplots(figsize=(6.5, 3))
        ax.text(0.5, 0.5, "no completed runs", transform=ax.transAxes, ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    legend_rows = math.ceil(len(labels) / (2 if ncols == 1 else 3))
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.5, 5 * ncols), 3.6 * nrows + 0.25 * legend_rows + 0.8),
                             squeeze=False, layout="constrained")
    handles = {}
    for ax, task in zip(axes.flat, tasks):
        metric = _task_metric_name(table, task)
        ax.set_title(f"{task}: {metric}" if metric else task, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # steps: no "12.5" ticks
        ax.set_ylabel("dev score")
        ax.grid(True, alpha=0.3)
        for label in labels:
            cell = table.cells.get((label, task))
            if cell is None or not cell.n:
                continue
            steps, means, stds = mean_curve([seed_curve(r, cell.metrics) for r in cell.runs])
            if not steps:
                continue
            style = _label_style(table, label)
            (line,) = ax.plot(steps, means, color=style["color"], linestyle=style["linestyle"],
                              marker=style["marker"], markersize=3, linewidth=1.5)
            if stds is not None:
                ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=style["color"], alpha=0.15, linewidth=0)
            handles.setdefault(label, line)
        if not ax.lines:
            ax.text(0.5, 0.5, "no evaluations recorded", transform=ax.transAxes, ha="center", va="center")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle("dev score vs optimizer step (completed runs)\nline: mean over seeds at the steps every seed "
                 "evaluated; band: ±1 std over seeds (n ≥ 2)", fontsize=9)
    if handles:
        ordered = [label for label in labels if label in handles]
        fig.legend([handles[label] for label in ordered], ordered, loc="outside lower center",
                   ncols=min(len(ordered), 2 if ncols == 1 else 3), fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- entry point


def _check_compare(table: Table, compare: list[tuple[str, str]]) -> None:
    for pair in compare:
        unknown = [label for label in pair if label not in table.labels]
        if unknown:
            raise ValueError(f"--compare: unknown label(s) {unknown}; labels: {table.labels}")


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build_report(folder: Path, out: Path, expect: Path | None = None, table_name: str | None = None, *,
                 metric: str = "best", compare: list[tuple[str, str]] = (), labels: str | None = None,
                 tasks: str | None = None, order: list[str] = (), curves_labels: str | None = None,
                 curves_tasks: str | None = None, curves_name: str = "curves.png", notes: list[str] = ()) -> str:
    if metric not in METRIC_SOURCES:
        raise ValueError(f"--metric must be one of {sorted(METRIC_SOURCES)}, got {metric!r}")
    collected = collect_runs(folder, metric)
    expected = load_expected(expect) if expect else infer_expected(collected)
    collected, expected = select_runs(collected, expected, labels, tasks)
    try:
        paper_rows = paper.load_paper_numbers()
    except (FileNotFoundError, ValueError) as err:
        print(f"warning: no paper numbers ({err})", file=sys.stderr)
        paper_rows = []
    if table_name is None:
        # A folder from one experiment names its table in every record.
        experiments = {r.experiment for r in collected.completed if r.experiment}
        known = {r["table"] for r in paper_rows}
        table_name = experiments.pop() if len(experiments) == 1 and experiments <= known else None
    table = aggregate(collected, expected, paper_rows, table_name, metric, order)
    table.missing = missing_cells(collected, expected)
    # Every argument is checked before anything is written: a typo must not leave half a report.
    compare = [tuple(pair) for pair in compare]
    _check_compare(table, compare)
    curve_labels, curve_tasks = select_curves(table, curves_labels, curves_tasks)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(table, collected, paper_rows, folder, compare, notes, out)
    (out / "table.md").write_text(markdown, encoding="utf-8")
    _write_csv(out / "table.csv", CSV_COLUMNS, csv_rows(table, paper_rows))
    if compare:
        _write_csv(out / "compare.csv", COMPARE_COLUMNS, compare_csv_rows(table, compare))
    make_figure(table, out / "figure.png")
    make_params_figure(table, out / "params.png")
    (out / curves_name).parent.mkdir(parents=True, exist_ok=True)
    make_curves(table, out / curves_name, curve_labels, curve_tasks)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcft_lab.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder searched recursively for results.json")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: FOLDER)")
    parser.add_argument("--expect", type=Path, default=None,
                        help="JSON list of {method_label, task, seed} cells expected to be complete")
    parser.add_argument("--table", default=None,
                        help="paper table to compare against (table1, table3, table4, table5, table6, "
                             "summarization); default: the runs' common `experiment`, else the first match")
    parser.add_argument("--metric", choices=sorted(METRIC_SOURCES), default="best",
                        help="per-run number in cells, averages, CSV and figures: metrics.best (best dev "
                             "evaluation, default) or metrics.final (last evaluation)")
    parser.add_argument("--compare", nargs=2, action="append", default=[], metavar=("LABEL_A", "LABEL_B"),
                        help="per-task mean(A) − mean(B) with a 95%% t-interval (paired over shared seeds when "
                             "≥ 2 are shared, else Welch) in table.md and compare.csv; repeatable")
    parser.add_argument("--labels", default=None, metavar="REGEX",
                        help="the whole report (table, comparisons, figures) only for method labels matching REGEX")
    parser.add_argument("--tasks", default=None, metavar="T1,T2",
                        help="the whole report only for these tasks (comma-separated)")
    parser.add_argument("--order", action="append", default=[], metavar="LABEL",
                        help="row order and figure style: the labels given, in this order, come first and keep "
                             "their colour / marker whatever else the report shows; repeatable")
    parser.add_argument("--curves-labels", default=None, metavar="REGEX",
                        help="learning curves only for method labels matching REGEX (re.search)")
    parser.add_argument("--curves-tasks", default=None, metavar="T1,T2",
                        help="learning-curve panels only for these tasks (comma-separated)")
    parser.add_argument("--curves-name", default="curves.png", metavar="FILE.png",
                        help="file name of the learning-curve figure in --out (default: curves.png)")
    parser.add_argument("--note", action="append", default=[], metavar="TEXT",
                        help="a line printed under the table as 'Note: TEXT' (e.g. chance levels); repeatable")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: folder {args.folder} does not exist", file=sys.stderr)
        return 2
    if next(args.folder.rglob("results.json"), None) is None:
        print(f"error: no results.json under {args.folder}", file=sys.stderr)
        return 2
    try:
        markdown = build_report(args.folder, args.out or args.folder, args.expect, args.table,
                                metric=args.metric, compare=args.compare, labels=args.labels, tasks=args.tasks,
                                order=args.order, curves_labels=args.curves_labels,
                                curves_tasks=args.curves_tasks, curves_name=args.curves_name, notes=args.note)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
