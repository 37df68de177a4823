"""The CPU-study driver (dcft_lab.study): pilot -> selection -> stage jobs, resumable, stale runs flagged.

The scheduling loop runs against a stub runner that writes a results.json whose held-out score is a known function
of (row, lr, alpha), so the selection the driver must make is known in advance."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from dcft_lab.study import BEST_INIT, Study, load_spec, progress_markdown, run_study

REPO = Path(__file__).resolve().parents[1]

SPEC = {
    "out": "unused", "jobs": 2, "sweep_name": "t", "experiment_prefix": "table1_cpu",
    "pilot": {"experiment": "table1_cpu/mrpc", "seed": 6, "overrides": ["data.train_holdout=40"],
              "lrs": [1e-4, 1e-3], "scales": [2, 8]},
    "rows": {
        "head": {"method": ["method=none"]},
        "lora": {"method": ["method=lora"]},
        "dA": {"method": ["method=dcft"]},
        "dB": {"method": ["method=dcft", "method.init=lora"]},
        "extra": {"method": ["method=lokr"], "scale_from": BEST_INIT},
    },
    "best_init_among": ["dA", "dB"],
    "stages": [
        {"name": "pilot", "rows": ["head", "lora", "dA", "dB", "extra"]},
        {"name": "main", "tasks": ["mrpc"], "rows": ["lora", BEST_INIT, "head", "extra"], "seeds": [6, 7]},
        {"name": "long", "tasks": ["mrpc"], "rows": [BEST_INIT], "seeds": [6], "overrides": ["trainer.max_epochs=15"]},
    ],
}

# The stub's held-out score: dB beats dA; lora prefers lr 1e-3 at scale 2; "extra" fails at lr 1e-3 (diverged).
STUB = r'''
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
out = Path(args["hydra.run.dir"]); out.mkdir(parents=True, exist_ok=True)
lr, alpha = float(args["optim.lr"]), float(args.get("method.alpha", 0))
method = args["method"]
score = {"none": 60, "lora": 70, "dcft": 65 + 5 * ("method.init" in args), "lokr": 66}[method]
score += 3 * (lr == 1e-3) - alpha / 100
seed = int(args["seed"])
score += 0.5 * (seed - 6)
label = {"none": "Head only", "lora": "LoRA r=1", "dcft": "DCFT d=8 s=8 k=1" + (" init=lora" if "method.init" in args
         else ""), "lokr": "LoKr r=1 f=8"}[method]
metrics = {"accuracy": score}
record = {"status": "completed", "task": args["experiment"].rsplit("/", 1)[-1], "method": method, "method_label": label, "seed": seed,
          "backbone": "minilm", "main_metric": "accuracy", "metrics": {"final": metrics, "best": metrics},
          "params": {"adapter": 0 if method == "none" else 7488, "head": 10, "trainable": 10, "total": 100},
          "wall_time_s": 60, "wall_time_total_s": 360, "attempts": 2,
          "evaluations": [{"step": 10, "epoch": 0, "metrics": {"accuracy": score - 5}},
                          {"step": 20, "epoch": 1, "metrics": metrics}],
          "config": {"optim": {"lr": lr}, "method": {"name": method, "r": 1,
                                                     "alpha": alpha if "method.alpha" in args else None}}}
if method == "lokr" and lr == 1e-3:
    record = {"status": "failed", "failure": {"reason": "non-finite loss"}}
(out / "results.json").write_text(json.dumps(record))
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))
sys.exit(1 if record["status"] == "failed" else 0)
'''


def _study(tmp_path) -> Study:
    stub = tmp_path / "stub_run.py"
    stub.write_text(STUB)
    return Study(SPEC, tmp_path / "study", runner=(sys.executable, str(stub)))


def test_pilot_selection_stages_and_resume(tmp_path, capsys):
    study = _study(tmp_path)
    failures = run_study(study, jobs_at_once=2, poll_s=0.05)
    assert failures == 1  # lokr at lr 1e-3 failed: scored -inf, the other candidate wins
    selection = json.loads((study.out / "selection.json").read_text())["rows"]
    assert selection["lora"]["lr"] == 1e-3 and selection["lora"]["scale"] == 2 and selection["lora"]["alpha"] == 2
    assert selection["dB"]["alpha"] == 16 and selection[BEST_INIT] == "dB"
    assert selection["head"]["alpha"] is None and selection["head"]["lr"] == 1e-3
    # the scale_from row pilots learning rates only, at the scale of the row it follows (best init -> dB: 2)
    assert selection["extra"]["scale_from"] == "dB"
    assert [c["scale"] for c in selection["extra"]["candidates"]] == [2, 2]
    assert selection["extra"]["lr"] == 1e-4
    done = sorted(str(p.parent.relative_to(study.out)) for p in study.out.rglob("results.json"))
    assert "main/mrpc/dB/seed7" in done and "long/mrpc/dB/seed6" in done and "main/mrpc/dA/seed6" not in done
    assert len([d for d in done if d.startswith("pilot/")]) == 2 + 4 + 4 + 4 + 2  # head: lrs only; extra: lrs at one scale
    # stage jobs carry the selection and the stage's overrides
    argv = json.loads((study.out / "long/mrpc/dB/seed6/argv.json").read_text())
    assert {"optim.lr=0.001", "method.alpha=16", "trainer.max_epochs=15", "experiment=table1_cpu/mrpc",
            "method.init=lora", "seed=6", "run.threads=1"} <= set(argv)
    # a second invocation re-runs only what is not completed (the failed pilot candidate), nothing else
    before = {p: p.stat().st_mtime_ns for p in study.out.rglob("results.json")}
    assert run_study(_study(tmp_path), jobs_at_once=2, poll_s=0.05) == 1
    changed = [p for p in study.out.rglob("results.json") if p.stat().st_mtime_ns != before[p]]
    assert [str(p.parent.relative_to(study.out)) for p in changed] == ["pilot/extra/lr0.001_scale2"]


def test_stale_runs_are_flagged_not_deleted(tmp_path):
    study = _study(tmp_path)
    run_study(study, jobs_at_once=2, poll_s=0.05)
    record_path = study.out / "main/mrpc/lora/seed6/results.json"
    record = json.loads(record_path.read_text())
    record["config"]["optim"]["lr"] = 3e-3
    record_path.write_text(json.dumps(record))
    run_study(_study(tmp_path), jobs_at_once=1, poll_s=0.05)
    log = (study.out / "study.log").read_text()
    assert "stale main/mrpc/lora/seed6: lr 0.003 != selected 0.001" in log
    assert json.loads(record_path.read_text())["config"]["optim"]["lr"] == 3e-3  # kept


def test_stage_jobs_wait_for_their_pilot(tmp_path):
    study = _study(tmp_path)
    chosen = study.selection()
    assert chosen == {}
    jobs = study.all_jobs(chosen)
    stage_jobs = [j for j in jobs if j.stage != "pilot"]
    assert all(not study.ready(j, chosen) for j in stage_jobs)
    assert not any(j.row == BEST_INIT or j.key.startswith("pilot/extra") for j in jobs)  # unresolved: left out
    assert [j.key for j in jobs[:3]] == ["pilot/head/lr0.0001", "pilot/head/lr0.001", "pilot/lora/lr0.0001_scale2"]


def test_the_real_spec_composes(tmp_path):
    """Every job of the committed study resolves to a run config that validates, with the row's label."""
    from dcft_lab.config_schema import validate
    from helpers import compose_config

    spec = load_spec()
    study = Study(spec, tmp_path)
    # pretend every pilot finished with a score that favours the first candidate and the "lora" init
    fake = {row: {"lr": spec["pilot"]["lrs"][0], "scale": spec["pilot"]["scales"][0] if study.scaled(row) else None}
            for row in spec["rows"]}
    for row, value in fake.items():
        value["alpha"] = study.alpha(row, value["scale"])
    fake[BEST_INIT] = "dcft8_lora"
    jobs = study.all_jobs(fake)
    assert len({j.key for j in jobs}) == len(jobs)
    tasks = {j.key.split("/")[1] for j in jobs if j.stage != "pilot"}
    assert tasks == {"mrpc", "stsb", "cola", "sst2", "rte"}
    sample = {(j.stage, j.row, j.key.split("/")[1]): j for j in jobs if j.stage != "pilot"}  # one per stage/row/task
    sample = [next(j for j in jobs if j.stage == "pilot")] + [sample[k] for k in sorted(sample)][::3]
    for job in sample:  # a spread of jobs: each composition takes a second or two
        args = [a for a in study.command(job, fake)[len(study.runner):] if not a.startswith(("hydra.", "sweep_name"))]
        rc = validate(compose_config(args))
        assert rc.backbone.name == "minilm" and rc.task.train_batch_size == 32
        if job.stage == "pilot":
            assert rc.data.train_holdout == 400
        method = rc.method  # validate() keeps the Method object
        assert ("init=lora" in method.label) == (job.row == "dcft8_lora")
        # the run's own update scale is the one the study chose (alpha = scale x the method's denominator)
        assert method.update_scale == (job.scale if job.stage == "pilot" else fake[job.row]["scale"])


def test_a_rows_alpha_is_its_methods_denominator_times_the_scale(tmp_path):
    """alpha = scale x the denominator of the row's method (dcft_lab.method_scale, on the row's composed method):
    exactly the per-row factors grid.yaml spelled out before (alpha_per_scale), so no job's command line changed."""
    study = Study(load_spec(), tmp_path)
    before = {"head": None, "lora": 1, "dcft8": 8, "dcft8_zero": 8, "dcft8_lora": 8, "dcft8_orthonormal": 8,
              "dcft2": 8, "adalora": 2, "lokr": 1}
    assert {row: study.alpha(row, 1) for row in study.rows} == before
    assert [row for row in study.rows if not study.scaled(row)] == ["head"]
    assert study.alpha("adalora", 8) == 16.0 and study.alpha("lora", None) is None
    bad = Study({**SPEC, "rows": {"typo": {"method": ["method=lorra"]}}}, tmp_path)
    with pytest.raises(ValueError, match=r"^study row 'typo': method=lorra: no such option \(did you mean lora"):
        bad.pilot_jobs("typo")


def test_the_cola_lr_supplement_reuses_the_main_rows_and_composes(tmp_path):
    """The CoLA learning-rate supplement must run the main study's rows unchanged (else its numbers would not answer
    whether the lr alone explains the main table's CoLA cells), and its pilot must select on CoLA's training split."""
    from dcft_lab.config_schema import validate
    from dcft_lab.study import GRID_FILE
    from helpers import compose_config

    main, spec = load_spec(), load_spec(GRID_FILE.parent / "cola_lr.yaml")
    assert spec["rows"] and all(spec["rows"][row] == main["rows"][row] for row in spec["rows"])
    assert spec["pilot"]["scales"] == [8] and spec["experiment_prefix"] == main["experiment_prefix"]
    study = Study(spec, tmp_path)
    pilot = study.pilot_jobs("dcft8_zero")
    assert [j.lr for j in pilot] == spec["pilot"]["lrs"]
    args = [a for a in study.command(pilot[0], {})[len(study.runner):] if not a.startswith(("hydra.", "sweep_name"))]
    rc = validate(compose_config(args))
    assert (rc.task.name, rc.data.train_holdout, rc.method.init, rc.method.alpha) == ("cola", 1000, "zero", 64)


def test_stop_file_lets_running_jobs_finish_and_starts_nothing_new(tmp_path):
    study = _study(tmp_path)
    study.out.mkdir(parents=True)
    # a stub that creates STOP while it runs: the two jobs started with it finish, nothing else starts
    stub = tmp_path / "stub_run.py"
    stub.write_text(STUB.replace("sys.exit(", f"Path({str(study.out / 'STOP')!r}).touch()\nsys.exit("))
    assert run_study(study, jobs_at_once=2, poll_s=0.05) == 0
    assert len(list(study.out.rglob("results.json"))) == 2
    assert "STOP found: stopped with" in (study.out / "study.log").read_text()
    # the next driver removes the stale file and goes on
    stub.write_text(STUB)
    run_study(_study(tmp_path), jobs_at_once=2, poll_s=0.05)
    assert not (study.out / "STOP").exists() and (study.out / "long/mrpc/dB/seed6/results.json").exists()


# A stub job that waits to be stopped: on SIGTERM it records Lightning's graceful stop (status failed, type
# SIGTERMException, the step it stood at) and exits 143, as dcft_lab.run does.
STOPPABLE = r"""
import json, os, signal, sys, time
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
out = Path(args["hydra.run.dir"]); out.mkdir(parents=True, exist_ok=True)
def stop(signum, frame):
    (out / "results.json").write_text(json.dumps({"status": "failed", "failure": {
        "type": "SIGTERMException", "reason": "stopped by SIGTERM at step 3", "step": 3}}))
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
ASK
time.sleep(60)  # not stopped: the test fails on its log, not by hanging
"""


# Both jobs have their SIGTERM handler before either asks for the pause (a job signalled earlier dies at once).
BOTH_ARMED = ("(out / 'armed').touch()\nwhile len(list(out.parents[2].rglob('armed'))) < 2: time.sleep(0.02)\n")


def _stoppable_study(tmp_path, ask: str) -> Study:
    study = _study(tmp_path)  # writes stub_run.py (the ordinary stub, which ASK may run)
    stub = tmp_path / "stoppable.py"
    stub.write_text(STOPPABLE.replace("ASK", ask))
    return Study(SPEC, study.out, runner=(sys.executable, str(stub)))


def test_pause_file_stops_the_running_jobs_at_a_checkpoint_and_the_next_driver_resumes_them(tmp_path):
    study = _stoppable_study(tmp_path, BOTH_ARMED + f"Path({str(tmp_path / 'study' / 'PAUSE')!r}).touch()")
    assert run_study(study, jobs_at_once=2, poll_s=0.05) == 0 and study.paused  # a pause is not a failure
    stopped = sorted(str(p.parent.relative_to(study.out)) for p in study.out.rglob("results.json"))
    assert len(stopped) == 2  # the two running jobs, nothing else started
    log = (study.out / "study.log").read_text()
    for key in stopped:
        assert f"paused {key} (at step 3); resumes from its last checkpoint" in log
        assert json.loads((study.out / key / "results.json").read_text())["failure"]["type"] == "SIGTERMException"
    assert "paused: 2 running jobs stopped, 20 jobs not completed" in log and "FAIL" not in log
    progress = (study.out / "progress.md").read_text()  # paused, not failed
    assert "; 2 paused (they resume from their checkpoints)." in progress and "failed" not in progress
    assert progress.count(", 1 paused |") + 2 * progress.count(", 2 paused |") == 2
    # the next driver removes the stale PAUSE file, resumes the two stopped jobs and goes on to the end
    assert run_study(_study(tmp_path), jobs_at_once=2, poll_s=0.05) == 1  # the stub's one designed failure
    assert "removed a stale PAUSE file" in (study.out / "study.log").read_text()
    assert all(json.loads((study.out / key / "results.json").read_text())["status"] == "completed" for key in stopped)
    assert (study.out / "long/mrpc/dB/seed6/results.json").exists()


def test_sigterm_to_the_driver_pauses_it_and_restores_the_signal_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    study = _stoppable_study(tmp_path, BOTH_ARMED + "os.kill(os.getppid(), signal.SIGTERM)")  # the job signals its driver
    assert run_study(study, jobs_at_once=2, poll_s=0.05) == 0 and study.paused
    log = (study.out / "study.log").read_text()
    assert log.count("(at step 3); resumes from its last checkpoint") == 2 and "paused: 2 running jobs stopped" in log
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_an_error_in_the_driver_stops_its_jobs_instead_of_orphaning_them(tmp_path, monkeypatch):
    import dcft_lab.studies.scheduler as study_module

    study = _stoppable_study(tmp_path, BOTH_ARMED)  # the jobs wait for SIGTERM

    log, raised = study_module._log, []

    def failing_log(message, log_file):  # once both jobs run: an unexpected error in the driver's loop
        log(message, log_file)
        if message.startswith("start ") and len(list(study.out.rglob("console.log"))) == 2 and not raised:
            while len(list(study.out.rglob("armed"))) < 2:
                time.sleep(0.02)
            raised.append(1)
            raise RuntimeError("boom")

    monkeypatch.setattr(study_module, "_log", failing_log)
    with pytest.raises(RuntimeError, match="boom"):
        run_study(study, jobs_at_once=2, poll_s=0.05)
    records = [json.loads(p.read_text()) for p in study.out.rglob("results.json")]
    assert len(records) == 2 and all(r["failure"]["type"] == "SIGTERMException" for r in records)
    assert "paused: 2 running jobs stopped" in (study.out / "study.log").read_text()


def test_a_job_stopped_by_sigterm_from_outside_is_not_a_failure_and_not_restarted(tmp_path):
    # one pilot job is stopped by someone else (its own SIGTERM here); the driver goes on with the rest
    study = _stoppable_study(tmp_path, "if 'lr0.0001_scale2' in str(out) and 'lora' in str(out): os.kill(os.getpid(), "
                                       "signal.SIGTERM)\nexec(Path(__file__).with_name('stub_run.py').read_text())")
    failures = run_study(study, jobs_at_once=2, poll_s=0.05)
    log = (study.out / "study.log").read_text()
    assert "stopped pilot/lora/lr0.0001_scale2 by SIGTERM at step 3; the next driver resumes it" in log
    assert "1 jobs were stopped by SIGTERM and not restarted by this driver: ['pilot/lora/lr0.0001_scale2']" in log
    assert log.count("start pilot/lora/lr0.0001_scale2") == 1 and not study.paused
    assert failures == 1 and log.count("FAIL") == 1  # only the stub's designed failure (extra at lr 1e-3)
    assert not (study.out / "main/mrpc/lora").exists()  # lora's pilot is incomplete: its stage jobs wait


def test_pilot_markdown_marks_the_choice(tmp_path):
    study = _study(tmp_path)
    run_study(study, jobs_at_once=2, poll_s=0.05)
    text = (study.out / "pilot.md").read_text()
    assert "| **lora** | **0.001** | **2** | **2** | **72.98** |" in text  # 70 + 3 (lr) - 2/100 (alpha)
    assert "| extra | 0.001 | 2 | 2 | failed |" in text
    assert "Best DCFT initialisation" in text and "**dB**" in text


def test_progress_counts_completed_and_planned_runs_and_names_undecided_rows(tmp_path):
    study = _study(tmp_path)
    before = progress_markdown(study, study.selection())
    assert "| pilot | head | 0/2 |\n" in before and "| pilot | lora | 0/4 |\n" in before  # 2 lrs (x 2 scales)
    assert "| main | lora | 0/2 |" in before and "| long |" not in before   # long's only row is the undecided init
    assert "Completed: 0 of 20 planned runs." in before                 # 14 pilot + 3 main rows x 2 seeds
    assert "Not planned yet (a pilot they wait for is undecided): extra (pilot), best_init (main), " \
           "best_init (long)." in before
    run_study(study, jobs_at_once=2, poll_s=0.05, only_stage="pilot")
    after = (study.out / "progress.md").read_text()                    # the driver keeps it current
    assert "| pilot | extra | 1/2, 1 failed |" in after                 # the stub fails extra at lr 1e-3
    assert "| main | dB (best_init) | 0/2 |" in after and "| long | dB (best_init) | 0/1 |" in after
    assert "Completed: 15 of 25 planned runs; 1 failed." in after and "Not planned yet" not in after
    assert "Job time of the completed runs: 1.5 h, summed over runs (2 ran side by side" in after  # 15 x 360 s
    # a resumed run recorded before the total over attempts existed counts its last attempt, and is named as such
    path = study.out / "pilot/head/lr0.001/results.json"
    record = json.loads(path.read_text())
    del record["wall_time_total_s"]
    path.write_text(json.dumps(record))
    again = progress_markdown(study, study.selection())
    assert "Job time of the completed runs: 1.5 h" not in again and "1.4 h" in again  # 14 x 360 + 60 s
    assert "; 1 runs resumed before the records kept a total over attempts count their last attempt only." in again


def test_reports_compare_rows_by_their_recorded_labels(tmp_path, capsys):
    from dcft_lab.study import write_reports

    spec = {**SPEC, "reports": [{"folder": "main", "out": ".", "compare": [[BEST_INIT, "lora"], ["dA", "lora"]],
                                 "notes": ["RTE: one seed per row; majority class 52.71%"]},
                                {"folder": "long", "out": "long", "curves_name": "long_curves.png"}],
            # an earlier study of the same cells (here: itself), side by side in v0_vs_study.md
            "compare_with": {"root": str(tmp_path / "study"), "name": "v0", "gaps": [["lora", "head"]]}}
    stub = tmp_path / "stub_run.py"
    stub.write_text(STUB)
    study = Study(spec, tmp_path / "study", runner=(sys.executable, str(stub)))
    run_study(study, jobs_at_once=2, poll_s=0.05)
    assert write_reports(study) == []
    side = (study.out / "v0_vs_study.md").read_text()
    assert "| lora | mrpc |" in side and "| nothing |" in side and "## lora − head, paired by seed" in side
    table = (study.out / "table.md").read_text()
    assert "DCFT d=8 stride=8 k=1 init=lora vs LoRA r=1" in table  # best_init resolved to dB's label (as shown)
    assert "DCFT d=8 stride=8 k=1 vs" not in table  # dA has no main runs: that comparison is left out, not an error
    assert "Note: RTE: one seed per row; majority class 52.71%" in table  # the spec's notes reach the table
    assert "Note: RTE" not in (study.out / "long" / "table.md").read_text()  # ... of that report only
    assert (study.out / "curves.png").stat().st_size > 0 and (study.out / "long" / "long_curves.png").exists()
    # a main run made at another point than the selection is not a result: its report fails, naming it
    record = study.out / "main/mrpc/lora/seed6/results.json"
    rec = json.loads(record.read_text())
    rec["config"]["optim"]["lr"] = 0.5
    record.write_text(json.dumps(rec))
    assert write_reports(study) == [str(study.out)]
    assert "report main: 1 stale run(s), e.g. main/mrpc/lora/seed6 (" in capsys.readouterr().err


def test_reports_expect_the_specs_cells_in_the_specs_order(tmp_path):
    """Each report expects exactly its folder's jobs (no phantom "missing" cells for rows a task never runs, no
    "(1/2)" for a one-seed stage), lists rows in the spec's order, and a --labels/--tasks report shows only those."""
    from dcft_lab.study import write_reports

    spec = json.loads(json.dumps(SPEC))
    spec["stages"] = [
        {"name": "pilot", "rows": ["head", "lora", "dA", "dB", "extra"]},
        {"name": "main", "tasks": ["mrpc", "stsb"], "rows": ["lora", "head", "dA", BEST_INIT], "seeds": [6, 7]},
        {"name": "main", "tasks": ["mrpc"], "rows": ["extra"], "seeds": [6, 7]},
        {"name": "main", "tasks": ["rte"], "rows": ["lora"], "seeds": [6]},
    ]
    spec["reports"] = [{"folder": "main", "out": ".", "compare": [["extra", "lora"]]},
                       {"folder": "main", "out": "init", "labels": "^DCFT", "tasks": "stsb",
                        "compare": [["dB", "dA"], ["extra", "lora"]]}]
    stub = tmp_path / "stub_run.py"
    stub.write_text(STUB)
    study = Study(spec, tmp_path / "study", runner=(sys.executable, str(stub)))
    run_study(study, jobs_at_once=2, poll_s=0.05)
    write_reports(study)
    cells = json.loads((study.out / "expected.json").read_text())
    assert len(cells) == 4 * 2 * 2 + 2 + 1 and {"method_label": "LoRA r=1", "task": "rte", "seed": 6} in cells
    table = (study.out / "table.md").read_text()
    first_table = lambda md: md.split("\n| method |")[1].split("\n\n")[0]     # noqa: E731
    row_names = lambda md: [line.split(" | ")[0].strip("| ") for line in first_table(md).splitlines()[2:]]  # noqa: E731
    rows = row_names(table)
    assert rows == ["Head only", "LoRA r=1", "DCFT d=8 stride=8 k=1", "DCFT d=8 stride=8 k=1 init=lora", "LoKr r=1 f=8"]
    assert "(n=1)" in table and "(1/" not in table and "(0/" not in table
    assert table.split("## Missing or failed runs")[1].strip().startswith("None.")
    assert "Note: best initialisation by the pilot among dA, dB (the init run in every stage): " \
           "DCFT d=8 stride=8 k=1 init=lora" in table
    compared = table.split("## LoKr r=1 f=8 vs LoRA r=1")[1]
    assert "| mrpc |" in compared and "| stsb |" not in compared and "| rte |" not in compared
    init = (study.out / "init" / "table.md").read_text()
    assert row_names(init) == ["DCFT d=8 stride=8 k=1", "DCFT d=8 stride=8 k=1 init=lora"]
    assert first_table(init).splitlines()[0].endswith("| stsb | avg |")                # the one task asked for
    assert "LoKr r=1 f=8 vs" not in init                                                # outside --labels


def test_a_failing_report_is_named_and_fails_the_study_but_not_the_other_reports(tmp_path, capsys):
    from dcft_lab.study import main, write_reports

    spec = {**SPEC, "reports": [{"folder": "main", "out": "bad", "curves_tasks": "sst2"},  # no sst2 run: error
                                {"folder": "main", "out": "good"}]}
    stub = tmp_path / "stub_run.py"
    stub.write_text(STUB)
    study = Study(spec, tmp_path / "study", runner=(sys.executable, str(stub)))
    run_study(study, jobs_at_once=2, poll_s=0.05)
    assert write_reports(study) == [str(study.out / "bad")]
    assert (study.out / "good" / "table.md").exists() and not (study.out / "bad" / "table.md").exists()
    grid = tmp_path / "grid.yaml"
    grid.write_text(json.dumps({"cpu": {"study": {**spec, "out": str(study.out)}}}))   # JSON is YAML
    capsys.readouterr()
    assert main(["--grid", str(grid), "--report-only"]) == 1
    assert f"the report in {study.out / 'bad'} was not written" in capsys.readouterr().err


def test_an_optimum_on_the_edge_of_the_lrs_extends_the_pilot(tmp_path):
    """The best candidate at the largest (smallest) lr tried adds the next larger (smaller) rate of extend_lrs at
    its scale, until the best is interior or the list is spent; an interior optimum adds nothing."""
    spec = json.loads(json.dumps(SPEC))
    spec["pilot"]["extend_lrs"] = [1e-5, 1e-2, 1e-1]
    spec["rows"] = {"lora": SPEC["rows"]["lora"], "head": SPEC["rows"]["head"], "lokr": {"method": ["method=lokr"]}}
    spec["stages"] = [{"name": "pilot", "rows": ["lora", "head", "lokr"]}]
    spec.pop("best_init_among")
    # lora: the score rises with lr (1e-1 best, past the list: it stays the choice); head: 1e-3 best at the upper
    # edge, 1e-2 is worse (stop: 1e-3 interior); lokr: 1e-3 diverges, 1e-4 is the lower edge, 1e-5 ties (first wins)
    stub = tmp_path / "stub_run.py"
    stub.write_text(STUB.replace('score += 3 * (lr == 1e-3) - alpha / 100',
                                 'import math\nscore += (10 * math.log10(lr) if method == "lora" else '
                                 '3 * (lr == 1e-3) - 2 * (lr == 1e-2)) - alpha / 100'))
    study = Study(spec, tmp_path / "study", runner=(sys.executable, str(stub)))
    run_study(study, jobs_at_once=2, poll_s=0.05)
    chosen = json.loads((study.out / "selection.json").read_text())["rows"]
    assert [c["lr"] for c in chosen["lora"]["candidates"]] == [1e-4, 1e-3, 1e-4, 1e-3, 1e-2, 1e-1]
    assert [c["scale"] for c in chosen["lora"]["candidates"]][4:] == [2, 2]  # scale 2: alpha 2 costs less
    assert chosen["lora"]["lr"] == 1e-1
    assert [c["lr"] for c in chosen["head"]["candidates"]] == [1e-4, 1e-3, 1e-2] and chosen["head"]["lr"] == 1e-3
    assert [c["lr"] for c in chosen["lokr"]["candidates"]] == [1e-4, 1e-3, 1e-4, 1e-3, 1e-5]
    assert chosen["lokr"]["lr"] == 1e-4 and chosen["lokr"]["scale"] == 2
    assert "| **lora** | **0.1** | **2** | **2** |" in (study.out / "pilot.md").read_text()  # the extension is listed


def test_commit_study_runs_commits_completed_runs_only(tmp_path):
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "scripts" / "commit_study_runs.sh", repo / "scripts")
    out = repo / "results" / "s"
    for key, status in (("pilot/a", "completed"), ("pilot/b", "running"), ("main/c", "failed")):
        (out / key).mkdir(parents=True)
        (out / key / "results.json").write_text(json.dumps({"status": status}))
    (out / "progress.md").write_text("x\n")

    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "user.email", "a@b")
    git("config", "user.name", "a")
    done = subprocess.run(["bash", "scripts/commit_study_runs.sh", "results/s"], cwd=repo, capture_output=True,
                          text=True, check=True)
    assert "committed (1 completed runs in results/s)" in done.stdout
    assert sorted(git("ls-files").split()) == ["results/s/pilot/a/results.json", "results/s/progress.md"]
    again = subprocess.run(["bash", "scripts/commit_study_runs.sh", "results/s"], cwd=repo, capture_output=True,
                           text=True, check=True)
    assert again.stdout.strip() == "nothing new"
