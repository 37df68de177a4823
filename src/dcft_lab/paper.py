"""Published numbers (DCFT and AdaLoRA papers) that our tables are compared against.

The data lives in experiments/paper_numbers.csv, one tidy row per (table, backbone, method_label, task, metric).
Values are kept exactly as printed; known inconsistencies are described in the `note` column, never corrected.
No torch import here: the report must start fast.
"""

from __future__ import annotations

import csv
import difflib
import os
from pathlib import Path

ENV_VAR = "DCFT_LAB_PAPER_NUMBERS"
COLUMNS = ("table", "backbone", "method_label", "task", "metric", "value",
           "params_exact", "params_paper", "source", "note")


def default_path() -> Path:
    """The CSV path: $DCFT_LAB_PAPER_NUMBERS if set, else <repo>/experiments/paper_numbers.csv."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    # src/dcft_lab/paper.py -> parents[2] is the repository root (src layout, editable install).
    return Path(__file__).resolve().parents[2] / "experiments" / "paper_numbers.csv"


def load_paper_numbers(path: str | Path | None = None) -> list[dict]:
    """Read the paper-numbers CSV into dicts; `value` is a float, `params_exact` an int or None."""
    csv_path = Path(path) if path is not None else default_path()
    if not csv_path.is_file():
        raise FileNotFoundError(f"paper numbers file not found: {csv_path} "
                                f"(expected experiments/paper_numbers.csv or ${ENV_VAR})")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}; expected {list(COLUMNS)}")
        rows = []
        for line_no, raw in enumerate(reader, start=2):
            row = {key: (raw[key] or "").strip() for key in COLUMNS}
            try:
                row["value"] = float(row["value"])
                row["params_exact"] = int(row["params_exact"]) if row["params_exact"] else None
            except ValueError as err:
                raise ValueError(f"{csv_path}:{line_no}: expected a number in value/params_exact ({err})") from None
            rows.append(row)
    return rows


def matching_rows(rows: list[dict], method_label: str, task: str, metric: str,
                  table: str | None = None, backbone: str | None = None) -> list[dict]:
    """All paper rows for (method_label, task, metric), optionally restricted to one table / backbone."""
    return [r for r in rows
            if r["method_label"] == method_label and r["task"] == task and r["metric"] == metric
            and (table is None or r["table"] == table)
            and (backbone is None or r["backbone"] == backbone)]


def paper_value(rows: list[dict], method_label: str, task: str, metric: str,
                table: str | None = None, backbone: str | None = None) -> float | None:
    """The paper's number for (method_label, task, metric), or None when the paper has none for this task / metric.

    The join is by exact label string, so a label that no row (of `table` / `backbone`, when given) carries is a
    one-line ValueError naming the close labels, not None: a label spelled unlike the CSV's would otherwise read
    as "the paper has no number" and its row would be dropped.
    Without `table`, the same configuration can appear in several tables with different printed values
    (e.g. DCFT d=8 STS-B: 91.56 in Table 1, 91.50 in Table 5); that case raises instead of picking one.
    """
    found = matching_rows(rows, method_label, task, metric, table=table, backbone=backbone)
    values = sorted({r["value"] for r in found})
    if not values:
        check_label(rows, method_label, table=table, backbone=backbone)
        return None
    if len(values) > 1:
        where = sorted({f"{r['table']}/{r['backbone']}={r['value']}" for r in found})
        raise ValueError(f"ambiguous paper value for {method_label!r} {task} {metric}: {where}; "
                         f"pass table= (and backbone=) to choose one")
    return values[0]


def check_label(rows: list[dict], method_label: str, table: str | None = None, backbone: str | None = None) -> None:
    """ValueError (one line, with the close labels) when no paper row (of `table` / `backbone`) has `method_label`."""
    labels = {r["method_label"] for r in rows
              if (table is None or r["table"] == table) and (backbone is None or r["backbone"] == backbone)}
    if method_label in labels:
        return
    where = " and ".join(f"{key} {value!r}" for key, value in (("table", table), ("backbone", backbone)) if value)
    close = difflib.get_close_matches(method_label, sorted(labels), n=3, cutoff=0.6)
    raise ValueError(f"no paper numbers for method_label {method_label!r}{' in ' + where if where else ''}; "
                     + (f"close labels: {', '.join(map(repr, close))}" if close else
                        f"none of its {len(labels)} labels is close"))
