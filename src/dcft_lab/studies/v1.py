"""Study rules v1: the CPU-scale study behind `make reproduce-table1 SCALE=cpu` (results/table1_cpu).

The spec is the ``cpu: study:`` entry of ``experiments/table1/grid.yaml``:

1. **Pilot**: every row's candidates (learning rate x update scale) on one task, one seed, evaluated on a fixed
   held-out slice of the *training* split (``data.train_holdout``); the dev sets the table reports are never read.
2. **Selection** (``<out>/selection.json``): per row the candidate with the best final held-out score. A row with
   ``scale_from`` pilots learning rates only, at the scale selected for that other row. A best candidate at the
   largest (smallest) learning rate tried adds the next rate of ``extend_lrs`` beyond it, at its scale, until the
   optimum is interior. ``best_init`` names the DCFT initialisation row whose selected candidate scored best.
3. **Stages**, in the spec's priority order (pilot stages interleaved): one run per (task, row, seed) with the row's
   selected lr and alpha.

A completed run whose lr or alpha differs from the current selection is reported as stale, never deleted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from ..compose import compose_config, describe_hydra_error
from ..method_scale import alpha_for, scale_rank_key
from .scheduler import BEST_INIT, BaseStudy, Job, unique_jobs


@dataclass
class Study(BaseStudy):
    """The v1 rules (see the module docstring)."""

    method_configs: dict = field(default_factory=dict, repr=False)  # row -> its resolved method node (a cache)

    def method_config(self, row: str) -> dict:
        """The row's resolved ``method`` node: its method overrides composed over conf/method/<name>.yaml. What its
        update scale divides alpha by (r, AdaLoRA's init_r) is a method key, which no task preset sets."""
        if row not in self.method_configs:
            overrides = self.rows[row]["method"]
            try:
                node = compose_config(overrides).method
            except Exception as err:  # noqa: BLE001 - Hydra's errors are many-line; one line naming the row
                raise ValueError(f"study row {row!r}: {describe_hydra_error(err, overrides)}") from None
            self.method_configs[row] = OmegaConf.to_container(node, resolve=True)
        return self.method_configs[row]

    def scaled(self, row: str) -> bool:
        """Whether the row's method has an update scale (``method_scale``): its pilot then searches pilot.scales."""
        return scale_rank_key(self.method_config(row)) is not None

    def alpha(self, row: str, scale: float | None) -> float | None:
        """The row's alpha at update scale ``scale`` (None: the method has none, or no scale was chosen)."""
        return alpha_for(self.method_config(row), scale)

    def pilot_jobs(self, row: str, scale_from_value: float | None = None) -> list[Job]:
        pilot, spec = self.spec["pilot"], self.rows[row]
        base = [f"experiment={pilot['experiment']}", f"seed={pilot['seed']}", *pilot.get("overrides", []),
                *spec["method"]]
        if not self.scaled(row):
            scales = [None]
        elif spec.get("scale_from"):
            scales = [scale_from_value]
        else:
            scales = pilot["scales"]
        needs = (spec["scale_from"],) if spec.get("scale_from") else ()

        def job(lr: float, scale: float | None) -> Job:
            name = f"lr{lr:g}" + ("" if scale is None else f"_scale{scale:g}")
            return Job(f"pilot/{row}/{name}", row, base, "pilot", lr=lr, scale=scale, needs=needs)

        jobs = [job(lr, scale) for scale in scales for lr in pilot["lrs"]]
        # An optimum on the edge of the learning rates tried is not an optimum: once every candidate has a score,
        # add the next rate of `extend_lrs` beyond that edge at the best candidate's scale, until it is interior.
        extend = sorted(float(lr) for lr in pilot.get("extend_lrs", []))
        while True:
            scores = [self.pilot_score(j) for j in jobs]
            if any(score is None for score in scores):
                break
            best = jobs[max(range(len(jobs)), key=lambda i: scores[i])]
            tried = [j.lr for j in jobs if j.scale == best.scale]
            beyond = ([lr for lr in extend if lr > best.lr and lr not in tried] if best.lr == max(tried) else
                      [lr for lr in reversed(extend) if lr < best.lr and lr not in tried] if best.lr == min(tried)
                      else [])
            if not beyond:
                break
            jobs.append(job(beyond[0], best.scale))
        return jobs

    def selection(self) -> dict:
        """Row -> chosen {lr, scale, alpha, score, candidates}; rows whose pilot is incomplete are absent."""
        chosen: dict[str, Any] = {}
        pending = list(self.rows)
        inits = self.spec.get("best_init_among", [])
        while pending:  # scale_from rows need their source row first
            progressed = False
            if inits and BEST_INIT not in chosen and all(r in chosen for r in inits):
                chosen[BEST_INIT] = max(inits, key=lambda r: chosen[r]["score"])  # ties: the first listed
            for row in list(pending):
                source = self.rows[row].get("scale_from")
                if source:
                    source = self.resolve(source, chosen)
                    if source is None or source not in chosen:
                        if source is not None and source not in pending:
                            pending.remove(row)
                        continue
                scale_from_value = chosen[source]["scale"] if source else None
                jobs = self.pilot_jobs(row, scale_from_value)
                scores = [self.pilot_score(j) for j in jobs]
                pending.remove(row)
                progressed = True
                if any(s is None for s in scores):
                    continue
                best = max(range(len(jobs)), key=lambda i: scores[i])  # ties: the first in grid order
                chosen[row] = {
                    "lr": jobs[best].lr, "scale": jobs[best].scale, "alpha": self.alpha(row, jobs[best].scale),
                    "score": scores[best], "scale_from": source,
                    "candidates": [{"lr": j.lr, "scale": j.scale, "score": s, "run": j.key}
                                   for j, s in zip(jobs, scores)],
                }
            if not progressed:
                break
        if inits and BEST_INIT not in chosen and all(r in chosen for r in inits):
            chosen[BEST_INIT] = max(inits, key=lambda r: chosen[r]["score"])
        return chosen

    def resolve(self, row: str, chosen: dict) -> str | None:
        return chosen.get(BEST_INIT) if row == BEST_INIT else row

    # ---------------------------------------------------------------- jobs
    def all_jobs(self, chosen: dict) -> list[Job]:
        """Every job in priority order; jobs of unresolved aliases are left out until the alias resolves."""
        jobs: list[Job] = []
        for stage in self.spec["stages"]:
            if stage["name"] == "pilot":
                for row in stage["rows"]:
                    source = self.rows[row].get("scale_from")
                    if source:
                        source = self.resolve(source, chosen)
                        if source is None or source not in chosen:
                            continue
                    jobs += self.pilot_jobs(row, chosen[source]["scale"] if source else None)
                continue
            for task in stage["tasks"]:
                for row in stage["rows"]:
                    real = self.resolve(row, chosen)
                    if real is None:
                        continue
                    for seed in stage["seeds"]:
                        key = f"{stage['name']}/{task}/{real}/seed{seed}"
                        overrides = [f"experiment={self.spec['experiment_prefix']}/{task}", f"seed={seed}",
                                     *self.rows[real]["method"], *stage.get("overrides", [])]
                        jobs.append(Job(key, real, overrides, stage["name"], needs=(real,)))
        return unique_jobs(jobs)

    def command(self, job: Job, chosen: dict) -> list[str]:
        lr, scale = job.lr, job.scale
        if job.stage != "pilot":
            lr, scale = chosen[job.row]["lr"], chosen[job.row]["scale"]
        args = [*job.overrides, f"optim.lr={lr:g}"]
        alpha = self.alpha(job.row, scale)
        if alpha is not None:
            args.append(f"method.alpha={alpha:g}")
        return [*self.runner, *args, f"hydra.run.dir={self.out / job.key}",
                f"sweep_name={self.spec.get('sweep_name', 'table1_cpu')}", "run.threads=1"]

    def job_task(self, job: Job) -> str:
        return self.spec["pilot"]["experiment"].rsplit("/", 1)[-1] if job.stage == "pilot" else job.key.split("/")[1]

    def selection_payload(self, chosen: dict) -> dict:
        return {"rule": "per row: the candidate with the best final main metric on the held-out training slice "
                        "(pilot task, one seed); ties -> the first in grid order; a best candidate on the edge of the "
                        "lrs tried adds the next rate of extend_lrs beyond it at its scale, until it is interior; "
                        "best_init: the best of best_init_among by that score", "pilot": self.spec["pilot"],
                "rows": chosen}

    def pilot_markdown(self, chosen: dict) -> str:
        return pilot_markdown(self, chosen)

    def stale(self, job: Job, chosen: dict) -> str | None:
        """Why a completed stage run no longer matches the selection (None when it does)."""
        rec = self.record(job.key)
        if job.stage == "pilot" or not rec or rec.get("status") != "completed" or job.row not in chosen:
            return None
        cfg = rec.get("config", {})
        want_lr, want_alpha = chosen[job.row]["lr"], chosen[job.row]["alpha"]
        got_lr, got_alpha = cfg.get("optim", {}).get("lr"), cfg.get("method", {}).get("alpha")
        if got_lr is None or not math.isclose(float(got_lr), want_lr, rel_tol=1e-9):
            return f"lr {got_lr} != selected {want_lr:g}"
        if want_alpha is not None and (got_alpha is None or not math.isclose(float(got_alpha), want_alpha)):
            return f"alpha {got_alpha} != selected {want_alpha:g}"
        return None


def pilot_markdown(study: Study, chosen: dict) -> str:
    """The pilot as a table: every candidate's final held-out score, the chosen one in bold."""
    pilot = study.spec["pilot"]
    lines = [f"# Pilot: {pilot['experiment']}, seed {pilot['seed']}, {' '.join(pilot.get('overrides', []))}", "",
             "Final main metric on the held-out slice of the training split (the dev set is not used). "
             "Chosen per row: the best candidate (bold). `scale` is the effective update scale; alpha = scale x "
             "the method's denominator.", "", "| row | lr | scale | alpha | held-out score |", "|---|---|---|---|---|"]
    for row in study.rows:
        source = study.rows[row].get("scale_from")
        real_source = study.resolve(source, chosen) if source else None
        if source and real_source not in chosen:
            lines.append(f"| {row} | (waits for the pilot of {source}) | | | |")
            continue
        for job in study.pilot_jobs(row, chosen[real_source]["scale"] if source else None):
            score = study.pilot_score(job)
            pick = row in chosen and (job.lr, job.scale) == (chosen[row]["lr"], chosen[row]["scale"])
            text = "pending" if score is None else "failed" if score == -math.inf else f"{score:.2f}"
            cells = [row, f"{job.lr:g}", "—" if job.scale is None else f"{job.scale:g}",
                     "—" if job.scale is None else f"{study.alpha(row, job.scale):g}", text]
            lines.append("| " + " | ".join(f"**{c}**" if pick else c for c in cells) + " |")
    if BEST_INIT in chosen:
        among = study.spec["best_init_among"]
        lines += ["", f"Best DCFT initialisation (highest chosen score among {', '.join(among)}): "
                      f"**{chosen[BEST_INIT]}**."]
    return "\n".join(lines) + "\n"
