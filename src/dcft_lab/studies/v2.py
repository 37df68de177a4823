"""Study protocol v2 (``protocol: v2`` in a grid's study spec): per-task, two-axis pilots with a tolerance rule.

What differs from the v1 rules of ``study.Study`` (one MRPC pilot, best score wins, lr edges only):

1. **Per task**: every (row, task) of a main stage has its own pilot on a held-out slice of *that task's* training
   split (``pilot.tasks``: the overrides that hold the slice out); the dev sets the tables report are never read.
2. **Two axes**: learning rate x ``optim.factor_lr_ratio`` (the method's fast factor — LoRA's B, DCFT's kernel C,
   LoKr's w1 — trains at lr x ratio; under Adam this is the update-scale axis with the initial value held fixed).
   Rows with ``ratio_axis: false`` (head-only) search the learning rate only.
3. **Shared head rate**: every adapter row's head (pooler + classifier) trains at the spec's ``head_lr``; a row with
   ``head_lr: false`` (head-only, whose head *is* what it tunes) uses its own lr.
4. **Selection with a tolerance** (``selection_rule``): the best final held-out score b and its standard error se
   (``standard_error``); among the candidates scoring >= b - se, the lowest learning rate, then the highest score.
5. **Edges extended on both axes**: while the best or the chosen candidate sits on the edge of an axis (the largest or
   smallest value tried along that axis through it), the next value of ``extend_lrs`` / ``extend_ratios`` beyond it
   is added at its other coordinate. Each axis is the sorted union of the grid's values and the extension list, so
   "the next value" never skips a value not yet tried on that line (amendment 3). A diverged candidate (non-finite
   training loss) scores -inf and counts as tried; a run that failed for another reason leaves its pilot undecided
   until it is rerun; a pilot whose every candidate diverged stays undecided (no main run starts from it).
6. **Fixed points** (``points`` stages): named pilot-data runs at a given (lr, ratio), e.g. the orthogonality
   weight at 0 at v1's DCFT point, to measure the regulariser's share of the early blow-up.
7. **Reuse**: before a job starts, a completed run of ``reuse_from`` at the same key whose configuration is the
   same under v2 (``same_config``) is copied in with a ``reused_from`` entry instead of being run again.

The scheduler (start / resume / pause / stop, reports) is ``study.run_study``'s, unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..compose import compose_config
from .scheduler import REPO, SIGTERM_STOP, BaseStudy, Job, final_score, unique_jobs

# Main metrics that are correlations (data.tasks: STS-B "pearson", CoLA "matthews"), matched by name, not substring.
CORRELATION_METRICS = frozenset({"pearson", "spearmanr", "spearman", "matthews", "matthews_correlation", "mcc"})
REUSE_IGNORED = ("root", "cache_dir", "num_workers")  # data keys that do not change a run's numbers
DIVERGED = "NonFiniteLossError"  # module.NonFiniteLossError's name in a failed run's record


def standard_error(metric: str, score: float, n: int) -> float:
    """Standard error (in points, scores x 100) of a held-out score on n examples, fixed before the pilots ran:
    a proportion (accuracy, F1): 100 sqrt(p (1 - p) / n); a correlation (Pearson, Spearman, Matthews = the phi
    correlation): the large-sample 100 (1 - r^2) / sqrt(n)."""
    if n < 2 or not math.isfinite(score):
        return 0.0
    x = max(min(score / 100.0, 1.0), -1.0)
    if metric.lower() in CORRELATION_METRICS:
        return 100.0 * (1.0 - x * x) / math.sqrt(n)
    return 100.0 * math.sqrt(max(x * (1.0 - x), 0.0) / n)


@dataclass(frozen=True)
class Candidate:
    lr: float
    ratio: float | None
    score: float | None  # None: pending; -inf: failed


def select(cands: list[Candidate], se: float) -> tuple[Candidate, Candidate]:
    """(best, chosen): the best score, and among the candidates within ``se`` of it the lowest lr, then the highest
    score (then the lowest ratio). Every candidate must have a score."""
    best = best_of(cands)
    near = [c for c in cands if c.score >= best.score - se]
    chosen = min(near, key=lambda c: (c.lr, -c.score, c.ratio or 0.0))
    return best, chosen


def edge_extensions(cands: list[Candidate], points: list[Candidate], lr_axis: list[float],
                    ratio_axis: list[float] | None) -> list[tuple[float, float | None]]:
    """(lr, ratio) pairs to add: for each point on an edge of the values tried along an axis through it, the next
    value of that axis (``lr_axis`` / ``ratio_axis``: every value the axis may take, grid and extensions) beyond
    that edge. A line with one value has two edges."""
    def beyond(value: float, tried: list[float], axis: list[float]) -> list[float]:
        out = []
        if value == max(tried):
            out += [v for v in sorted(axis) if v > value][:1]
        if value == min(tried):
            out += [v for v in sorted(axis, reverse=True) if v < value][:1]
        return out

    add: list[tuple[float, float | None]] = []
    for p in points:
        add += [(lr, p.ratio) for lr in beyond(p.lr, [c.lr for c in cands if c.ratio == p.ratio], lr_axis)]
        if ratio_axis is not None and p.ratio is not None:
            add += [(p.lr, r) for r in beyond(p.ratio, [c.ratio for c in cands if c.lr == p.lr], ratio_axis)]
    return list(dict.fromkeys(add))


def axis_values(grid: list[float], extend: list[float]) -> list[float]:
    """Every value an axis may take: the grid's and the extension list's, sorted."""
    return sorted({float(v) for v in grid} | {float(v) for v in extend})


def selection_rule(spec: dict) -> str:
    pilot = spec["pilot"]
    return ("per (row, task): a pilot on a held-out slice of that task's training split (one seed, "
            f"{pilot['seed']}), the final held-out main metric; best score b with standard error se (proportions: "
            "100 sqrt(p(1-p)/n); correlations: 100 (1-r^2)/sqrt(n)); chosen: among candidates scoring >= b - se, the "
            "lowest lr, then the highest score; while the best or the chosen candidate sits on the edge of the lrs "
            "or ratios tried through it, the next value beyond that edge of the axis (grid values and extend_lrs / "
            "extend_ratios together) is added; a diverged run scores -inf; a pilot whose best is -inf is undecided; "
            f"adapter rows' heads train at head_lr = {spec.get('head_lr')}")


class ProtocolStudy(BaseStudy):
    """``Study`` with the v2 rules above; selections are keyed ``<row>@<task>``."""

    # ---------------------------------------------------------------- spec
    def uses_ratio(self, row: str) -> bool:
        return self.rows[row].get("ratio_axis", True)

    def head_lr(self, row: str) -> float | None:
        return None if self.rows[row].get("head_lr", True) is False else self.spec.get("head_lr")

    def pilot_tasks(self) -> list[str]:
        tasks = []
        for stage in self.spec["stages"]:
            tasks += [t for t in stage.get("tasks", []) if t not in tasks]
        return tasks

    def pilot_rows(self, task: str) -> list[str]:
        rows = []
        for stage in self.spec["stages"]:
            if task in stage.get("tasks", []) or stage.get("task") == task:
                rows += [r for r in stage.get("rows", []) if r not in rows]
        return rows

    def _pilot_job(self, row: str, task: str, lr: float, ratio: float | None) -> Job:
        pilot = self.spec["pilot"]
        base = [f"experiment={self.spec['experiment_prefix']}/{task}", f"seed={pilot['seed']}",
                *pilot["tasks"][task], *self.rows[row]["method"]]
        name = f"lr{lr:g}" + ("" if ratio is None else f"_ratio{ratio:g}")
        return Job(f"pilot/{task}/{row}/{name}", row, base, "pilot", lr=lr, scale=ratio)

    def candidates_of(self, row: str, task: str) -> list[Job]:
        """The pilot jobs of (row, task): the grid, then edge extensions once every candidate has a score."""
        pilot, spec = self.spec["pilot"], self.rows[row]
        lrs = spec.get("lrs", pilot["lrs"])
        ratios = spec.get("ratios", pilot["ratios"]) if self.uses_ratio(row) else [None]
        jobs = [self._pilot_job(row, task, lr, ratio) for ratio in ratios for lr in lrs]
        lr_axis, ratio_axis = self.axes(row)
        while True:
            cands = self._scored(jobs)
            decided = None if cands is None else self._decide(jobs, cands)
            if decided is None:
                return jobs
            best, chosen, _ = decided
            new = [(lr, r) for lr, r in edge_extensions(cands, [best, chosen], lr_axis, ratio_axis)
                   if not any(j.lr == lr and j.scale == r for j in jobs)]
            if not new:
                return jobs
            jobs += [self._pilot_job(row, task, lr, r) for lr, r in new]

    def axes(self, row: str) -> tuple[list[float], list[float] | None]:
        """(lr axis, ratio axis or None): every value each axis of ``row``'s pilot may take."""
        pilot, spec = self.spec["pilot"], self.rows[row]
        lr_axis = axis_values(spec.get("lrs", pilot["lrs"]), spec.get("extend_lrs", pilot.get("extend_lrs", [])))
        if not self.uses_ratio(row):
            return lr_axis, None
        return lr_axis, axis_values(spec.get("ratios", pilot["ratios"]),
                                    spec.get("extend_ratios", pilot.get("extend_ratios", [])))

    def is_done(self, key: str) -> bool:
        """A diverged run is a result (rerunning it diverges again): never restarted."""
        return super().is_done(key) or _diverged(self.record(key) or {})

    def pilot_score(self, job: Job) -> float | None:
        """A diverged pilot run (non-finite training loss) scores -inf, in every later driver too. A run that failed
        for any other reason has no score: its pilot stays open (this driver does not restart it; the next does)."""
        rec = self.record(job.key) or {}
        if _diverged(rec):
            return -math.inf
        return final_score(rec) if rec.get("status") == "completed" else None

    def _decide(self, jobs: list[Job], cands: list[Candidate]) -> tuple[Candidate, Candidate, float] | None:
        """(best, chosen, se) of a pilot whose every candidate has a score; None when every candidate diverged."""
        best = best_of(cands)
        if not math.isfinite(best.score):
            return None
        se = self._se(jobs, best)
        return (*select(cands, se), se)

    def _scored(self, jobs: list[Job]) -> list[Candidate] | None:
        scores = [self.pilot_score(j) for j in jobs]
        if any(s is None for s in scores):
            return None
        return [Candidate(j.lr, j.scale, s) for j, s in zip(jobs, scores)]

    def _se(self, jobs: list[Job], best: Candidate) -> float:
        job = next(j for j in jobs if j.lr == best.lr and j.scale == best.ratio)
        rec = self.record(job.key) or {}
        n = int((rec.get("data") or {}).get("counts", {}).get("validation", 0))
        return standard_error(str(rec.get("main_metric", "")), best.score, n)

    # ---------------------------------------------------------------- selection
    def selection(self) -> dict:
        """``<row>@<task>`` -> {lr, ratio, head_lr, score, best, se, candidates}; absent while its pilot is open."""
        chosen: dict[str, Any] = {}
        for task in self.pilot_tasks():
            for row in self.pilot_rows(task):
                if not self.rows[row].get("pilot", True):
                    continue
                jobs = self.candidates_of(row, task)
                cands = self._scored(jobs)
                decided = None if cands is None else self._decide(jobs, cands)
                if decided is None:
                    continue  # open, or every candidate diverged: nothing to choose
                best, pick, se = decided
                chosen[f"{row}@{task}"] = {
                    "row": row, "task": task, "lr": pick.lr, "ratio": pick.ratio, "head_lr": self.head_lr(row),
                    "score": pick.score, "best": {"lr": best.lr, "ratio": best.ratio, "score": best.score,
                                                  "on_edge": self._on_edge(cands, best)}, "se": se,
                    "on_edge": self._on_edge(cands, pick),
                    "candidates": [{"lr": j.lr, "ratio": j.scale, "score": c.score, "run": j.key}
                                   for j, c in zip(jobs, cands)],
                }
        return chosen

    @staticmethod
    def _on_edge(cands: list[Candidate], p: Candidate) -> list[str]:
        """The axes on whose searched edge ``p`` still sits once its pilot is decided (the axis ran out of values):
        for the write-up."""
        edges = []
        lrs = [c.lr for c in cands if c.ratio == p.ratio]
        if p.lr in (min(lrs), max(lrs)):
            edges.append("lr")
        ratios = [c.ratio for c in cands if c.lr == p.lr and c.ratio is not None]
        if p.ratio is not None and p.ratio in (min(ratios), max(ratios)):
            edges.append("ratio")
        return edges

    # ---------------------------------------------------------------- jobs
    def all_jobs(self, chosen: dict) -> list[Job]:
        jobs: list[Job] = []
        for stage in self.spec["stages"]:
            name = stage["name"]
            if name == "pilot":
                for task in stage["tasks"]:
                    for row in stage["rows"]:
                        jobs += self.candidates_of(row, task)
            elif name == "points":
                for p in stage["points"]:
                    jobs.append(self._pilot_job(p["row"], p["task"], float(p["lr"]), p.get("ratio")))
            else:
                for task in stage["tasks"]:
                    for row in stage["rows"]:
                        for seed in stage["seeds"]:
                            overrides = [f"experiment={self.spec['experiment_prefix']}/{task}", f"seed={seed}",
                                         *self.rows[row]["method"], *stage.get("overrides", [])]
                            jobs.append(Job(f"{name}/{task}/{row}/seed{seed}", row, overrides, name,
                                            needs=(f"{row}@{task}",)))
        return unique_jobs(jobs)

    def resolve(self, row: str, chosen: dict) -> str | None:
        return row

    def point(self, job: Job, chosen: dict) -> tuple[float, float | None, float | None]:
        """(lr, ratio, head_lr) of a job: a pilot's own candidate, or its (row, task) selection."""
        if job.stage in ("pilot", "points"):
            return job.lr, job.scale, self.head_lr(job.row)
        pick = chosen[job.needs[0]]
        return pick["lr"], pick["ratio"], pick["head_lr"]

    def command(self, job: Job, chosen: dict) -> list[str]:
        lr, ratio, head_lr = self.point(job, chosen)
        args = [*job.overrides, f"optim.lr={lr:g}"]
        if ratio is not None:
            args.append(f"optim.factor_lr_ratio={ratio:g}")
        if head_lr is not None:
            args.append(f"optim.head_lr={head_lr:g}")
        return [*self.runner, *args, f"hydra.run.dir={self.out / job.key}",
                f"sweep_name={self.spec.get('sweep_name', 'table1_cpu_v2')}", "run.threads=1"]

    def stale(self, job: Job, chosen: dict) -> str | None:
        rec = self.record(job.key)
        if job.stage == "pilot" or not rec or rec.get("status") != "completed" or not self.ready(job, chosen):
            return None
        optim = rec.get("config", {}).get("optim", {})
        want_lr, want_ratio, want_head = self.point(job, chosen)
        got_lr = optim.get("lr")
        got_ratio = optim.get("factor_lr_ratio", 1.0)
        got_head = optim.get("head_lr") or got_lr
        for what, got, want in (("lr", got_lr, want_lr), ("factor_lr_ratio", got_ratio, want_ratio or 1.0),
                                ("head_lr", got_head, want_head or want_lr)):
            if got is None or not math.isclose(float(got), float(want), rel_tol=1e-9):
                return f"{what} {got} != selected {want:g}"
        return None

    def job_task(self, job: Job) -> str:
        return job.key.split("/")[1]

    def selection_payload(self, chosen: dict) -> dict:
        return {"protocol": "v2", "rule": selection_rule(self.spec), "pilot": self.spec["pilot"],
                "head_lr": self.spec.get("head_lr"), "rows": chosen}

    def _score_text(self, job: Job) -> str:
        score = self.pilot_score(job)
        if score is not None:
            return "diverged" if score == -math.inf else f"{score:.2f}"
        failure = (self.record(job.key) or {}).get("failure") or {}
        return "pending" if failure.get("type") in (None, SIGTERM_STOP) else "failed (the next driver reruns it)"

    def pilot_markdown(self, chosen: dict) -> str:
        """Per task and row, every candidate's final held-out score; the chosen one in bold, the best in italics."""
        lines = ["# Pilots (protocol v2)", "", selection_rule(self.spec) + ".", "",
                 "Final main metric on the held-out slice of each task's training split (dev sets unused). "
                 "**bold**: chosen; *best*: the highest score; `ratio`: optim.factor_lr_ratio (the fast factor's lr / "
                 "lr).", ""]
        for task in self.pilot_tasks():
            lines += [f"## {task} ({' '.join(self.spec['pilot']['tasks'][task])})", "",
                      "| row | lr | ratio | head lr | held-out score | |", "|---|---|---|---|---|---|"]
            for row in self.pilot_rows(task):
                pick = chosen.get(f"{row}@{task}")
                for job in self.candidates_of(row, task):
                    text = self._score_text(job)
                    mark = ""
                    if pick and (job.lr, job.scale) == (pick["lr"], pick["ratio"]):
                        mark = f"chosen (best {pick['best']['score']:.2f} - se {pick['se']:.2f})"
                        if pick["on_edge"]:
                            mark += f"; on the searched edge of {', '.join(pick['on_edge'])}"
                    elif pick and (job.lr, job.scale) == (pick["best"]["lr"], pick["best"]["ratio"]):
                        mark = "best"
                        if pick["best"].get("on_edge"):
                            mark += f"; on the searched edge of {', '.join(pick['best']['on_edge'])}"
                    head = self.head_lr(row)
                    cells = [row, f"{job.lr:g}", "—" if job.scale is None else f"{job.scale:g}",
                             f"{job.lr if head is None else head:g}", text, mark]
                    fmt = "**{}**" if mark.startswith("chosen") else "*{}*" if mark.startswith("best") else "{}"
                    lines.append("| " + " | ".join(fmt.format(c) if c else c for c in cells) + " |")
            lines.append("")
        points = [p for st in self.spec["stages"] if st["name"] == "points" for p in st["points"]]
        if points:
            lines += ["## Fixed points", "", "| row | task | lr | ratio | held-out score | why |", "|---|---|---|---|---|---|"]
            for p in points:
                job = self._pilot_job(p["row"], p["task"], float(p["lr"]), p.get("ratio"))
                text = self._score_text(job)
                lines.append(f"| {p['row']} | {p['task']} | {float(p['lr']):g} | {p.get('ratio', '—')} | {text} | "
                             f"{p.get('why', '')} |")
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- reuse
    def before_start(self, job: Job, chosen: dict, log) -> bool:
        """Copy an identical completed run of ``reuse_from`` instead of running ``job``; True when copied."""
        source_root = self.spec.get("reuse_from")
        if not source_root:
            return False
        source = REPO / source_root / self.spec.get("reuse_keys", {}).get(job.key, job.key)
        old = _read(source / "results.json")
        if not old or old.get("status") != "completed":
            return False
        cmd = self.command(job, chosen)[len(self.runner):]
        overrides = [a for a in cmd if not a.startswith(("hydra.run.dir=", "sweep_name=", "run.threads="))]
        new = OmegaConf.to_container(compose_config(overrides), resolve=True)  # as run.py records it
        why = same_config(old.get("config", {}), new)
        if why:
            log(f"reuse {job.key}: not {source} ({why})")
            return False
        target = self.out / job.key
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", "adapter*", "*.ckpt"))
        rec = _read(target / "results.json")
        rec["reused_from"] = {"run": _shown(source), "why": "the same configuration under v2: "
                              "the v1 run already trained its head at the shared head lr"}
        (target / "results.json").write_text(json.dumps(rec, indent=1) + "\n")
        log(f"reuse {job.key}: copied {_shown(source)} (same configuration)")
        return True


def best_of(cands: list[Candidate]) -> Candidate:
    """The highest score; on ties the lower lr, then the lower ratio."""
    return max(cands, key=lambda c: (c.score, -c.lr, -(c.ratio or 0.0)))


def _diverged(rec: dict) -> bool:
    return rec.get("status") == "failed" and (rec.get("failure") or {}).get("type") == DIVERGED


def same_config(old: dict, new: dict) -> str | None:
    """None when a recorded run's config gives the same run as ``new`` under today's keys; else the first
    difference. Keys added since the old run count at their defaults (head_lr None = lr, factor_lr_ratio 1)."""
    def norm(cfg: dict) -> dict:
        cfg = json.loads(json.dumps(cfg))
        optim = cfg.setdefault("optim", {})
        optim["head_lr"] = optim.get("head_lr") or optim.get("lr")
        optim.setdefault("factor_lr_ratio", 1.0)
        for key in REUSE_IGNORED:
            cfg.get("data", {}).pop(key, None)
        return {k: cfg.get(k) for k in ("seed", "task", "backbone", "method", "data", "optim", "trainer",
                                        "eval_every_n_steps")}

    a, b = norm(old), norm(new)
    for key in a:
        if a[key] != b[key]:
            if isinstance(a[key], dict) and isinstance(b[key], dict):
                diff = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k))
                return f"{key}.{diff[0]}: {a[key].get(diff[0])!r} != {b[key].get(diff[0])!r}"
            return f"{key}: {a[key]!r} != {b[key]!r}"
    return None


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (records stay portable), else as it is."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
