"""Results aggregator (``python -m dcft_lab.report FOLDER``, see ``cli``), split by job:

- ``collect``: reading run records (every results.json under a folder) and choosing which ones a report shows;
- ``stats``: seed statistics: cells, row averages, paired / Welch t-intervals, mean learning curves;
- ``tables``: table.md, table.csv and compare.csv;
- ``figures``: params.png, figure.png and the learning curves;
- ``cli``: ``build_report`` and the command line.

No torch import anywhere in the package (matplotlib and scipy are imported lazily): it must start fast.
"""

from dcft_lab.method_scale import SCALE_RANK_KEY

from .cli import build_report, main
from .collect import (
    DISPLAY_METRICS,
    METRIC_SOURCES,
    TASK_ORDER,
    Collected,
    Run,
    collect_runs,
    display_metrics,
    infer_expected,
    label_pattern,
    labels_matching,
    load_expected,
    missing_cells,
    score_of,
    select_runs,
    sort_tasks,
    update_scale,
)
from .figures import kernel_sweep_size, make_curves, make_figure, make_params_figure, params_figure, select_curves
from .methods import display_label, method_style
from .stats import (
    CONFIDENCE,
    AvgCoverage,
    Cell,
    Comparison,
    Table,
    aggregate,
    avg_coverage,
    chance_level,
    compare_rows,
    compare_seeds,
    mean_curve,
    pick_paper_row,
    row_average,
    seed_curve,
    t_interval,
)
from .tables import (
    COMPARE_COLUMNS,
    CSV_COLUMNS,
    DASH,
    GLUE8,
    compare_csv_rows,
    csv_rows,
    fmt_distinct,
    fmt_lr,
    fmt_scale,
    format_cell,
    paper_average,
    render_markdown,
)

__all__ = [
    "CONFIDENCE", "COMPARE_COLUMNS", "CSV_COLUMNS", "DASH", "DISPLAY_METRICS", "GLUE8", "METRIC_SOURCES",
    "SCALE_RANK_KEY", "TASK_ORDER", "AvgCoverage", "Cell", "Collected", "Comparison", "Run", "Table", "aggregate",
    "avg_coverage", "build_report", "chance_level", "collect_runs", "compare_csv_rows", "compare_rows",
    "compare_seeds", "csv_rows", "display_label", "display_metrics", "fmt_distinct", "fmt_lr", "fmt_scale",
    "format_cell", "infer_expected", "kernel_sweep_size", "label_pattern", "labels_matching", "load_expected", "main",
    "make_curves", "make_figure", "make_params_figure", "mean_curve", "method_style", "missing_cells", "paper_average",
    "params_figure", "pick_paper_row", "render_markdown", "row_average", "score_of", "seed_curve", "select_curves",
    "select_runs", "sort_tasks", "t_interval", "update_scale",
]
