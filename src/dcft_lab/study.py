"""The CPU-scale study behind `make reproduce-table1 SCALE=cpu`: pilot -> selection -> table, resumable.

The spec is the ``cpu: study:`` entry of ``experiments/table1/grid.yaml``:

1. **Pilot**: every row's candidates (learning rate x update scale) on one task, one seed, evaluated on a fixed
   held-out slice of the *training* split (``data.train_holdout``); the dev sets the table reports are never read.
2. **Selection** (``<out>/selection.json``): per row the candidate with the best final held-out score. A row with
   ``scale_from`` pilots learning rates only, at the scale selected for that other row. A best candidate at the
   largest (smallest) learning rate tried adds the next rate of ``extend_lrs`` beyond it, at its scale, until the
   optimum is interior. ``best_init`` names the DCFT initialisation row whose selected candidate scored best.
3. **Stages**, in the spec's priority order (pilot stages interleaved): one run per (task, row, seed) with the row's
   selected lr and alpha.

Every job is an ordinary ``python -m dcft_lab.run`` in its own folder, so a completed run is skipped and a killed
one resumes from its checkpoint; up to ``jobs`` single-thread jobs run side by side. A completed run whose lr or
alpha differs from the current selection is reported as stale, never deleted. To stop: ``STOP`` lets the running
jobs finish; ``PAUSE``, SIGTERM, SIGHUP or Ctrl-C to the driver stops them now (Lightning's SIGTERM stop: a checkpoint
at the current batch, or the last evaluation's when an evaluation was due), and the next driver resumes them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
GRID_FILE = REPO / "experiments" / "table1" / "grid.yaml"
BEST_INIT = "best_init"
STOP_FILE = "STOP"  # `touch <out>/STOP`: the driver lets running jobs finish, then exits (nothing is lost)
PAUSE_FILE = "PAUSE"  # `touch <out>/PAUSE` (or SIGTERM / SIGHUP / Ctrl-C): running jobs checkpoint and stop now
PAUSE_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PAUSE_WAIT_S = 600  # for all jobs together; a job stops after its current batch: seconds, never seen near this
SIGTERM_EXIT = 143  # dcft_lab.run's exit code after Lightning's SIGTERM stop (checkpoint saved); also a paused driver's


@dataclass
class Job:
    key: str                 # folder relative to the study root, e.g. main/mrpc/lora/seed6 (no "=" or ",": Hydra overrides)
    row: str                 # row key of the spec (aliases resolved)
    overrides: list[str]     # without lr / alpha (those come from the selection) for stage jobs
    stage: str               # "pilot" or a stage name
    lr: float | None = None      # pilot candidates: fixed; stage jobs: from the selection
    scale: float | None = None
    needs: tuple = ()        # rows whose selection must exist before this job can start


@dataclass
class Study:
    spec: dict
    out: Path
    failed_now: set = field(default_factory=set)  # jobs that failed in this invocation (pilot: scored -inf)
    stopped_now: set = field(default_factory=set)  # jobs stopped by SIGTERM in this invocation (resumable)
    paused: bool = False  # the driver was paused (PAUSE / SIGTERM / Ctrl-C): its running jobs were stopped
    runner: tuple = (sys.executable, "-m", "dcft_lab.run")  # replaced by a stub in the driver's own tests

    # ---------------------------------------------------------------- spec
    @property
    def rows(self) -> dict:
        return self.spec["rows"]

    def alpha(self, row: str, scale: float | None) -> float | None:
        per = self.rows[row].get("alpha_per_scale")
        return None if per is None or scale is None else float(scale) * float(per)

    def pilot_jobs(self, row: str, scale_from_value: float | None = None) -> list[Job]:
        pilot, spec = self.spec["pilot"], self.rows[row]
        base = [f"experiment={pilot['experiment']}", f"seed={pilot['seed']}", *pilot.get("overrides", []),
                *spec["method"]]
        if spec.get("alpha_per_scale") is None:
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

    # ---------------------------------------------------------------- results
    def record(self, key: str) -> dict | None:
        path = self.out / key / "results.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def status(self, key: str) -> str:
        rec = self.record(key)
        return "missing" if rec is None else rec.get("status", "corrupt")

    def pilot_score(self, job: Job) -> float | None:
        """The final held-out main metric; -inf for a run that failed in this invocation; None while pending."""
        rec = self.record(job.key)
        if rec and rec.get("status") == "completed":
            value = rec.get("metrics", {}).get("final", {}).get(rec.get("main_metric"))
            return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf
        if job.key in self.failed_now:
            return -math.inf
        return None

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
        seen, unique = set(), []
        for job in jobs:
            if job.key not in seen:
                seen.add(job.key)
                unique.append(job)
        return unique

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

    def before_start(self, job: Job, chosen: dict, log) -> bool:
        """Called before a job starts; True when the job needs no run (protocol v2 copies identical v1 runs)."""
        return False

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

    def ready(self, job: Job, chosen: dict) -> bool:
        return all(self.resolve(n, chosen) in chosen for n in job.needs)

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


def load_spec(grid_file: Path = GRID_FILE, scale: str = "cpu") -> dict:
    grid = yaml.safe_load(grid_file.read_text())[scale]
    if "study" not in grid:
        raise SystemExit(f"error: {grid_file}: '{scale}' has no 'study' entry")
    return grid["study"]


def make_study(spec: dict, out: Path) -> Study:
    """The study of a spec: the v1 rules (``Study``) or, for ``protocol: v2``, ``protocol.ProtocolStudy``."""
    if spec.get("protocol", "v1") == "v2":
        from .protocol import ProtocolStudy

        return ProtocolStudy(spec, out)
    if spec.get("protocol", "v1") != "v1":
        raise SystemExit(f"error: protocol {spec['protocol']!r}; expected v1 or v2")
    return Study(spec, out)


def _log(line: str, log_file: Path | None) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = f"[{stamp}] {line}"
    print(text, flush=True)
    if log_file is not None:
        with log_file.open("a") as fh:
            fh.write(text + "\n")


def write_selection(study: Study, chosen: dict) -> None:
    study.out.mkdir(parents=True, exist_ok=True)
    payload = study.selection_payload(chosen)
    for name, text in (("selection.json", json.dumps(payload, indent=1)), ("pilot.md", study.pilot_markdown(chosen)),
                       ("progress.md", progress_markdown(study, chosen))):
        tmp = study.out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, study.out / name)


def progress_markdown(study: Study, chosen: dict) -> str:
    """Completed / planned jobs per stage row x task, and the rows not planned yet because a pilot they wait for is
    undecided (their jobs have no row, lr or alpha until then)."""
    cells: dict[tuple, list[int]] = {}   # (stage, row, task) -> [completed, planned, failed, paused]
    for job in study.all_jobs(chosen):
        task = study.job_task(job)
        cell = cells.setdefault((job.stage, job.row, task), [0, 0, 0, 0])
        status = study.status(job.key)
        # a run stopped by SIGTERM (PAUSE, preemption) kept its checkpoint: it resumes, it did not fail
        paused = status == "failed" and (study.record(job.key) or {}).get("failure", {}).get("type") == "SIGTERMException"
        cell[0] += status == "completed"
        cell[1] += 1
        cell[2] += status == "failed" and not paused
        cell[3] += paused
    stages = list(dict.fromkeys(stage for stage, _, _ in cells))
    rows = sorted(dict.fromkeys((stage, row) for stage, row, _ in cells), key=lambda sr: stages.index(sr[0]))
    tasks = list(dict.fromkeys(task for _, _, task in cells))
    lines = ["# Progress of the study", "", "Completed / planned runs per stage row and task (pilot: the held-out slice "
             "of the task's training split, not its dev set).", "",
             "| stage | row | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for stage, row in rows:
        texts = []
        for task in tasks:
            done, planned, failed, paused = cells.get((stage, row, task), (0, 0, 0, 0))
            texts.append(f"{done}/{planned}" + (f", {failed} failed" if failed else "")
                         + (f", {paused} paused" if paused else "") if planned else "")
        name = f"{row} ({BEST_INIT})" if row == chosen.get(BEST_INIT) and stage != "pilot" else row
        lines.append(f"| {stage} | {name} | " + " | ".join(texts) + " |")
    done, planned, failed, paused = (sum(c[i] for c in cells.values()) for i in range(4))
    lines += ["", f"Completed: {done} of {planned} planned runs" + (f"; {failed} failed" if failed else "")
              + (f"; {paused} paused (they resume from their checkpoints)" if paused else "") + "."]
    lines.append(_job_time(study, [j for j in study.all_jobs(chosen) if study.status(j.key) == "completed"]))
    # all_jobs leaves out the rows whose pilot (or alias) is undecided: a spec row with no job is waiting.
    planned_rows = {(stage, row) for stage, row, _ in cells}
    waiting = list(dict.fromkeys(f"{row} ({stage['name']})" for stage in study.spec["stages"] for row in stage.get("rows", [])
                                 if (stage["name"], study.resolve(row, chosen)) not in planned_rows))
    if waiting:
        lines.append(f"Not planned yet (a pilot they wait for is undecided): {', '.join(waiting)}.")
    return "\n".join(lines) + "\n"


def _job_time(study: Study, jobs: list[Job]) -> str:
    """The completed runs' summed wall time (each record's total over its attempts), for the write-up's cost."""
    seconds, undercounted = 0.0, 0
    for job in jobs:
        rec = study.record(job.key) or {}
        total = rec.get("wall_time_total_s")
        if total is None:  # a record from before the total existed: its last attempt only
            total = rec.get("wall_time_s") or 0.0
            undercounted += int(rec.get("attempts", 1)) > 1
        seconds += float(total)
    text = (f"Job time of the completed runs: {seconds / 3600:.1f} h, summed over runs ({study.spec.get('jobs', 1)} "
            "ran side by side, so the elapsed time is shorter by about that factor)")
    if undercounted:
        text += (f"; {undercounted} runs resumed before the records kept a total over attempts count their last "
                 "attempt only")
    return text + "."


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


def run_study(study: Study, jobs_at_once: int, dry_run: bool = False, poll_s: float = 5.0,
              only_stage: str | None = None) -> int:
    log_file = None if dry_run else study.out / "study.log"
    stop_file = study.out / STOP_FILE
    pause_file = study.out / PAUSE_FILE
    if not dry_run:
        study.out.mkdir(parents=True, exist_ok=True)
        for leftover in (stop_file, pause_file):  # left by an earlier driver that honoured it
            if leftover.exists():
                leftover.unlink()
                _log(f"removed a stale {leftover.name} file", log_file)
    # the jobs run in their own sessions (a terminal's Ctrl-C / hang-up reaches only the driver), so the driver must
    # never leave without stopping them: a later driver would start the same job in the same folder
    running: dict[str, tuple[subprocess.Popen, Job, float]] = {}
    with _pause_on_signals(enabled=not dry_run) as signalled:
        try:
            return _schedule(study, jobs_at_once, dry_run, poll_s, only_stage, log_file, running,
                             pause_asked=lambda: signalled() or pause_file.exists())
        except BaseException:
            if running:
                _pause(study, running, log_file)
            raise


def _schedule(study: Study, jobs_at_once: int, dry_run: bool, poll_s: float, only_stage: str | None,
              log_file: Path | None, running: dict, pause_asked) -> int:
    stop_file = study.out / STOP_FILE
    failures = 0
    chosen = None
    while True:
        if chosen is None:  # at the start and whenever a job ended: only then can the selection change
            chosen = study.selection()
            if not dry_run:
                write_selection(study, chosen)
        jobs = [j for j in study.all_jobs(chosen) if only_stage in (None, j.stage)]
        todo = [j for j in jobs if study.status(j.key) != "completed" and j.key not in study.failed_now
                and j.key not in study.stopped_now and j.key not in running]
        if dry_run:
            for job in jobs:
                state = study.status(job.key) if study.status(job.key) == "completed" else (
                    "ready" if study.ready(job, chosen) else "waits for the pilot of " + ",".join(job.needs))
                cmd = " ".join(study.command(job, chosen)[len(study.runner):]) if study.ready(job, chosen) else ""
                print(f"{state:10s} {job.key}  {cmd}")
            return 0
        if pause_asked():  # (a dry run has returned above)
            _pause(study, running, log_file)
            write_selection(study, study.selection())  # progress.md names the paused runs
            return failures
        if study.stopped_now and not running and not [j for j in todo if study.ready(j, chosen)]:
            _log(f"{len(study.stopped_now)} jobs were stopped by SIGTERM and not restarted by this driver: "
                 f"{sorted(study.stopped_now)[:5]}; rerun the driver to resume them", log_file)
        startable = [j for j in todo if study.ready(j, chosen)]
        if stop_file.exists():  # finish the running jobs, start no new one (then restart the driver to continue)
            if not running:
                _log(f"{STOP_FILE} found: stopped with {len(todo) + len(study.stopped_now)} jobs left", log_file)
                break
            startable = []
        while startable and len(running) < jobs_at_once:
            job = startable.pop(0)
            if study.before_start(job, chosen, lambda line: _log(line, log_file)):
                chosen = None  # a copied run may complete a pilot
                break
            folder = study.out / job.key
            folder.mkdir(parents=True, exist_ok=True)
            cmd = study.command(job, chosen)
            console = (folder / "console.log").open("a")
            # its own session: Ctrl-C in the driver's terminal reaches the driver, which stops each job cleanly
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
            running[job.key] = (proc, job, time.time())
            _log(f"start {job.key}: {' '.join(cmd[len(study.runner):-3])}", log_file)
        if chosen is None:
            continue
        if not running:
            blocked = [j.key for j in todo]
            if blocked:
                _log(f"{len(blocked)} jobs cannot start (their pilot failed or is incomplete): {blocked[:5]}", log_file)
            break
        time.sleep(poll_s)
        for key, (proc, _job, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            chosen = None
            rec = study.record(key) or {}
            minutes = (time.time() - started) / 60
            if proc.returncode == 0 and rec.get("status") == "completed":
                main = rec.get("main_metric")
                value = rec.get("metrics", {}).get("final", {}).get(main)
                _log(f"done  {key}: final {main} {value:.2f} ({minutes:.1f} min)" if isinstance(value, float)
                     else f"done  {key} ({minutes:.1f} min)", log_file)
            elif _stopped_by_sigterm(proc.returncode, rec):  # someone else stopped it: not a failure
                study.stopped_now.add(key)
                _log(f"stopped {key} by SIGTERM at step {rec['failure'].get('step')}; the next driver resumes it from "
                     f"its last checkpoint ({minutes:.1f} min)", log_file)
            else:
                failures += 1
                study.failed_now.add(key)
                reason = (rec.get("failure") or {}).get("reason", f"exit code {proc.returncode}")
                _log(f"FAIL  {key}: {reason} ({minutes:.1f} min)", log_file)
    chosen = study.selection()
    write_selection(study, chosen)
    for job in study.all_jobs(chosen):
        why = study.stale(job, chosen)
        if why:
            _log(f"stale {job.key}: {why} (delete the folder to rerun it)", log_file)
    return failures


def _stopped_by_sigterm(returncode: int, rec: dict) -> bool:
    return returncode == SIGTERM_EXIT and (rec.get("failure") or {}).get("type") == "SIGTERMException"


def _pause(study: Study, running: dict, log_file: Path | None) -> None:
    """Stop every running job with SIGTERM (each saves a checkpoint), wait for all of them, log where each stood."""
    for proc, _job, _started in running.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + PAUSE_WAIT_S
    stopped = 0
    for key, (proc, _job, started) in running.items():
        try:
            proc.wait(timeout=max(deadline - time.time(), 1.0))
        except subprocess.TimeoutExpired:  # never seen; a kill keeps the job's last evaluation checkpoint
            proc.kill()
            proc.wait()
        rec = study.record(key) or {}
        minutes = (time.time() - started) / 60
        if proc.returncode == 0 and rec.get("status") == "completed":
            _log(f"done  {key} (finished as the pause began, {minutes:.1f} min)", log_file)
            continue
        stopped += 1
        # the step it stood at; a stop when an evaluation was due keeps the previous evaluation's checkpoint instead
        where = (f"at step {rec['failure'].get('step')}" if _stopped_by_sigterm(proc.returncode, rec)
                 else f"exit code {proc.returncode}")
        _log(f"paused {key} ({where}); resumes from its last checkpoint ({minutes:.1f} min)", log_file)
    running.clear()
    study.paused = True
    left = sum(study.status(j.key) != "completed" for j in study.all_jobs(study.selection()))
    _log(f"paused: {stopped} running jobs stopped, {left} jobs not completed; rerun the driver to resume", log_file)


@contextlib.contextmanager
def _pause_on_signals(enabled: bool):
    """SIGTERM / SIGINT / SIGHUP to the driver ask for a pause (checked by the scheduling loop), not a kill."""
    asked = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: asked.append(signum)) for sig in PAUSE_SIGNALS}
    try:
        yield lambda: bool(asked)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def completed_stage_runs(study: Study) -> dict[str, tuple[str, str]]:
    """Folder key (<stage>/<task>/<row>/seed<n>) -> (row, method_label) of every completed stage run."""
    runs = {}
    for path in sorted(study.out.glob("*/*/*/seed*/results.json")):
        key = str(path.parent.relative_to(study.out))
        rec = study.record(key)
        if rec and rec.get("status") == "completed":
            runs[key] = (path.parts[-3], rec.get("method_label"))
    return runs


def row_labels(runs: dict[str, tuple[str, str]], chosen: dict) -> dict:
    """Row key (aliases included) -> the method_label its completed runs recorded."""
    labels = {}
    for row, label in runs.values():
        labels.setdefault(row, label)
    if chosen.get(BEST_INIT) in labels:
        labels[BEST_INIT] = labels[chosen[BEST_INIT]]
    return labels


def expected_cells(study: Study, chosen: dict, folder: str, labels: dict) -> tuple[list[dict], list[str]]:
    """The spec's (method_label, task, seed) cells under a stage folder, for the report's --expect, and the rows
    none of whose runs has completed yet (their label is only known from a completed record)."""
    cells, unlabelled = [], []
    for job in study.all_jobs(chosen):
        if job.stage == "pilot" or not job.key.startswith(folder + "/"):
            continue
        _stage, task, row, seed = job.key.split("/")
        if row in labels:
            cells.append({"method_label": labels[row], "task": task, "seed": int(seed.removeprefix("seed"))})
        elif row not in unlabelled:
            unlabelled.append(row)
    return cells, unlabelled


def write_reports(study: Study) -> list[str]:
    """The spec's reports (tables, comparisons, figures) from the stage folders that exist so far. Each report
    expects exactly the spec's cells of its folder (``expected.json`` beside it) and shows the rows in the spec's
    order (``--order``; a method's colour comes from its label, the same in every report). Returns the out folders
    of reports that failed (the report printed why); the other reports are still written."""
    from .report import label_pattern
    from .report import main as report_main

    runs, chosen = completed_stage_runs(study), study.selection()
    labels = row_labels(runs, chosen)
    order = [labels[row] for row in study.rows if row in labels]
    failed = []
    for report in study.spec.get("reports", []):
        folder = study.out / report["folder"]
        if not any(folder.rglob("results.json")):
            continue
        out = study.out / report.get("out", ".")
        out.mkdir(parents=True, exist_ok=True)
        cells, unlabelled = expected_cells(study, chosen, report["folder"], labels)
        (out / "expected.json").write_text(json.dumps(cells, indent=1) + "\n")
        shown = label_pattern("labels", report["labels"]) if "labels" in report else None
        present = {label for key, (_row, label) in runs.items() if key.startswith(report["folder"] + "/")
                   and (shown is None or shown.search(label))}
        args = [str(folder), "--out", str(out), "--table", "table1", "--metric", "final",
                "--expect", str(out / "expected.json")]
        for label in order:
            args += ["--order", label]
        for a, b in report.get("compare", []):
            if labels.get(a) in present and labels.get(b) in present:
                args += ["--compare", labels[a], labels[b]]
        for key in ("labels", "tasks", "curves_labels", "curves_tasks", "curves_name"):
            if key in report:
                args += ["--" + key.replace("_", "-"), str(report[key])]
        for note in report.get("notes", []):
            args += ["--note", str(note)]
        for mark in report.get("curves_marks", []):     # "STEP=TEXT": a vertical line in the learning curves
            args += ["--curves-mark", str(mark)]
        if shown is None and chosen.get(BEST_INIT) in labels and labels[chosen[BEST_INIT]] in present:
            args += ["--note", f"best initialisation by the pilot among {', '.join(study.spec['best_init_among'])} "
                               f"(the init run in every stage): {labels[chosen[BEST_INIT]]}"]
        if unlabelled and shown is None:
            args += ["--note", f"not in the table yet (no completed run): spec rows {', '.join(unlabelled)}"]
        if report_main(args) != 0:
            failed.append(str(out))
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=GRID_FILE)
    parser.add_argument("--out", type=Path, help="study folder (default: the spec's out)")
    parser.add_argument("--jobs", type=int, help="jobs side by side (default: the spec's jobs)")
    parser.add_argument("--stage", help="run only this stage (pilot, main, long, ...)")
    parser.add_argument("--dry-run", action="store_true", help="list every job with its state and command")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rewrite selection and reports")
    args = parser.parse_args(argv)
    spec = load_spec(args.grid)
    out = (args.out or REPO / spec["out"]).resolve()
    study = make_study(spec, out)
    jobs = args.jobs or int(spec.get("jobs", 1))
    if jobs < 1:
        raise SystemExit(f"error: --jobs={jobs}; expected an integer >= 1")
    if args.report_only:
        write_selection(study, study.selection())
        return _report_failures(write_reports(study))
    failures = run_study(study, jobs, dry_run=args.dry_run, only_stage=args.stage)
    if study.paused:  # unfinished, not failed; the next driver writes the reports
        return SIGTERM_EXIT
    if not args.dry_run:
        failures += _report_failures(write_reports(study))
    return 1 if failures else 0


def _report_failures(failed: list[str]) -> int:
    for out in failed:
        print(f"error: the report in {out} was not written (see the error above)", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    raise SystemExit(main())
