"""Seed statistics: per-(method, task) cells of completed runs, their means and spreads, the row average,
paired / Welch t-intervals between two methods, and mean learning curves over seeds.

Standard library only, plus scipy (imported lazily, for t quantiles).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from dcft_lab import paper
from dcft_lab.data.tasks import TASKS

from .collect import Collected, Run, display_metrics, is_number, score_of, sort_tasks

# Where a configuration appears in several paper tables, this order decides which printed number is shown.
TABLE_PREFERENCE = ["table1", "table3", "summarization", "table4", "table5", "table6", "other_backbones"]
# The paper's main backbones, preferred when none of its rows uses our backbone.
BACKBONE_PREFERENCE = ["deberta-v3-base", "bart-large"]
FAMILY_ORDER = ["Full FT", "BitFit", "HAdapter", "PAdapter", "LoRA", "LoRA-FA", "SoRA", "AdaLoRA", "DCFT"]
CONFIDENCE = 0.95
# The avg column averages only tasks where every row with a completed run has at least this many seeds there.
AVG_MIN_SEEDS = 2
# A score this close to the task's chance level counts as at chance (records keep e.g. 68.38235 for 279/408).
AT_CHANCE_TOLERANCE = 0.005


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

    @property
    def at_chance(self) -> bool:
        """Every seed scores the task's chance level (what a constant prediction scores, e.g. MCC 0 on CoLA): a
        collapsed cell, not a tuned result. False when the chance level is not known."""
        chance = chance_level(self.task)
        return bool(self.n) and chance is not None and all(abs(s - chance) < AT_CHANCE_TOLERANCE for s in self.scores)


def chance_level(task: str) -> float | None:
    """The task's chance level on its dev set (TaskSpec.chance_level), None when unknown."""
    spec = TASKS.get(task)
    return spec.chance_level if spec is not None else None


@dataclass
class Table:
    labels: list
    tasks: list
    cells: dict                   # (label, task) -> Cell (only cells with >= 1 completed run or expected)
    backbones: set
    paper_table: str | None
    source: str = "best"          # --metric
    missing: list = field(default_factory=list)   # expected (label, task, seed) with no record at all
    order: list = field(default_factory=list)     # --order: labels whose row order is fixed

    def row_cells(self, label: str) -> list[Cell]:
        return [c for t in self.tasks if (c := self.cells.get((label, t))) is not None]

    def row_runs(self, label: str) -> list[Run]:
        return [r for c in self.row_cells(label) for r in c.runs]


def _most_common(values) -> str:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else ""


def sort_labels(labels, first=()) -> list[str]:
    """``first`` (--order) in its own order, then the rest by method family and natural order."""
    first = [label for label in first if label in labels]

    def key(label: str):
        family = next((i for i, f in enumerate(FAMILY_ORDER) if label == f or label.startswith(f + " ")),
                      len(FAMILY_ORDER))
        natural = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", label) if p]
        return (family, natural)
    return first + sorted((label for label in labels if label not in first), key=key)


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
    labels = sort_labels({k[0] for k in by_cell} | {k[0] for k in n_expected}, order)
    tasks = sort_tasks({k[1] for k in by_cell} | {k[1] for k in n_expected})
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


@dataclass(frozen=True)
class AvgCoverage:
    """What the avg column averages: ``tasks``, the tasks where every row with a completed run has at least
    AVG_MIN_SEEDS completed seeds; ``left_out``, every other task of the table with the reason."""
    tasks: list
    left_out: dict                # task -> why it is not in the average


def avg_coverage(table: Table) -> AvgCoverage:
    rows = [label for label in table.labels if any(c.n for c in table.row_cells(label))]
    tasks, left_out = [], {}
    for task in table.tasks:
        counts = [c.n if (c := table.cells.get((label, task))) is not None else 0 for label in rows]
        none, few = sum(1 for n in counts if n == 0), sorted({n for n in counts if 0 < n < AVG_MIN_SEEDS})
        why = []
        if few:
            seeds = " or ".join(map(str, few))
            rows_few = sum(1 for n in counts if 0 < n < AVG_MIN_SEEDS)
            why.append(f"{seeds} seed{'s' if few != [1] else ''} in {rows_few} row{'s' if rows_few > 1 else ''}")
        if none:
            why.append(f"no completed run in {none} row{'s' if none > 1 else ''}")
        if rows and not why:
            tasks.append(task)
        else:
            left_out[task] = "; ".join(why) or "no completed run"
    return AvgCoverage(tasks=tasks, left_out=left_out)


def row_average(table: Table, label: str, coverage: AvgCoverage | None = None) -> float | None:
    """Mean of the row's task scores over avg_coverage(table).tasks (the same tasks for every row); None when
    there is no such task or the row has no completed run there."""
    tasks = (coverage or avg_coverage(table)).tasks
    cells = [table.cells.get((label, t)) for t in tasks]
    if not cells or any(c is None or c.n == 0 for c in cells):
        return None
    return statistics.fmean(c.score for c in cells)


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided ``confidence`` t-interval of the mean of ``values`` (≥ 2 of them): mean ± t(n−1)·sd/√n."""
    from scipy.stats import t as student_t  # lazily: scipy takes a moment to import

    if len(values) < 2:
        raise ValueError(f"need at least 2 values, got {len(values)}")
    mean = statistics.fmean(values)
    half = student_t.ppf((1 + confidence) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


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
    unpaired: tuple = ()  # paired test: the seeds of either side that have no partner, left out (say so)

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0


def compare_seeds(a: Mapping, b: Mapping, confidence: float = CONFIDENCE) -> Comparison:
    """mean(A) − mean(B) with a two-sided `confidence` t-interval, from per-seed scores {seed: value}.

    Paired when at least 2 seeds are shared: the same seed gives both methods the same data order and head
    initialisation, so differences within a seed cancel that shared noise. Only shared seeds are used (the others
    are returned in ``unpaired``; seeds match by their text, so 6 and "6" pair):
    d_i = a_i − b_i, diff = mean(d), CI = diff ± t(1 − (1 − confidence)/2, m − 1) · sd(d) / √m (sd with ddof=1).
    Otherwise Welch: diff = mean(a) − mean(b), se = √(s_a²/n_a + s_b²/n_b) and Welch–Satterthwaite degrees of
    freedom. Needs ≥ 2 values per side (ValueError otherwise). A zero standard error gives a zero-width interval.
    """
    from scipy.stats import t as student_t  # lazily: scipy takes a moment to import

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 seeds per side, got {len(a)} and {len(b)}")
    quantile = (1 + confidence) / 2
    a, b = {str(k): v for k, v in a.items()}, {str(k): v for k, v in b.items()}
    shared = sorted(set(a) & set(b))
    unpaired: tuple = ()
    if len(shared) >= 2:
        diffs = [float(a[s]) - float(b[s]) for s in shared]
        m = len(diffs)
        diff, df = statistics.fmean(diffs), m - 1
        se = statistics.stdev(diffs) / math.sqrt(m)
        mean_a = statistics.fmean(float(a[s]) for s in shared)
        mean_b = statistics.fmean(float(b[s]) for s in shared)
        test, n_a, n_b = "paired t", m, m
        unpaired = tuple(f"{side} seed {s}" for side, seeds in (("A", a), ("B", b)) for s in sorted(seeds)
                         if s not in shared)
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
                      mean_b=mean_b, n_a=n_a, n_b=n_b, n_pairs=m, unpaired=unpaired)


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


# ---------------------------------------------------------------- learning curves


def seed_curve(run: Run, names: list[str]) -> dict[int, float]:
    """step -> dev score (score_of) of one run's evaluations that carry every displayed metric."""
    points = {}
    for e in run.evaluations:
        metrics = e.get("metrics") if isinstance(e, dict) else None
        if isinstance(metrics, dict) and is_number(e.get("step")) and all(is_number(metrics.get(m)) for m in names):
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
