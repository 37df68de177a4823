"""The study driver's machinery, whatever the rules: jobs, the resumable scheduler, pause / stop, progress.

A study's *rules* (which jobs exist, how a pilot selects, which command a job runs) are a ``BaseStudy`` subclass:
``studies.v1.Study`` (the v1 CPU study) or ``studies.v2.ProtocolStudy`` (the pre-registered protocol v2). Every job
is an ordinary ``python -m dcft_lab.run`` in its own folder, so a completed run is skipped and a killed one resumes
from its checkpoint; up to ``jobs`` single-thread jobs run side by side. To stop: ``STOP`` lets the running jobs
finish; ``PAUSE``, SIGTERM, SIGHUP or Ctrl-C to the driver stops them now (Lightning's SIGTERM stop: a checkpoint at
the current batch, or the last evaluation's when an evaluation was due), and the next driver resumes them.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from ..paths import repo_root

REPO = repo_root()
BEST_INIT = "best_init"  # v1's alias row: the DCFT initialisation whose pilot scored best
STOP_FILE = "STOP"  # `touch <out>/STOP`: the driver lets running jobs finish, then exits (nothing is lost)
PAUSE_FILE = "PAUSE"  # `touch <out>/PAUSE` (or SIGTERM / SIGHUP / Ctrl-C): running jobs checkpoint and stop now
PAUSE_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PAUSE_WAIT_S = 600  # for all jobs together; a job stops after its current batch: seconds, never seen near this
LOCK_FILE = ".driver.lock"  # held (flock) by the one driver of a study folder; holds its pid
JOB_PID_FILE = ".job.pid"  # in a running job's folder: its pid (a driver killed by SIGKILL leaves its jobs running)
SIGTERM_STOP = "SIGTERMException"  # failure.type of a run Lightning stopped on SIGTERM (checkpointed, resumable)
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




def final_score(rec: dict) -> float:
    """A completed record's final main metric; -inf when it is missing or not finite (a collapsed run)."""
    value = rec.get("metrics", {}).get("final", {}).get(rec.get("main_metric"))
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def unique_jobs(jobs: list[Job]) -> list[Job]:
    """``jobs`` without repeated keys (a job listed by two stages runs once, at its first place)."""
    seen: set[str] = set()
    return [job for job in jobs if not (job.key in seen or seen.add(job.key))]


@dataclass
class BaseStudy:
    """What the scheduler needs of a study's rules; subclasses add ``selection``, ``all_jobs``, ``command``,
    ``stale``, ``resolve``, ``job_task``, ``selection_payload`` and ``pilot_markdown``."""

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

    def is_done(self, key: str) -> bool:
        """Whether job ``key`` needs no (further) run."""
        return self.status(key) == "completed"

    def pilot_score(self, job: Job) -> float | None:
        """The final held-out main metric; -inf for a run that failed in this invocation; None while pending."""
        rec = self.record(job.key)
        if rec and rec.get("status") == "completed":
            return final_score(rec)
        if job.key in self.failed_now:
            return -math.inf
        return None

    def before_start(self, job: Job, chosen: dict, log) -> bool:
        """Called before a job starts; True when the job needs no run (protocol v2 copies identical v1 runs)."""
        return False

    def ready(self, job: Job, chosen: dict) -> bool:
        return all(self.resolve(n, chosen) in chosen for n in job.needs)

    def resolve(self, row: str, chosen: dict) -> str | None:
        return row


def _log(line: str, log_file: Path | None) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = f"[{stamp}] {line}"
    print(text, flush=True)
    if log_file is not None:
        with log_file.open("a") as fh:
            fh.write(text + "\n")


def write_selection(study: BaseStudy, chosen: dict) -> None:
    study.out.mkdir(parents=True, exist_ok=True)
    payload = study.selection_payload(chosen)
    for name, text in (("selection.json", json.dumps(payload, indent=1)), ("pilot.md", study.pilot_markdown(chosen)),
                       ("progress.md", progress_markdown(study, chosen))):
        tmp = study.out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, study.out / name)


def progress_markdown(study: BaseStudy, chosen: dict) -> str:
    """Completed / planned jobs per stage row x task, and the rows not planned yet because a pilot they wait for is
    undecided (their jobs have no row, lr or alpha until then)."""
    cells: dict[tuple, list[int]] = {}   # (stage, row, task) -> [completed, planned, failed, paused]
    for job in study.all_jobs(chosen):
        task = study.job_task(job)
        cell = cells.setdefault((job.stage, job.row, task), [0, 0, 0, 0])
        status = study.status(job.key)
        # a run stopped by SIGTERM (PAUSE, preemption) kept its checkpoint: it resumes, it did not fail
        paused = status == "failed" and (study.record(job.key) or {}).get("failure", {}).get("type") == SIGTERM_STOP
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


def _job_time(study: BaseStudy, jobs: list[Job]) -> str:
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


def run_study(study: BaseStudy, jobs_at_once: int, dry_run: bool = False, poll_s: float = 5.0,
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
    with _driver_lock(study.out, enabled=not dry_run) as other, _pause_on_signals(enabled=not dry_run) as signalled:
        if other:
            print(f"another study driver is running on {study.out} ({other}); expected one driver per study "
                  f"folder (touch {study.out / PAUSE_FILE} to pause it)", file=sys.stderr)
            return 2
        try:
            return _schedule(study, jobs_at_once, dry_run, poll_s, only_stage, log_file, running,
                             pause_asked=lambda: signalled() or pause_file.exists())
        except BaseException:
            if running:
                _pause(study, running, log_file)
            raise


def _schedule(study: BaseStudy, jobs_at_once: int, dry_run: bool, poll_s: float, only_stage: str | None,
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
        todo = [j for j in jobs if not study.is_done(j.key) and j.key not in study.failed_now
                and j.key not in study.stopped_now and j.key not in running]
        if dry_run:
            for job in jobs:
                status = study.status(job.key)
                state = ("completed" if status == "completed" else "done" if study.is_done(job.key)
                         else "resumes" if status != "missing" and study.ready(job, chosen)  # paused / failed
                         else "ready" if study.ready(job, chosen) else "waits for the pilot of " + ",".join(job.needs))
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
            orphan = _live_job_pid(study.out / job.key)
            if orphan:  # left running by a driver that was killed (SIGKILL): never two processes in one folder
                study.stopped_now.add(job.key)
                _log(f"skip  {job.key}: still running as pid {orphan} from an earlier driver; stop it "
                     f"(kill -TERM {orphan}: it checkpoints) and rerun the driver", log_file)
                continue
            if study.before_start(job, chosen, lambda line: _log(line, log_file)):
                chosen = None  # a copied run may complete a pilot
                break
            folder = study.out / job.key
            folder.mkdir(parents=True, exist_ok=True)
            cmd = study.command(job, chosen)
            console = (folder / "console.log").open("a")
            # its own session: Ctrl-C in the driver's terminal reaches the driver, which stops each job cleanly
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
            (folder / JOB_PID_FILE).write_text(f"{proc.pid}\n")
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
            (study.out / key / JOB_PID_FILE).unlink(missing_ok=True)
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
    return returncode == SIGTERM_EXIT and (rec.get("failure") or {}).get("type") == SIGTERM_STOP


def _pause(study: BaseStudy, running: dict, log_file: Path | None) -> None:
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
        (study.out / key / JOB_PID_FILE).unlink(missing_ok=True)
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
def _driver_lock(out: Path, enabled: bool):
    """Hold ``out``/.driver.lock for the driver's lifetime (released by the OS however it ends); yields None, or
    "pid N" of the driver that holds it."""
    if not enabled:
        yield None
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            yield f"pid {fh.read().strip() or '?'}"
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield None


def _live_job_pid(folder: Path) -> int | None:
    """The pid in ``folder``/.job.pid when that process is alive and is a run in this folder (pids are reused)."""
    try:
        pid = int((folder / JOB_PID_FILE).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if str(folder) in cmdline else None


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
