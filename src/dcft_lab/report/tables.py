"""Tables: our table (table.md, table.csv), the paper's numbers in their own table, the comparisons
(compare.csv) and the list of missing / failed runs.
"""

from __future__ import annotations

import csv
import os
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from dcft_lab.data.tasks import GLUE_TASKS

from .collect import METRIC_SOURCES, Collected, Run
from .methods import display_label, display_text
from .stats import (
    AVG_MIN_SEEDS,
    CONFIDENCE,
    AvgCoverage,
    Cell,
    Table,
    avg_coverage,
    chance_level,
    compare_rows,
    pick_paper_row,
    row_average,
)

CSV_COLUMNS = ["method_label", "task", "metric", "n", "mean", "std", "paper", "diff",
               "params_adapter", "params_trainable", "n_expected", "paper_backbone", "paper_table",
               "source", "scale", "lr", "avg_tasks"]
COMPARE_COLUMNS = ["label_a", "label_b", "task", "source", "mean_a", "mean_b", "diff", "ci_low", "ci_high",
                   "confidence", "test", "df", "n_a", "n_b", "n_pairs", "unpaired_left_out", "significant"]
DASH = "—"
AT_CHANCE_MARK = "†"
# Task sets a printed paper average covers (used only when per-task paper numbers cannot give the average).
GLUE8 = frozenset(GLUE_TASKS)
PRINTED_AVG_TASKS = {"table4": frozenset(["sst2", "cola", "qnli", "rte", "mrpc", "stsb"])}


def paper_average(table: Table, label: str, paper_rows: list[dict]) -> tuple[float | None, str, str]:
    """Paper average over the tasks our avg column covers (avg_coverage): from per-task paper numbers, else a
    printed average covering exactly these tasks. Returns (value, kind, paper backbone) with kind "" or "printed"."""
    tasks = avg_coverage(table).tasks
    cells = [table.cells.get((label, t)) for t in tasks]
    if cells and all(c is not None for c in cells):
        scores = [c.paper_score() for c in cells]
        if all(s is not None for s in scores):
            return statistics.fmean(scores), "", next(iter(cells[0].paper.values()))["backbone"]
    backbone = next((c.backbone for c in cells if c is not None and c.n), "")
    row = pick_paper_row(paper_rows, label, "avg", "avg", backbone, table.paper_table)
    if row is not None and tasks and PRINTED_AVG_TASKS.get(row["table"], GLUE8) == frozenset(tasks):
        return row["value"], "printed", row["backbone"]
    return None, "", ""



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
    """`mean ± std (n=N)` per displayed metric (MNLI: matched / mismatched); (n/N) when seeds are missing; † when
    every seed scores the task's chance level (Cell.at_chance)."""
    if cell is None:
        return DASH
    if not cell.n:
        return f"{DASH} (0/{cell.n_expected})"
    stats = []
    for m in cell.metrics:
        std = cell.std(m)
        stats.append(f"{cell.mean(m):.2f}" + (f" ± {std:.2f}" if std is not None else ""))
    count = f"({cell.n}/{cell.n_expected})" if cell.n < cell.n_expected else f"(n={cell.n})"
    return " / ".join(stats) + " " + count + (f" {AT_CHANCE_MARK}" if cell.at_chance else "")


def _fmt_lr_scale(run: Run) -> str:
    return (f"lr {DASH if run.lr is None else fmt_lr(run.lr)}, "
            f"scale {DASH if run.scale is None else fmt_scale(run.scale)}")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _our_rows(table: Table, coverage: AvgCoverage) -> tuple[list[list[str]], list[str]]:
    """Rows of our table, and notes about rows whose runs disagree where they should not."""
    rows, notes = [], []
    for label in table.labels:
        row_cells, runs = table.row_cells(label), table.row_runs(label)
        adapter = [v for c in row_cells for v in c.adapter]
        trainable = [v for c in row_cells for v in c.trainable]
        adapter_text = _fmt_params(adapter)
        if len(set(adapter)) > 1:
            notes.append(f"{display_label(label)}: adapter parameter count differs across runs ({adapter_text}); expected identical.")
        trainable_text = _fmt_params(trainable)
        if len(set(trainable)) > 1:
            trainable_text += " (range)"   # task heads differ (e.g. regression vs 2-way vs 3-way)
        avg = row_average(table, label, coverage)
        avg_text = DASH
        if avg is not None:
            averaged = [table.cells[(label, t)] for t in coverage.tasks]
            avg_text = (f"{avg:.2f}" + (" (partial seeds)" if any(c.n < c.n_expected for c in averaged) else "")
                        + (f" {AT_CHANCE_MARK}" if any(c.at_chance for c in averaged) else ""))
        scale = fmt_distinct([r.scale for r in runs], fmt_scale) if runs else DASH
        lr = fmt_distinct([r.lr for r in runs], fmt_lr) if runs else DASH
        cells = [format_cell(table.cells.get((label, t))) for t in table.tasks]
        rows.append([display_label(label), scale, lr, adapter_text, trainable_text] + cells + [avg_text])
    return rows, notes


def avg_legend(table: Table, coverage: AvgCoverage) -> str:
    """What the avg column covers, what it leaves out and why, and what † means where a cell carries it."""
    left = "; ".join(f"{task} ({why})" for task, why in coverage.left_out.items())
    rule = f"the tasks where every row with a completed run has ≥ {AVG_MIN_SEEDS} completed seeds"
    if coverage.tasks:
        text = (f"avg: mean of each row's scores over {', '.join(coverage.tasks)} only"
                + (" (MNLI = (m+mm)/2)" if "mnli" in coverage.tasks else "")
                + f": {rule}, so that every avg covers the same tasks and none averages a one-seed cell"
                + (f"; left out: {left}." if left else " (here every task of the table)."))
    else:
        text = f"avg: {DASH} for every row: no task is one of {rule}" + (f" (left out: {left})." if left else ".")
    at_chance = [c for c in table.cells.values() if c.at_chance]
    if at_chance:
        averaged = any(c.task in coverage.tasks and row_average(table, c.label, coverage) is not None
                       for c in at_chance)
        text += (f" {AT_CHANCE_MARK} every seed scores the task's chance level (what a constant prediction scores): "
                 "a collapsed cell, not a tuned result" + (f"; an avg marked {AT_CHANCE_MARK} includes one" if averaged
                                                          else "") + ".")
    return text


def chance_legend(table: Table) -> str:
    """The chance level of each task of the table whose level is known (TaskSpec.chance_level), or ""."""
    known = []
    for task in table.tasks:
        chance = chance_level(task)
        metric = next((c.metrics for (_, t), c in table.cells.items() if t == task and c.n), [])
        if chance is not None and len(metric) == 1:
            known.append(f"{task} {chance:g} ({metric[0]})")
    if not known:
        return ""
    return ("Chance level of each dev set (what a constant prediction scores: the majority class for accuracy, 0 "
            "for MCC and correlation; dotted lines in the figures): " + ", ".join(known) + ".")


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
        rows = [[display_label(label)] + [cells.get(t, DASH) for t in table.tasks] + [cells.get("avg", DASH)]
                for label, cells in by_backbone[backbone].items()]
        lines += _md_table(["method"] + table.tasks + ["avg"], rows)
        lines += ["", f"Printed values{source}; MNLI: matched / mismatched. Our runs use "
                      f"{', '.join(sorted(table.backbones)) or 'an unknown backbone'}."]
    if printed_avg_used:
        lines.append("‡ the paper's printed average (it has no per-task numbers for this configuration/metric).")
    return lines


def _compare_section(table: Table, label_a: str, label_b: str) -> list[str]:
    shown_a, shown_b = display_label(label_a), display_label(label_b)
    lines = ["", f"## {shown_a} vs {shown_b}", "",
             f"Per task: mean({shown_a}) − mean({shown_b}) of the per-seed score (metric: {table.source}) with a "
             f"{CONFIDENCE:.0%} t-interval; paired over shared seeds when ≥ 2 are shared, else Welch. "
             "Significant = the interval excludes 0.", ""]
    rows = []
    for task, c, why in compare_rows(table, label_a, label_b):
        if c is None:
            rows.append([task, DASH, DASH, DASH, DASH, why])
            continue
        n = f"{c.n_pairs} pairs" if c.n_pairs else f"{c.n_a} vs {c.n_b}"
        if c.unpaired:
            n += f" ({', '.join(c.unpaired)} unpaired, left out)"
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
    coverage = avg_coverage(table)
    rows, notes = _our_rows(table, coverage)
    lines += _md_table(["method", "scale", "lr", "adapter params", "trainable params"] + table.tasks + ["avg"], rows)
    lines.append("")
    lines.append("Cells: mean ± std (ddof=1) over seeds of the main metric; (n=N) seeds, (n/N) when fewer completed "
                 "seeds than expected. MNLI: matched / mismatched. scale: effective update scale alpha/r "
                 f"(AdaLoRA alpha/init_r; {DASH} for head-only); lr: learning rate; several values = the row's runs "
                 "differ. DCFT d: kernel size, stride: the kernels' stride, k: rank.")
    lines += ["", avg_legend(table, coverage)]
    chance = chance_legend(table)
    if chance:
        lines += ["", chance]
    for note in [*notes, *extra_notes]:
        lines += ["", f"Note: {display_text(note)}"]  # a paragraph each, not run into the legend
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
    """One row per (method, task, displayed metric), and an `avg` row per method over avg_coverage's tasks (named
    in its `avg_tasks`). method_label is the label as recorded (the key of --compare and the paper numbers)."""
    rows = []
    coverage = avg_coverage(table)
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
        avg = row_average(table, label, coverage)
        if avg is not None:
            p_avg, _, p_backbone = paper_average(table, label, paper_rows)
            row_cells = [table.cells[(label, t)] for t in coverage.tasks]
            rows.append({"method_label": label, "task": "avg", "metric": "avg",
                         "n": min(c.n for c in row_cells), "mean": f"{avg:.10g}", "std": "",
                         "paper": "" if p_avg is None else f"{p_avg:.10g}",
                         "diff": "" if p_avg is None else f"{avg - p_avg:.10g}",
                         "params_adapter": _fmt_csv_params([v for c in row_cells for v in c.adapter]),
                         "params_trainable": _fmt_csv_params([v for c in row_cells for v in c.trainable]),
                         "n_expected": min(c.n_expected for c in row_cells), "paper_backbone": p_backbone,
                         "paper_table": table.paper_table or "", **row_facts,
                         "avg_tasks": " ".join(coverage.tasks)})
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
                         "unpaired_left_out": " ".join(c.unpaired), "significant": c.significant})
    return rows


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
