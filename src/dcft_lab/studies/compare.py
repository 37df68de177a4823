"""Two studies side by side (``compare_with`` in a study spec): what each (row, task) ran at and scored, and how a
pair of rows' gap moved. Written by the later study's reports as ``<name>_vs_<name>.md``.

Only what the run records say: each main-stage cell's learning rate, update scale (alpha / r), fast-factor ratio and
head lr, read from the runs' own configs (so a transferred lr and a per-task lr look different), and the final dev
score per seed. It does not attribute a change to one cause: a row whose point moved on several axes at once says
so, and the write-up decides what the fixed points and pilots can separate.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..method_scale import update_scale
from .scheduler import final_score

DASH = "—"


@dataclass
class CellRuns:
    """The completed main-stage runs of one (row, task): their settings (one value each when they agree) and scores."""

    settings: dict[str, set] = field(default_factory=dict)  # lr / scale / ratio / head_lr -> the values seen
    scores: dict[str, float] = field(default_factory=dict)  # seed -> final dev main metric

    def setting(self, key: str) -> str:
        values = sorted(self.settings.get(key, set()), key=str)
        return "/".join(_g(v) for v in values) if values else DASH


def _g(value) -> str:
    return DASH if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def main_cells(root: Path, stage: str = "main") -> dict[tuple[str, str], CellRuns]:
    """(row, task) -> CellRuns from ``root/<stage>/<task>/<row>/seed*/results.json`` (completed runs only)."""
    cells: dict[tuple[str, str], CellRuns] = {}
    for path in sorted(root.glob(f"{stage}/*/*/seed*/results.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("status") != "completed" or not math.isfinite(value := final_score(rec)):
            continue
        task, row = path.parts[-4], path.parts[-3]
        cfg = rec.get("config") or {}
        optim, method = cfg.get("optim") or {}, cfg.get("method") or {}
        cell = cells.setdefault((row, task), CellRuns())
        lr = optim.get("lr")
        for key, got in (("lr", lr), ("scale", update_scale(method)), ("ratio", optim.get("factor_lr_ratio", 1.0)),
                         ("head_lr", optim.get("head_lr") or lr)):  # before head_lr existed the head trained at lr
            cell.settings.setdefault(key, set()).add(float(got) if isinstance(got, (int, float)) else got)
        cell.scores[str(rec.get("seed"))] = value
    return cells


def _mean_sd(scores: dict[str, float]) -> str:
    if not scores:
        return DASH
    values = list(scores.values())
    sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{sd} (n={len(values)})"


def _moved(old: CellRuns, new: CellRuns) -> str:
    keys = [k for k in ("lr", "scale", "ratio", "head_lr") if old.setting(k) != new.setting(k)]
    return ", ".join(keys) if keys else "nothing"


def _gap(cells: dict, a: str, b: str, task: str) -> str:
    from ..report.stats import compare_seeds

    ca, cb = cells.get((a, task)), cells.get((b, task))
    if ca is None or cb is None or len(ca.scores) < 2 or len(cb.scores) < 2:
        return DASH
    c = compare_seeds(ca.scores, cb.scores)
    pairs = f"{c.n_pairs} pairs" if c.n_pairs else f"{c.n_a} vs {c.n_b}, {c.test}"
    return f"{c.diff:+.2f} [{c.low:+.2f}, {c.high:+.2f}] ({pairs})"


def comparison_markdown(old_root: Path, new_root: Path, old_name: str, new_name: str,
                        gaps: list[tuple[str, str]] = ()) -> str:
    """The two studies' main cells side by side, and each (A, B) pair's per-task gap in both."""
    old, new = main_cells(old_root), main_cells(new_root)
    keys = [k for k in new if k in old]
    lines = [f"# {old_name} vs {new_name}: chosen points and dev scores", "",
             f"Per (row, task) run by both: the settings the main runs recorded (lr, update scale alpha/r, fast-factor "
             f"ratio, head lr; a/b when the seeds differ) and the final dev main metric, mean ± sd over seeds. "
             f"'moved' names every setting that differs: a cell that moved on several axes at once cannot say which "
             f"one moved its score. Sources: `{old_root}/main`, `{new_root}/main`.", "",
             f"| row | task | {old_name}: lr / scale / ratio / head lr | {old_name} dev | {new_name}: lr / scale / ratio "
             f"/ head lr | {new_name} dev | {new_name} − {old_name} | moved |", "|---|---|---|---|---|---|---|---|"]
    for row, task in sorted(keys, key=lambda k: (k[1], k[0])):
        o, n = old[(row, task)], new[(row, task)]
        point = lambda c: " / ".join(c.setting(k) for k in ("lr", "scale", "ratio", "head_lr"))  # noqa: E731
        delta = (f"{statistics.fmean(n.scores.values()) - statistics.fmean(o.scores.values()):+.2f}"
                 if o.scores and n.scores else DASH)
        lines.append(f"| {row} | {task} | {point(o)} | {_mean_sd(o.scores)} | {point(n)} | {_mean_sd(n.scores)} | "
                     f"{delta} | {_moved(o, n)} |")
    if not keys:
        lines.append("| (no (row, task) has completed main runs in both studies yet) |  |  |  |  |  |  |  |")
    for a, b in gaps:
        tasks = sorted({t for r, t in keys if r in (a, b)})
        lines += ["", f"## {a} − {b}, paired by seed (95% t-interval)", "", f"| task | {old_name} | {new_name} |",
                  "|---|---|---|"]
        lines += [f"| {t} | {_gap(old, a, b, t)} | {_gap(new, a, b, t)} |" for t in tasks] or ["| — | — | — |"]
    return "\n".join(lines) + "\n"
