"""Figures: score vs adapter parameters (params.png; figure.png adds score vs DCFT kernel size when the folder has
a kernel sweep) and learning curves (curves.png). matplotlib is imported lazily, on the first figure.

Rules every figure follows, so that a reader can trust what it shows:
- one colour / marker / line style per method across every figure of the lab (methods.method_style: from the
  label alone), and the label a reader sees (methods.display_label: DCFT's stride spelled out);
- one panel per task: accuracy, MCC and correlation never share an axis;
- every seed is drawn (dots in score panels, thin lines in learning curves), the mean as a large marker or thick
  line; no ±sd bands. Error bars only where a cell has ≥ MIN_SEEDS_FOR_BARS seeds, and then they are a 95%
  t-interval of the mean, as each figure says;
- reference levels are horizontal lines: head-only (no adapter parameters, so no place on a log x axis: dashed)
  and the task's chance level (dotted, TaskSpec.chance_level). The y axis shows the adapter rows; a reference
  that would stretch it more than ZOOM_MAX_STRETCH-fold is written at the axis edge with its value instead;
- rows with equal adapter parameter counts share their x exactly (distinct colour and marker, no jitter).
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .collect import labels_matching, parse_task_list
from .methods import display_label, method_style
from .stats import CONFIDENCE, Cell, Table, chance_level, mean_curve, seed_curve, t_interval
from .tables import fmt_lr

MIN_SEEDS_FOR_BARS = 4     # below this, the seeds themselves are the spread a reader sees
ZOOM_MAX_STRETCH = 2.5     # a reference line stays on the axis when it stretches the rows' y span at most this much
MIN_Y_SPAN = 2.0           # score points: the y span the stretch rule starts from when the rows nearly agree
CURVE_ZOOM_FROM = 2 / 3    # the zoom panel of a learning curve shows its last third of steps
BARS_TEXT = f"bars (only where a cell has ≥ {MIN_SEEDS_FOR_BARS} seeds): {CONFIDENCE:.0%} t-interval of the mean"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _task_metric_name(table: Table, task: str) -> str:
    metrics = next((c.metrics for (_, t), c in table.cells.items() if t == task and c.n), [])
    return "(" + " + ".join(metrics) + f")/{len(metrics)}" if len(metrics) > 1 else "".join(metrics)


def _adapter_count(cell: Cell) -> float | None:
    return statistics.median(cell.adapter) if cell.adapter else None


def _is_reference(cell: Cell) -> bool:
    """A row without adapter parameters (head only): drawn as a horizontal reference line, not as a point."""
    return bool(cell.adapter) and max(cell.adapter) == 0


@dataclass(frozen=True)
class Reference:
    """A horizontal reference level: ``name`` in the legend, ``text`` at the axis edge when it is off the axis."""
    name: str
    value: float
    style: dict
    text: str


CHANCE_NAME = "chance level (a constant prediction)"


def _chance_reference(task: str) -> list[Reference]:
    chance = chance_level(task)
    if chance is None:
        return []
    return [Reference(CHANCE_NAME, chance, {"color": "black", "linestyle": ":", "linewidth": 1.0},
                      f"chance {chance:g}")]


def _line_reference(label: str, cell: Cell, name: str, linestyle: str | None = None) -> Reference:
    style = method_style(label)
    return Reference(name, cell.score, {"color": style["color"], "linestyle": linestyle or style["linestyle"],
                                        "linewidth": 1.2}, f"{display_label(label)} {cell.score:.2f}")


def _head_references(table: Table, task: str) -> list[Reference]:
    """Rows without adapter parameters (head only) with a completed run on ``task``: their mean as a line."""
    return [_line_reference(label, cell, f"{display_label(label)} (no adapter parameters: mean, a line)")
            for label in table.labels
            if (cell := table.cells.get((label, task))) is not None and cell.n and _is_reference(cell)]


def y_window(values: list[float], references: list[float]) -> tuple[float, float, list[int]]:
    """(low, high, indices of the references left off) of a y axis that shows ``values`` (the rows a panel is
    about) and every reference level that stretches their span at most ZOOM_MAX_STRETCH-fold (nearest first)."""
    if not values:
        values = list(references)
    low, high = min(values), max(values)
    allowed = ZOOM_MAX_STRETCH * max(high - low, MIN_Y_SPAN)
    off = []
    for i in sorted(range(len(references)), key=lambda i: min(abs(references[i] - low), abs(references[i] - high))):
        r = references[i]
        if max(high, r) - min(low, r) <= allowed:
            low, high = min(low, r), max(high, r)
        else:
            off.append(i)
    pad = 0.08 * max(high - low, MIN_Y_SPAN / 2)
    return low - pad, high + pad, sorted(off)


def _draw_references(ax, refs: list[Reference], values: list[float], legend: bool = True,
                     notes: list[tuple[float, str]] = ()) -> None:
    """Set the y window of ``values`` (y_window); draw the references inside it as horizontal lines and write the
    others, with their values, at the axis edge, as well as each of ``notes`` [(value, text)] that is off it."""
    low, high, off = y_window(values, [ref.value for ref in refs])
    ax.set_ylim(low, high)
    for i, ref in enumerate(refs):
        if i not in off:
            ax.axhline(ref.value, zorder=1, label=ref.name if legend else None, **ref.style)
    outside = [(refs[i].value, refs[i].text) for i in off] + [(v, text) for v, text in notes if not low <= v <= high]
    below = [text for v, text in outside if v < low]
    above = [text for v, text in outside if v > high]
    # room for the note at the edge it is written at, so that it hides no point
    ax.set_ylim(low - (0.1 * (high - low) if below else 0), high + (0.1 * (high - low) if above else 0))
    for texts, y, arrow, va in ((below, 0.015, "↓", "bottom"), (above, 0.985, "↑", "top")):
        if texts:
            ax.text(0.01, y, f"{arrow} off the axis: " + "; ".join(texts), transform=ax.transAxes, fontsize=7,
                    va=va, ha="left", color="0.25", bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})


def _draw_cell(ax, x: float, cell: Cell, label: str, size: float = 8) -> None:
    """Each seed as a small dot, the mean as a large marker (and a t-interval bar from MIN_SEEDS_FOR_BARS seeds),
    all at the same x. ``size``: the mean marker's size (smaller for later rows at the same x, so that equal means
    show as nested markers rather than one hiding the other)."""
    style = method_style(label)
    scores = cell.scores
    if len(scores) > 1:
        ax.scatter([x] * len(scores), scores, s=22, color=style["color"], marker=style["marker"], alpha=0.55,
                   linewidths=0, zorder=3)
    if len(scores) >= MIN_SEEDS_FOR_BARS:
        low, high = t_interval(scores)
        ax.errorbar([x], [cell.score], yerr=[[cell.score - low], [high - cell.score]], fmt="none",
                    ecolor=style["color"], elinewidth=1.2, capsize=3, zorder=4)
    ax.plot([x], [cell.score], linestyle="none", marker=style["marker"], color=style["color"], markersize=size,
            markeredgecolor="black", markeredgewidth=0.6, zorder=5, label=display_label(label))
    if cell.at_chance:
        ax.annotate("every seed at chance", (x, cell.score), xytext=(8, -4), textcoords="offset points", fontsize=7,
                    va="top", color=style["color"])


def _seeds_text(cells: list[Cell]) -> str:
    counts = sorted({c.n for c in cells if c.n})
    if not counts:
        return ""
    return f"n={counts[0]}" + (f"–{counts[-1]}" if len(counts) > 1 else "") + (" seeds" if counts[-1] > 1 else " seed")


def _fmt_count(value: float) -> str:
    return f"{value:,.0f}" if value < 1000 else f"{value / 1000:.3g}k"


def _count_ticks(ax, xs) -> None:
    """Log x ticks at the rows' own parameter counts (7.49k, 41.5k, ...), no minor ticks."""
    from matplotlib.ticker import FixedLocator, NullLocator

    xs = sorted(set(xs))
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([_fmt_count(x) for x in xs], fontsize=8)


# ---------------------------------------------------------------- score vs adapter parameters


def params_points(table: Table, task: str) -> dict[str, float]:
    """label -> x (adapter parameter count) of the rows drawn as points on a task's params panel: rows with a
    completed run and adapter parameters, at their exact count (equal counts share an x)."""
    points = {}
    for label in table.labels:
        cell = table.cells.get((label, task))
        if cell is None or not cell.n:
            continue
        x = _adapter_count(cell)
        if x is None:
            print(f"warning: params figure: {label} has no adapter parameter count on {task}; not drawn",
                  file=sys.stderr)
        elif x > 0:
            points[label] = x
    return points


def params_tasks(table: Table) -> list[str]:
    """The tasks with a params panel: those where some row with adapter parameters has a completed run."""
    return [task for task in table.tasks if params_points(table, task)]


def plot_params_panel(ax, table: Table, task: str) -> bool:
    """One task's dev score vs adapter parameters (log x); True when a point was drawn."""
    points = params_points(table, task)
    metric = _task_metric_name(table, task)
    seeds = _seeds_text([table.cells[(label, task)] for label in points])
    ax.set_title((f"{task}: {metric}" if metric else task) + (f" ({seeds})" if seeds else ""), fontsize=10)
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (log scale; ticks at the rows' counts)")
    ax.set_ylabel(f"{metric or 'score'} ({table.source})")
    ax.grid(True, which="major", alpha=0.3)
    values = [s for label in points for s in table.cells[(label, task)].scores]
    span = (max(values) - min(values)) if values else 0.0
    means_at = defaultdict(list)   # x -> means drawn there: a mean equal to one of them gets a smaller marker
    for label, x in points.items():
        score = table.cells[(label, task)].score
        hidden = sum(1 for m in means_at[x] if abs(m - score) <= 0.01 * span)
        _draw_cell(ax, x, table.cells[(label, task)], label, size=max(4.0, 8.5 - 2.5 * hidden))
        means_at[x].append(score)
    _draw_references(ax, _head_references(table, task) + _chance_reference(task), values)
    if points:
        xs = list(points.values())
        # matplotlib's log autoscale puts the extreme points on the frame (one count: limits that can miss it)
        pad = 3 if max(xs) / min(xs) < 2 else 1.6
        ax.set_xlim(min(xs) / pad, max(xs) * pad)
        _count_ticks(ax, xs)
    else:
        ax.text(0.5, 0.5, "no row with adapter parameters", transform=ax.transAxes, ha="center", va="center")
    return bool(points)


def _shared_legend(fig, axes, order: list[str], lines: bool = False) -> None:
    """One legend below the panels: each method once, in table order (its reference line where it is one), then
    the chance level. A method's entry is drawn from its style (a marker, with ``lines`` a line and marker), not
    copied from a panel, where its marker may be smaller."""
    from matplotlib.lines import Line2D

    handles = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    shown = [display_label(label) for label in order]
    for label, name in zip(order, shown):
        if name in handles:
            style = method_style(label)
            handles[name] = Line2D([], [], color=style["color"], marker=style["marker"],
                                   linestyle=style["linestyle"] if lines else "none", linewidth=1.6,
                                   markersize=5 if lines else 8, markeredgecolor=None if lines else "black",
                                   markeredgewidth=0 if lines else 0.6)

    def rank(name: str):
        i = next((i for i, s in enumerate(shown) if name == s or name.startswith(s + " (")), len(shown))
        return (i, name == CHANCE_NAME, name)
    names = sorted(handles, key=rank)
    if names:
        ncols = min(len(names), 3 if fig.get_figwidth() > 8 else 2)
        fig.legend([handles[n] for n in names], names, loc="outside lower center", ncols=ncols, fontsize=8)


def _empty_figure(text: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center")
    ax.set_axis_off()
    return fig


def _score_caption(table: Table) -> str:
    return (f"dev score ({table.source}) vs adapter parameters, one panel per task\n"
            f"large marker: mean over seeds; small dots: each seed; {BARS_TEXT}\n"
            "rows with equal parameter counts share their x; dashed: head only (no adapter parameters); "
            "dotted: chance level")


def params_figure(table: Table, kernels: bool = False):
    """The params panels, one per task; with ``kernels``, a row of score-vs-kernel-size panels below (one per task
    with two or more kernel sizes). Returns the matplotlib figure (not saved)."""
    plt = _pyplot()
    tasks = params_tasks(table)
    sweep = _kernel_cells(table) if kernels else {}
    sweep_tasks = [t for t in table.tasks if len(sweep.get(t, [])) >= 2]
    if not tasks and not sweep_tasks:
        return _empty_figure("no completed runs to compare")
    ncols = min(3, max(len(tasks), len(sweep_tasks)))
    rows_p, rows_k = math.ceil(len(tasks) / ncols), math.ceil(len(sweep_tasks) / ncols)
    fig, axes = plt.subplots(rows_p + rows_k, ncols, figsize=(max(6.5, 4.8 * ncols), 3.7 * (rows_p + rows_k) + 2.0),
                             squeeze=False, layout="constrained")
    grid = [ax for row in axes[:rows_p] for ax in row]
    for ax, task in zip(grid, tasks):
        plot_params_panel(ax, table, task)
    kernel_grid = [ax for row in axes[rows_p:] for ax in row]
    for ax, task in zip(kernel_grid, sweep_tasks):
        _plot_kernel_panel(ax, table, task, sweep[task])
    for ax in grid[len(tasks):] + kernel_grid[len(sweep_tasks):]:
        ax.set_visible(False)
    caption = _score_caption(table)
    if sweep_tasks:
        caption += ("\nlast row: score vs DCFT kernel size d (stride = d, paper init, all matrices); each size at its "
                    "own lr (under its point), so the points are not joined; a LoRA row is a line")
    _caption(fig, caption)
    _shared_legend(fig, list(axes.flat), table.labels)
    return fig


def make_params_figure(table: Table, path: Path) -> None:
    """params.png: dev score vs adapter parameters, one panel per task (params_figure)."""
    _save(params_figure(table), path)


def make_figure(table: Table, path: Path) -> None:
    """figure.png: the params panels, plus score vs kernel size when the folder holds a DCFT kernel sweep."""
    _save(params_figure(table, kernels=True), path)


def _caption(fig, text: str) -> None:
    """The figure's caption as its suptitle, each line wrapped to the figure's width."""
    import textwrap

    width = max(60, int(14 * fig.get_figwidth()))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.splitlines()), fontsize=9)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


# ---------------------------------------------------------------- score vs DCFT kernel size


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


def _kernel_cells(table: Table) -> dict:
    """task -> sorted [(kernel size, cell)] over cells whose runs' config.method passes kernel_sweep_size (the
    runs of a cell share a label, hence d, s, k, init and targets); empty unless the table has two or more kernel
    sizes (one size is no sweep)."""
    sweep = defaultdict(list)
    for (_, task), cell in table.cells.items():
        sizes = {kernel_sweep_size(r.method) for r in cell.runs}
        if len(sizes) == 1 and (d := sizes.pop()) is not None:
            sweep[task].append((d, cell))
    if len({d for points in sweep.values() for d, _ in points}) < 2:
        return {}
    return {task: sorted(points, key=lambda p: p[0]) for task, points in sweep.items()}


def _kernel_sweep(table: Table) -> dict:
    """task -> sorted [(kernel size, mean score)] (see _kernel_cells)."""
    return {task: [(d, cell.score) for d, cell in points] for task, points in _kernel_cells(table).items()}


def _plot_kernel_panel(ax, table: Table, task: str, points: list) -> None:
    metric = _task_metric_name(table, task)
    seeds = _seeds_text([cell for _, cell in points])
    ax.set_title(f"{task}: {metric} vs DCFT kernel size" + (f" ({seeds})" if seeds else ""), fontsize=10)
    ax.set_xlabel("DCFT kernel size d (stride = d)")
    ax.set_ylabel(f"{metric or 'score'} ({table.source})")
    ax.grid(True, alpha=0.3)
    for d, cell in points:
        _draw_cell(ax, d, cell, cell.label)
        lrs = sorted({r.lr for r in cell.runs if r.lr is not None})
        if lrs:
            ax.annotate("lr " + ", ".join(map(fmt_lr, lrs)), (d, cell.score), xytext=(0, -14),
                        textcoords="offset points", ha="center", va="top", fontsize=7)
    sizes = [d for d, _ in points]
    ax.set_xticks(sizes)
    ax.set_xlim(min(sizes) - 1, max(sizes) + 1)
    refs = [_line_reference(label, cell, f"{display_label(label)} (kernel panels: its mean, a dashed line)", "--")
            for label in table.labels if label.startswith("LoRA")
            and (cell := table.cells.get((label, task))) is not None and cell.n]
    refs += _head_references(table, task) + _chance_reference(task)
    _draw_references(ax, refs, [s for _, cell in points for s in cell.scores])


# ---------------------------------------------------------------- learning curves


def select_curves(table: Table, labels_regex: str | None, tasks_csv: str | None) -> tuple[list[str], list[str]]:
    """(labels, tasks) of the curves figure, in table order (default: the tasks with ≥ 1 completed run of those
    labels); ValueError when a selection matches nothing."""
    labels = labels_matching("--curves-labels", labels_regex, table.labels) if labels_regex else table.labels
    if tasks_csv:
        wanted = parse_task_list("--curves-tasks", tasks_csv, table.tasks)
        return labels, [t for t in table.tasks if t in wanted]
    # By default only tasks with a completed run: a task that is only expected so far would be an empty panel.
    completed = {task for (label, task), cell in table.cells.items() if label in labels and cell.n}
    return labels, [t for t in table.tasks if t in completed]


def parse_marks(marks) -> list[tuple[int, str]]:
    """--curves-mark values "STEP=TEXT" -> [(step, text)]; ValueError on a malformed one."""
    out = []
    for mark in marks:
        step, sep, text = str(mark).partition("=")
        if not sep or not step.strip().isdigit():
            raise ValueError(f"--curves-mark {mark!r}: expected STEP=TEXT, e.g. '345=end of the 3-epoch runs'")
        out.append((int(step), text.strip()))
    return out


def _budget(table: Table, labels: list[str], task: str) -> str:
    """The training budget of a task's runs, e.g. "3 epochs, 345 steps" (ranges when the runs differ)."""
    runs = [r for label in labels if (c := table.cells.get((label, task))) is not None for r in c.runs]

    def span(values, unit):
        values = sorted({v for v in values if v is not None})
        if not values:
            return ""
        return f"{values[0]:,}" + (f"–{values[-1]:,}" if len(values) > 1 else "") + f" {unit}"
    return ", ".join(s for s in (span([r.epochs for r in runs], "epochs"), span([r.steps for r in runs], "steps")) if s)


def make_curves(table: Table, path: Path, labels: list[str], tasks: list[str], marks=()) -> None:
    """Per task, dev score vs optimizer step: every seed as a thin line and the mean over seeds (mean_curve) as a
    thick one, in each method's colour; below it, a zoom on the last third of training with y fitted to the
    adapter rows (head-only and the chance level can lie far below them). ``marks``: [(step, text)] drawn as
    vertical lines (e.g. the end of a shorter budget). One shared legend below the panels."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    if not tasks:   # e.g. a folder of corrupt records only: still a figure, saying so
        _save(_empty_figure("no completed runs"), path)
        return
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(max(6.5, 5 * ncols), 5.6 * nrows + 2.4), squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": [3, 2] * nrows})
    for i, task in enumerate(tasks):
        row, col = divmod(i, ncols)
        main, zoom = axes[2 * row][col], axes[2 * row + 1][col]
        metric = _task_metric_name(table, task)
        budget = _budget(table, labels, task)
        main.set_title(f"{task}: {metric}" + (f" ({budget})" if budget else ""), fontsize=10)
        drawn = _plot_curves(main, zoom, table, labels, task)
        for ax in (main, zoom):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # steps: no "12.5" ticks
            ax.grid(True, alpha=0.3)
            ax.set_ylabel(f"{metric or 'dev score'}")
            for step, _ in marks:
                ax.axvline(step, color="0.3", linestyle="-.", linewidth=1)
        zoom.set_xlabel("optimizer step")
        main.set_xlabel("optimizer step", fontsize=8)
        for step, text in marks:
            main.annotate(text, (step, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                          textcoords="offset points", fontsize=7, va="top", color="0.3")
        if not drawn:
            main.text(0.5, 0.5, "no evaluations recorded", transform=main.transAxes, ha="center", va="center")
            zoom.set_visible(False)
    for i in range(len(tasks), nrows * ncols):
        row, col = divmod(i, ncols)
        axes[2 * row][col].set_visible(False)
        axes[2 * row + 1][col].set_visible(False)
    _caption(fig, "dev score vs optimizer step (completed runs)\nthick line: mean over seeds at the steps every seed "
                  "evaluated; thin lines: each seed (no ±sd bands); dotted: chance level\nlower panel of each task: "
                  "its last third of steps, y fitted to the adapter rows (a level off that axis is written at its "
                  "edge)\nthe learning-rate schedule (linear warmup, then linear decay to 0) spans each run's whole "
                  "budget" + "".join(f"; dash-dot line at step {step}: {text}" for step, text in marks))
    _shared_legend(fig, [ax for ax in axes.flat if ax.get_visible()], labels, lines=True)
    _save(fig, path)


def _plot_curves(main, zoom, table: Table, labels: list[str], task: str) -> bool:
    """Draw one task's curves on ``main`` (all steps) and ``zoom`` (the last third); True when a curve was drawn."""
    curves_of = {}
    for label in labels:
        cell = table.cells.get((label, task))
        if cell is not None and cell.n:
            curves = [c for c in (seed_curve(r, cell.metrics) for r in cell.runs) if c]
            if curves:
                curves_of[label] = (cell, curves)
    if not curves_of:
        return False
    last = max(max(c) for _, curves in curves_of.values() for c in curves)
    start = CURVE_ZOOM_FROM * last
    zoom_values, ends = [], {}
    for label, (cell, curves) in curves_of.items():
        style = method_style(label)
        steps, means, _ = mean_curve(curves)
        for ax in (main, zoom):
            for curve in curves:
                xs = sorted(curve)
                ax.plot(xs, [curve[s] for s in xs], color=style["color"], linestyle=style["linestyle"],
                        linewidth=0.7, alpha=0.35, zorder=2)
            ax.plot(steps, means, color=style["color"], linestyle=style["linestyle"], marker=style["marker"],
                    markersize=3, linewidth=1.6, zorder=3, label=display_label(label) if ax is main else None)
        if _is_reference(cell):
            ends[label] = means[-1] if means else None
        else:
            zoom_values += [c[s] for c in curves for s in c if s >= start]
    chance = _chance_reference(task)
    _draw_references(main, chance, [v for _, curves in curves_of.values() for c in curves for v in c.values()])
    zoom.set_xlim(start - 0.02 * last, last + 0.02 * last)
    # rows without adapter parameters (head only) are curves, not lines: where they run below (above) the zoom,
    # their last mean is written at its edge like an off-axis reference
    _draw_references(zoom, chance, zoom_values or list(main.get_ylim()), legend=False,
                     notes=[(end, f"{display_label(label)} {end:.2f} (last)") for label, end in ends.items()
                            if end is not None])
    low, high = zoom.get_ylim()
    zoom.set_ylim(low, high + 0.12 * (high - low))   # headroom for the label below, over no curve
    zoom.text(0.99, 0.97, "zoom: last third of steps", transform=zoom.transAxes, ha="right", va="top", fontsize=7,
              color="0.25", bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
    return True

