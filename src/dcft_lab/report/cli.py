"""Results aggregator: every results.json under a folder -> table.md, table.csv and figures.

    python -m dcft_lab.report FOLDER [--out DIR] [--expect GRID.json] [--table table1] [--metric best|final]
        [--compare "LABEL A" "LABEL B"]... [--labels REGEX] [--tasks mrpc,stsb] [--order "LABEL"]...
        [--curves-labels REGEX] [--curves-tasks mrpc,stsb] [--curves-name curves.png] [--curves-mark STEP=TEXT]...
        [--note TEXT]...

One row per method label (shown with DCFT's stride spelled out: "DCFT d=8 stride=8 k=1"; records, table.csv,
--compare, --labels and --order keep the recorded "DCFT d=8 s=8 k=1"), one column per task; a cell is `mean ± std (n=N)` (std with ddof=1, none for n=1) over
seeds of the run's main metric, taken from metrics.best (default: the best dev evaluation of each run, chosen on
that same dev set, so optimistic) or metrics.final (`--metric final`: the last evaluation). Columns `scale` (the
effective update scale alpha/r; AdaLoRA alpha/init_r) and `lr` come from each record's resolved config. The
paper's numbers are a separate table below ours (often another backbone: for orientation only). Failed, running,
corrupt and missing runs are listed and never enter a mean. The avg column averages only the tasks where every
row with a completed run has ≥ 2 seeds (the same tasks for every row; table.md says which, and what it left out);
a cell whose every seed scores the task's chance level is marked †. `--labels` / `--tasks` restrict the whole
report (table, comparisons, figures) to some rows and columns; `--order` fixes the row order. A method's colour and
marker come from its label alone (report.methods), the same in every figure of the lab.

Outputs in --out (default FOLDER):
  table.md, table.csv   our table (CSV keeps the paper number and ours − paper per cell), the paper table, the
                        comparisons, and the list of missing/failed runs.
  compare.csv           one row per task and `--compare A B` pair: mean(A) − mean(B) with a 95% t-interval,
                        paired over shared seeds when ≥ 2 seeds are shared, else Welch (see compare_seeds).
  params.png            per task, dev score vs adapter parameters (log x): each seed a dot, the mean a marker,
                        95% t-interval bars from 4 seeds; head-only and the chance level as horizontal lines.
  figure.png            the same panels, plus score vs DCFT kernel size per task when the folder has a sweep.
  curves.png            learning curves (--curves-name): per task, dev score vs optimizer step, each seed a thin
                        line and the mean over seeds a thick one, with a zoom on the last third of steps;
                        --curves-labels / --curves-tasks select, --curves-mark draws a vertical line at a step.
  (figures: see the rules at the top of report/figures.py)

No torch import (stdlib, plus matplotlib and scipy imported lazily): it must start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcft_lab import paper

from . import figures
from .collect import METRIC_SOURCES, collect_runs, infer_expected, load_expected, missing_cells, select_runs
from .stats import Table, aggregate
from .tables import COMPARE_COLUMNS, CSV_COLUMNS, compare_csv_rows, csv_rows, render_markdown, write_csv


def _check_compare(table: Table, compare: list[tuple[str, str]]) -> None:
    for pair in compare:
        unknown = [label for label in pair if label not in table.labels]
        if unknown:
            raise ValueError(f"--compare: unknown label(s) {unknown}; labels: {table.labels}")


def build_report(folder: Path, out: Path, expect: Path | None = None, table_name: str | None = None, *,
                 metric: str = "best", compare: list[tuple[str, str]] = (), labels: str | None = None,
                 tasks: str | None = None, order: list[str] = (), curves_labels: str | None = None,
                 curves_tasks: str | None = None, curves_name: str = "curves.png", curves_marks: list[str] = (),
                 notes: list[str] = ()) -> str:
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
    curve_labels, curve_tasks = figures.select_curves(table, curves_labels, curves_tasks)
    marks = figures.parse_marks(curves_marks)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(table, collected, paper_rows, folder, compare, notes, out)
    (out / "table.md").write_text(markdown, encoding="utf-8")
    write_csv(out / "table.csv", CSV_COLUMNS, csv_rows(table, paper_rows))
    if compare:
        write_csv(out / "compare.csv", COMPARE_COLUMNS, compare_csv_rows(table, compare))
    figures.make_figure(table, out / "figure.png")
    figures.make_params_figure(table, out / "params.png")
    (out / curves_name).parent.mkdir(parents=True, exist_ok=True)
    figures.make_curves(table, out / curves_name, curve_labels, curve_tasks, marks)
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
                        help="row order: the labels given, in this order, come first; repeatable (a method's "
                             "colour and marker come from its label alone)")
    parser.add_argument("--curves-labels", default=None, metavar="REGEX",
                        help="learning curves only for method labels matching REGEX (re.search)")
    parser.add_argument("--curves-tasks", default=None, metavar="T1,T2",
                        help="learning-curve panels only for these tasks (comma-separated)")
    parser.add_argument("--curves-name", default="curves.png", metavar="FILE.png",
                        help="file name of the learning-curve figure in --out (default: curves.png)")
    parser.add_argument("--curves-mark", action="append", default=[], metavar="STEP=TEXT",
                        help="a vertical line at optimizer step STEP in every learning-curve panel, labelled TEXT "
                             "(e.g. '345=end of the 3-epoch runs'); repeatable")
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
                                curves_tasks=args.curves_tasks, curves_name=args.curves_name,
                                curves_marks=args.curves_mark, notes=args.note)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
