"""Figures: score vs adapter parameters (params.png, figure.png), score vs DCFT kernel size (figure.png) and
learning curves (curves.png). matplotlib is imported lazily, on the first figure.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from .collect import label_pattern, parse_task_list, sort_tasks
from .stats import Table, common_tasks, mean_curve, seed_averages, seed_curve

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
    for task in sort_tasks(sweep):
        xs, ys = zip(*sweep[task])
        ax.plot(xs, ys, marker="o", label=task)
    ax.set_xlabel("DCFT kernel size d (stride s = d)")
    ax.set_ylabel(f"score ({source}; MNLI = (m+mm)/2)")
    ax.set_title("score vs kernel size", fontsize=10)
    ax.grid(True, alpha=0.3)
    # Below the axes like the params legend: inside, it would sit on some task's line.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=min(len(sweep), 6), fontsize=8)


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
        wanted = parse_task_list("--curves-tasks", tasks_csv, table.tasks)
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
