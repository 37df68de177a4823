"""Results aggregator: every results.json under a folder -> table.md, table.csv, figure.png.

    python -m dcft_lab.report FOLDER [--out DIR] [--expect GRID.json] [--table table1]

One row per method_label, one column per task; a cell is mean ± std (ddof=1) over seeds of the run's main metric
from metrics.best, shown beside the paper's number and the difference ours − paper. Failed, running, corrupt and
missing runs are listed and never enter a mean. No torch import (only stdlib + matplotlib, lazily): it must start fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dcft_lab import paper

TASK_ORDER = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte",
              "squad_v1", "squad_v2", "xsum", "cnn_dailymail"]
# MNLI is shown as matched/mismatched; its single score (for averages and figures) is their mean.
DISPLAY_METRICS = {"mnli": ["accuracy_m", "accuracy_mm"]}
# Where a configuration appears in several paper tables, this order decides which printed number is shown.
TABLE_PREFERENCE = ["table1", "table3", "summarization", "table4", "table5", "table6", "other_backbones"]
# The paper's main backbones, preferred when none of its rows uses our backbone.
BACKBONE_PREFERENCE = ["deberta-v3-base", "bart-large"]
# Task sets a printed paper average covers (used only when per-task paper numbers cannot give the average).
GLUE8 = frozenset(["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"])
PRINTED_AVG_TASKS = {"table4": frozenset(["sst2", "cola", "qnli", "rte", "mrpc", "stsb"])}
FAMILY_ORDER = ["Full FT", "BitFit", "HAdapter", "PAdapter", "LoRA", "AdaLoRA", "DCFT"]
DCFT_LABEL = re.compile(r"^DCFT d=(\d+) s=(\d+) k=(\d+)(?: \[(.+)\])?$")
REQUIRED_KEYS = ("status", "task", "method_label", "seed")
CSV_COLUMNS = ["method_label", "task", "metric", "n", "mean", "std", "paper", "diff",
               "params_adapter", "params_trainable", "n_expected", "paper_backbone", "paper_table"]
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
    best: dict
    params: dict
    experiment: str | None
    failure: str
    finished_at: str

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


def _parse_run(path: Path) -> Run:
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
    best = metrics.get("best") if isinstance(metrics, dict) else None
    params = record.get("params")
    failure = record.get("failure") or {}
    return Run(path=path, status=str(record["status"]), label=str(record["method_label"]),
               task=str(record["task"]), seed=record["seed"], backbone=str(record.get("backbone") or ""),
               main_metric=str(record.get("main_metric") or ""),
               best=best if isinstance(best, dict) else {},
               params=params if isinstance(params, dict) else {}, experiment=record.get("experiment"),
               failure=str(failure.get("reason", "")) if isinstance(failure, dict) else str(failure),
               finished_at=str(record.get("finished_at") or ""))


def _missing_metrics(run: Run) -> list[str]:
    wanted = display_metrics(run.task, run.main_metric) if run.main_metric else ["<main_metric>"]
    return [m for m in wanted if not _is_number(run.best.get(m))]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def collect_runs(folder: Path) -> Collected:
    """Every results.json under `folder`, sorted into completed / failed / running / corrupt."""
    out = Collected()
    latest: dict[tuple, Run] = {}
    for path in sorted(folder.rglob("results.json")):
        out.n_files += 1
        try:
            run = _parse_run(path)
        except ValueError as err:
            out.corrupt.append((path, str(err)))
            continue
        if run.status == "completed":
            missing = _missing_metrics(run)
            if missing:
                run.failure = f"completed but metrics.best lacks {missing}"
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
    values: dict                  # metric -> list of per-seed values
    scores: list                  # per-seed single score (MNLI: (m+mm)/2)
    n_expected: int
    backbone: str
    paper: dict                   # metric -> paper row (or None)
    adapter: list
    trainable: list

    @property
    def n(self) -> int:
        return len(self.scores)

    def mean(self, metric: str) -> float:
        return statistics.fmean(self.values[metric])

    def std(self, metric: str) -> float | None:
        return statistics.stdev(self.values[metric]) if len(self.values[metric]) > 1 else None

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
    missing: list = field(default_factory=list)   # expected (label, task, seed) with no record at all


def _most_common(values) -> str:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else ""


def _sort_labels(labels) -> list[str]:
    def key(label: str):
        family = next((i for i, f in enumerate(FAMILY_ORDER) if label == f or label.startswith(f + " ")),
                      len(FAMILY_ORDER))
        natural = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", label) if p]
        return (family, natural)
    return sorted(labels, key=key)


def _sort_tasks(tasks) -> list[str]:
    return sorted(tasks, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER), t))


def aggregate(collected: Collected, expected: set[tuple], paper_rows: list[dict],
              paper_table: str | None) -> Table:
    by_cell = defaultdict(list)
    for run in collected.completed:
        by_cell[(run.label, run.task)].append(run)
    n_expected = Counter((label, task) for label, task, _ in expected)
    main_of_task = {}
    for run in collected.completed + collected.failed + collected.running:
        if run.main_metric:
            main_of_task.setdefault(run.task, run.main_metric)
    labels = _sort_labels({k[0] for k in by_cell} | {k[0] for k in n_expected})
    tasks = _sort_tasks({k[1] for k in by_cell} | {k[1] for k in n_expected})
    cells = {}
    for label in labels:
        for task in tasks:
            runs = by_cell.get((label, task), [])
            if not runs and (label, task) not in n_expected:
                continue
            main = runs[0].main_metric if runs else main_of_task.get(task, "")
            metrics = display_metrics(task, main)
            # An empty cell is compared as if run on the folder's usual backbone.
            backbone = _most_common(r.backbone for r in runs) or _most_common(r.backbone for r in collected.completed)
            cells[(label, task)] = Cell(
                label=label, task=task, metrics=metrics,
                values={m: [float(r.best[m]) for r in runs] for m in metrics},
                scores=[statistics.fmean(float(r.best[m]) for m in metrics) for r in runs],
                n_expected=max(n_expected.get((label, task), 0), len(runs)), backbone=backbone,
                paper={m: pick_paper_row(paper_rows, label, task, m, backbone, paper_table) for m in metrics},
                adapter=[r.params.get("adapter") for r in runs if r.params.get("adapter") is not None],
                trainable=[r.params.get("trainable") for r in runs if r.params.get("trainable") is not None])
    backbones = {r.backbone for r in collected.completed}
    return Table(labels=labels, tasks=tasks, cells=cells, backbones=backbones, paper_table=paper_table)


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


def row_average_partial(table: Table, label: str) -> tuple[float | None, int]:
    """Mean over the tasks the row does have (for the figure only, which says so)."""
    scores = [c.score for t in table.tasks if (c := table.cells.get((label, t))) is not None and c.n]
    return (statistics.fmean(scores), len(scores)) if scores else (None, 0)


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


def _paper_mark(row: dict | None, cell: Cell) -> str:
    return "†" if row is not None and _norm_backbone(row["backbone"]) != _norm_backbone(cell.backbone) else ""


def format_cell(cell: Cell | None) -> str:
    if cell is None:
        return DASH
    parts = []
    if cell.n:
        stats = []
        for m in cell.metrics:
            std = cell.std(m)
            stats.append(f"{cell.mean(m):.2f}" + (f" ± {std:.2f}" if std is not None else ""))
        count = f"({cell.n}/{cell.n_expected})" if cell.n < cell.n_expected else f"(n={cell.n})"
        parts.append(" / ".join(stats) + " " + count)
    else:
        parts.append(f"{DASH} (0/{cell.n_expected})")
    paper_rows = [cell.paper[m] for m in cell.metrics]
    if all(paper_rows):
        mark = _paper_mark(paper_rows[0], cell)
        parts.append(f"paper{mark} " + "/".join(f"{r['value']:.2f}" for r in paper_rows))
        if cell.n:
            parts.append("Δ " + "/".join(f"{cell.mean(m) - cell.paper[m]['value']:+.2f}" for m in cell.metrics))
    return " · ".join(parts)


def render_markdown(table: Table, collected: Collected, paper_rows: list[dict], folder: Path) -> str:
    lines = ["# Results", ""]
    header = ["method", "adapter params", "trainable params"] + table.tasks + ["avg"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    notes = []
    printed_avg_used = False
    for label in table.labels:
        row_cells = [c for t in table.tasks if (c := table.cells.get((label, t))) is not None]
        adapter = [v for c in row_cells for v in c.adapter]
        trainable = [v for c in row_cells for v in c.trainable]
        adapter_text = _fmt_params(adapter)
        if len(set(adapter)) > 1:
            notes.append(f"{label}: adapter parameter count differs across runs ({adapter_text}); expected identical.")
        trainable_text = _fmt_params(trainable)
        if len(set(trainable)) > 1:
            trainable_text += " (range)"
        avg = row_average(table, label)
        p_avg, kind, p_backbone = paper_average(table, label, paper_rows)
        avg_parts = [DASH]
        if avg is not None:
            partial = any(c.n < c.n_expected for c in row_cells)
            avg_parts = [f"{avg:.2f}" + (" (partial seeds)" if partial else "")]
        if p_avg is not None:
            printed_avg_used |= kind == "printed"
            mark = "†" if table.backbones and _norm_backbone(p_backbone) not in {
                _norm_backbone(b) for b in table.backbones} else ""
            avg_parts.append(f"paper{mark}{'‡' if kind else ''} {p_avg:.2f}")
            if avg is not None:
                avg_parts.append(f"Δ {avg - p_avg:+.2f}")
        cells = [format_cell(table.cells.get((label, t))) for t in table.tasks]
        lines.append("| " + " | ".join([label, adapter_text, trainable_text] + cells + [" · ".join(avg_parts)]) + " |")
    lines.append("")
    lines.append("Cells: mean ± std (ddof=1) over seeds of the main metric (best evaluation); (n=N) seeds, "
                 "(n/N) when fewer completed seeds than expected. MNLI: matched / mismatched. avg: mean over all "
                 f"tasks of the table (MNLI = (m+mm)/2), {DASH} when a task is missing. Δ = ours − paper.")
    paper_backbones = sorted({r["backbone"] for c in table.cells.values() for r in c.paper.values() if r}
                             - {b for b in table.backbones})
    if paper_backbones:
        ours = ", ".join(sorted(table.backbones)) or "unknown"
        lines.append(f"† paper number on {', '.join(paper_backbones)}; our runs use {ours}: "
                     "a different backbone, so compare trends, not values.")
    if printed_avg_used:
        lines.append("‡ the paper's printed average (it has no per-task numbers for this configuration/metric).")
    if table.paper_table:
        lines.append(f"Paper numbers from {table.paper_table} of experiments/paper_numbers.csv.")
    for note in notes:
        lines.append(f"Note: {note}")
    lines += ["", "## Missing or failed runs", ""]
    lines += _problem_lines(table, collected)
    lines += ["", f"Provenance: {folder} · {collected.n_files} results.json "
                  f"({len(collected.completed)} completed, {len(collected.failed)} failed, "
                  f"{len(collected.running)} running, {len(collected.corrupt)} corrupt, "
                  f"{len(collected.duplicates)} superseded) · generated {datetime.now().isoformat(timespec='seconds')}"]
    return "\n".join(lines) + "\n"


def missing_cells(collected: Collected, expected: set[tuple]) -> list[tuple]:
    """Expected cells with no completed run and no failed/running record (those are listed on their own)."""
    accounted = {r.cell for r in collected.completed + collected.failed + collected.running}
    return sorted((c for c in expected if c not in accounted), key=lambda c: (c[0], c[1], str(c[2])))


def _problem_lines(table: Table, collected: Collected) -> list[str]:
    lines = []
    for run in sorted(collected.failed, key=lambda r: str(r.path)):
        lines.append(f"- failed: {run.label} / {run.task} / seed {run.seed}: {run.failure or 'no reason given'} "
                     f"({run.path})")
    for run in sorted(collected.running, key=lambda r: str(r.path)):
        lines.append(f"- running (not finished): {run.label} / {run.task} / seed {run.seed} ({run.path})")
    for path, reason in collected.corrupt:
        lines.append(f"- corrupt: {path}: {reason}")
    for label, task, seed in table.missing:
        lines.append(f"- missing: {label} / {task} / seed {seed} (no results.json)")
    for run in collected.duplicates:
        lines.append(f"- superseded (a later completed run of the same cell is used): {run.path}")
    return lines or ["None."]


def csv_rows(table: Table, paper_rows: list[dict]) -> list[dict]:
    rows = []
    for label in table.labels:
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
                             "paper_table": "" if p is None else p["table"]})
        avg = row_average(table, label)
        if avg is not None:
            p_avg, _, p_backbone = paper_average(table, label, paper_rows)
            row_cells = [table.cells[(label, t)] for t in table.tasks]
            rows.append({"method_label": label, "task": "avg", "metric": "avg",
                         "n": min(c.n for c in row_cells), "mean": f"{avg:.10g}", "std": "",
                         "paper": "" if p_avg is None else f"{p_avg:.10g}",
                         "diff": "" if p_avg is None else f"{avg - p_avg:.10g}",
                         "params_adapter": _fmt_csv_params([v for c in row_cells for v in c.adapter]),
                         "params_trainable": _fmt_csv_params([v for c in row_cells for v in c.trainable]),
                         "n_expected": min(c.n_expected for c in row_cells), "paper_backbone": p_backbone,
                         "paper_table": table.paper_table or ""})
    return rows


# ---------------------------------------------------------------- figure


def make_figure(table: Table, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = _kernel_sweep(table)
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(13 if sweep else 7, 5), squeeze=False)
    _plot_params_panel(axes[0][0], table)
    if sweep:
        _plot_kernel_panel(axes[0][1], sweep)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_params_panel(ax, table: Table) -> None:
    all_tasks = True
    for label in table.labels:
        score, n_tasks = row_average_partial(table, label)
        adapter = [v for t in table.tasks if (c := table.cells.get((label, t))) for v in c.adapter]
        if score is None or not adapter or statistics.median(adapter) <= 0:
            continue  # log axis: no point for methods without adapter parameters (e.g. full fine-tuning)
        all_tasks &= n_tasks == len(table.tasks)
        x = statistics.median(adapter)
        ax.scatter([x], [score], color="C0")
        partial = "" if n_tasks == len(table.tasks) else f" ({n_tasks}/{len(table.tasks)} tasks)"
        ax.annotate(label + partial, (x, score), textcoords="offset points", xytext=(4, 4), fontsize=7)
        tasks = [t for t in table.tasks if (c := table.cells.get((label, t))) is not None and c.n]
        paper_point = _paper_point(table, label, tasks)
        if paper_point is not None:
            ax.scatter([paper_point[0]], [paper_point[1]], facecolors="none", edgecolors="C3")
            ax.annotate(f"{label} (paper)", paper_point, textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="C3")
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (log scale); hollow red = paper, its own backbone")
    ax.set_ylabel("mean score over all tasks" if all_tasks
                  else "mean score over the tasks each method has (not all tasks)")
    ax.set_title("(a) score vs adapter parameters")


def _paper_point(table: Table, label: str, tasks: list[str]) -> tuple[float, float] | None:
    rows = [r for t in tasks for r in table.cells[(label, t)].paper.values()]
    scores = [table.cells[(label, t)].paper_score() for t in tasks]
    exact = {r["params_exact"] for r in rows if r is not None}
    if not tasks or any(s is None for s in scores) or len(exact) != 1 or None in exact:
        return None
    return float(exact.pop()), statistics.fmean(scores)


def _kernel_sweep(table: Table) -> dict:
    """task -> sorted [(kernel size, score)] over DCFT labels with stride == kernel and all targets."""
    sweep = defaultdict(list)
    for (label, task), cell in table.cells.items():
        match = DCFT_LABEL.match(label)
        if match and match.group(1) == match.group(2) and match.group(4) is None and cell.n:
            sweep[task].append((int(match.group(1)), cell.score))
    return {task: sorted(points) for task, points in sweep.items()}


def _plot_kernel_panel(ax, sweep: dict) -> None:
    for task in _sort_tasks(sweep):
        xs, ys = zip(*sweep[task])
        ax.plot(xs, ys, marker="o", label=task)
    ax.set_xlabel("DCFT kernel size d (stride s = d)")
    ax.set_ylabel("score (main metric; MNLI = (m+mm)/2)")
    ax.set_title("(b) score vs kernel size")
    ax.legend(fontsize=7)


# ---------------------------------------------------------------- entry point


def build_report(folder: Path, out: Path, expect: Path | None = None, table_name: str | None = None) -> str:
    collected = collect_runs(folder)
    expected = load_expected(expect) if expect else infer_expected(collected)
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
    table = aggregate(collected, expected, paper_rows, table_name)
    table.missing = missing_cells(collected, expected)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(table, collected, paper_rows, folder)
    (out / "table.md").write_text(markdown, encoding="utf-8")
    with (out / "table.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(csv_rows(table, paper_rows))
    make_figure(table, out / "figure.png")
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
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: folder {args.folder} does not exist", file=sys.stderr)
        return 2
    if next(args.folder.rglob("results.json"), None) is None:
        print(f"error: no results.json under {args.folder}", file=sys.stderr)
        return 2
    try:
        markdown = build_report(args.folder, args.out or args.folder, args.expect, args.table)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
