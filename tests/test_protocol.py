"""Study protocol v2 (dcft_lab.protocol): standard errors, the tolerance rule, edge extension on both axes, per-task
pilots, fixed points, and reuse of identical runs. The driver runs against a stub whose held-out score is a known
function of (task, row, lr, ratio), so every choice it must make is known in advance."""

from __future__ import annotations

import json
import math
import sys

import pytest

from dcft_lab.data.tasks import get_task
from dcft_lab.studies.v2 import (
    Candidate,
    ProtocolStudy,
    axis_values,
    edge_extensions,
    same_config,
    select,
    standard_error,
)
from dcft_lab.study import load_spec, make_study, run_study

# ------------------------------------------------------------------------------------------- the rules themselves


def test_standard_error_hand_computed():
    # accuracy 75% on 400: sqrt(.75 * .25 / 400) = 0.0216506 -> 2.16506 points
    assert standard_error("accuracy", 75.0, 400) == pytest.approx(2.1650635, rel=1e-6)
    # Pearson 0.85 on 750: (1 - .7225) / sqrt(750) = 0.2775 / 27.386128 -> 1.0132867 points
    assert standard_error("pearson", 85.0, 750) == pytest.approx(1.0132867, rel=1e-6)
    # Matthews 0 on 1000: 1 / sqrt(1000) -> 3.1623 points
    assert standard_error("matthews_correlation", 0.0, 1000) == pytest.approx(3.1622777, rel=1e-6)
    # by the names the runs record (TaskSpec.main_metric): CoLA's MCC 40 on 1000 is a correlation,
    # (1 - .16) / sqrt(1000) = 2.6563 points, not the proportion formula's 1.549
    assert standard_error(get_task("cola").main_metric, 40.0, 1000) == pytest.approx(2.6563132, rel=1e-6)
    assert standard_error(get_task("stsb").main_metric, 85.0, 750) == pytest.approx(1.0132867, rel=1e-6)
    assert standard_error(get_task("mrpc").main_metric, 75.0, 400) == pytest.approx(2.1650635, rel=1e-6)
    assert standard_error(get_task("sst2").main_metric, 75.0, 400) == pytest.approx(2.1650635, rel=1e-6)
    assert standard_error("accuracy", 75.0, 0) == 0.0
    assert standard_error("accuracy", -math.inf, 400) == 0.0


def test_tolerance_picks_the_lowest_lr_within_one_se():
    cands = [Candidate(3e-4, 1, 70.0), Candidate(1e-3, 1, 74.0), Candidate(3e-3, 1, 75.0), Candidate(1e-2, 1, 75.25)]
    best, chosen = select(cands, se=2.2)
    assert (best.lr, chosen.lr) == (1e-2, 1e-3)  # v1's case: a one-pair win no longer moves the choice up
    best, chosen = select(cands, se=0.0)  # no tolerance: the best
    assert chosen == best
    # at the lowest lr within tolerance, the higher score wins, whatever the ratio
    cands = [Candidate(1e-3, 1, 74.0), Candidate(1e-3, 16, 74.5), Candidate(3e-3, 4, 75.0)]
    assert select(cands, se=1.0)[1] == Candidate(1e-3, 16, 74.5)


def test_edge_extensions_both_axes():
    lrs, ratios = [3e-4, 1e-3, 3e-3], [1, 4, 16]
    grid = [Candidate(lr, r, 0.0) for r in ratios for lr in lrs]
    lr_axis, ratio_axis = axis_values(lrs, [1e-4, 1e-2]), axis_values(ratios, [0.25, 64])
    inner = Candidate(1e-3, 4, 0.0)
    assert edge_extensions(grid, [inner], lr_axis, ratio_axis) == []
    corner = Candidate(3e-3, 16, 0.0)
    assert edge_extensions(grid, [corner], lr_axis, ratio_axis) == [(1e-2, 16), (3e-3, 64)]
    low = Candidate(3e-4, 1, 0.0)
    assert edge_extensions(grid, [low], axis_values(lrs, [1e-5, 1e-4, 1e-2]), axis_values(ratios, [0.0625, 0.25])
                           ) == [(1e-4, 1), (3e-4, 0.25)]
    # an axis that has run out leaves the point on its edge; a row without the ratio axis extends lr only
    assert edge_extensions(grid, [corner], lrs, ratios) == []
    head = [Candidate(lr, None, 0.0) for lr in (1e-4, 3e-4)]
    assert edge_extensions(head, [head[0]], axis_values([1e-4, 3e-4], [3e-5]), None) == [(3e-5, None)]


def test_edge_extensions_never_skip_a_grid_value():
    # a point found by an extension sits alone on its other line: both of its edges move to the adjacent values
    # of the whole axis (grid and extensions), not to the next value of the extension list
    lrs, ratios = [3e-4, 1e-3, 3e-3], [1, 4, 16]
    lr_axis = axis_values(lrs, [1e-5, 3e-5, 1e-4, 1e-2, 3e-2, 1e-1])
    ratio_axis = axis_values(ratios, [0.0625, 0.25, 64, 256, 1024])
    cands = [Candidate(lr, r, 0.0) for r in ratios for lr in lrs] + [Candidate(3e-3, 0.25, 0.0),
                                                                      Candidate(1e-4, 4, 0.0)]
    assert edge_extensions(cands, [Candidate(3e-3, 0.25, 0.0)], lr_axis, ratio_axis) == [(1e-2, 0.25),
                                                                                      (1e-3, 0.25), (3e-3, 0.0625)]
    assert edge_extensions(cands, [Candidate(1e-4, 4, 0.0)], lr_axis, ratio_axis) == [(3e-5, 4), (1e-4, 16),
                                                                                    (1e-4, 1)]
    # head-only's lrs [1e-4, 3e-4, 1e-3] reach 3e-3 before 1e-2; full fine-tuning's 1e-4 reaches 3e-4
    assert edge_extensions([Candidate(v, None, 0.0) for v in (1e-4, 3e-4, 1e-3)], [Candidate(1e-3, None, 0.0)],
                           lr_axis, None) == [(3e-3, None)]


def test_same_config_fills_new_keys_with_their_defaults():
    old = {"seed": 6, "method": {"name": "lora"}, "optim": {"lr": 1e-3}, "data": {"root": "/a", "train_holdout": 400},
           "trainer": {"max_epochs": 3}}
    new = {"seed": 6, "method": {"name": "lora"}, "optim": {"lr": 1e-3, "head_lr": 1e-3, "factor_lr_ratio": 1.0},
           "data": {"root": "/b", "train_holdout": 400}, "trainer": {"max_epochs": 3}}
    assert same_config(old, new) is None  # head_lr = lr and ratio 1 were v1's behaviour; the data root is a path
    assert same_config(old, {**new, "optim": {**new["optim"], "head_lr": 3e-4}}) == "optim.head_lr: 0.001 != 0.0003"
    assert same_config(old, {**new, "seed": 7}) == "seed: 6 != 7"
    assert "factor_lr_ratio" in same_config(old, {**new, "optim": {**new["optim"], "factor_lr_ratio": 4.0}})


# ------------------------------------------------------------------------------------------- the driver, end to end

SPEC = {
    "protocol": "v2", "out": "unused", "jobs": 2, "sweep_name": "t", "experiment_prefix": "table1_cpu",
    "head_lr": 1e-3,
    "pilot": {"seed": 6, "tasks": {"mrpc": ["data.train_holdout=400"], "stsb": ["data.train_holdout=750"]},
              "lrs": [1e-4, 1e-3], "ratios": [1, 4], "extend_lrs": [1e-5, 1e-2, 1e-1], "extend_ratios": [0.25, 16, 64]},
    "rows": {
        "head": {"method": ["method=none"], "ratio_axis": False, "head_lr": False, "lrs": [1e-4, 1e-3]},
        "lora": {"method": ["method=lora"]},
        "dcft": {"method": ["method=dcft"]},
        "dcft_noorth": {"method": ["method=dcft", "method.orth_reg_weight=0"], "pilot": False},
    },
    "stages": [
        {"name": "points", "points": [{"row": "dcft_noorth", "task": "mrpc", "lr": 1e-2, "ratio": 1}]},
        {"name": "pilot", "tasks": ["mrpc", "stsb"], "rows": ["head", "lora", "dcft"]},
        {"name": "main", "tasks": ["mrpc", "stsb"], "rows": ["head", "lora", "dcft"], "seeds": [6, 7]},
    ],
}

# Held-out score (n = 400 or 750 examples, accuracy): per row and task a known surface over (lr, ratio).
#  lora@mrpc: 80 - |log10(lr) + 3| * 4 + ratio/100 -> best lr 1e-3 (interior after extension to 1e-2), ratio rises to
#             64 (the ratio edge is extended to the end of its list); se at ~80.6 on 400 = 1.98: lr 1e-4 (76.6) is out.
#  dcft@mrpc: rises with lr up to 1e-2 (78), then diverges (1e-1 fails): the chosen point is interior because 1e-1
#             was tried; best ratio 1 (0.25 and 4 are worse); se of 78 on 400 = 2.07, so 1e-3 (74) is out.
#  dcft@stsb: flat within 0.5 over every lr: the tolerance picks the lowest lr, and the lr axis extends down to 1e-5.
STUB = r'''
import json, math, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
out = Path(args["hydra.run.dir"]); out.mkdir(parents=True, exist_ok=True)
lr, ratio = float(args["optim.lr"]), float(args.get("optim.factor_lr_ratio", 1))
method, task = args["method"], args["experiment"].rsplit("/", 1)[-1]
n = 400 if task == "mrpc" else 750
x = math.log10(lr)
if method == "none":
    score = 60 - abs(x + 3.5)
elif method == "lora":
    score = 80 - abs(x + 3) * 4 + ratio / 100
elif task == "mrpc":
    score = 70 + (x + 4) * 4 - abs(math.log2(ratio)) / 10
else:
    score = 85 - 0.1 * abs(x + 3) - abs(math.log2(ratio)) / 100
status = "failed" if method == "dcft" and lr >= 0.1 else "completed"
failure = {"type": "NonFiniteLossError", "reason": "non-finite training loss (nan) at step 3"}
record = {"status": status, "failure": failure if status == "failed" else None, "main_metric": "accuracy",
          "metrics": {"final": {"accuracy": score}},
          "data": {"counts": {"validation": n}}, "method_label": method, "seed": int(args["seed"]),
          "config": {"optim": {"lr": lr, "factor_lr_ratio": ratio, "head_lr": float(args["optim.head_lr"])
                               if "optim.head_lr" in args else None}}}
(out / "results.json").write_text(json.dumps(record))
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))
sys.exit(0 if status == "completed" else 1)
'''


@pytest.fixture()
def study(tmp_path) -> ProtocolStudy:
    stub = tmp_path / "stub_run.py"
    stub.write_text(STUB)
    return ProtocolStudy(SPEC, tmp_path / "study", runner=(sys.executable, str(stub)))


def test_driver_per_task_two_axis_selection(study):
    run_study(study, jobs_at_once=2, poll_s=0.02)
    payload = json.loads((study.out / "selection.json").read_text())
    assert payload["protocol"] == "v2" and "within" not in payload["rule"] and "b - se" in payload["rule"]
    rows = payload["rows"]
    assert set(rows) == {f"{r}@{t}" for r in ("head", "lora", "dcft") for t in ("mrpc", "stsb")}

    lora = rows["lora@mrpc"]
    assert (lora["lr"], lora["ratio"], lora["head_lr"]) == (1e-3, 64, 1e-3)
    assert lora["on_edge"] == ["ratio"]  # extend_ratios ran out at 64: the write-up must say so
    assert {(c["lr"], c["ratio"]) for c in lora["candidates"]} >= {(1e-2, 4), (1e-3, 16), (1e-3, 64)}

    dcft = rows["dcft@mrpc"]
    assert dcft["best"]["lr"] == 1e-2 and dcft["on_edge"] == []  # 1e-1 diverged: tried, scored -inf
    assert any(c["lr"] == 0.1 and c["score"] == -math.inf for c in dcft["candidates"])
    # se of 78 on 400 = 2.07: 1e-3 (76.0) is out, so the tolerance keeps 1e-2
    assert dcft["lr"] == 1e-2 and dcft["se"] == pytest.approx(standard_error("accuracy", 78.0 - 0.01, 400), rel=1e-3)

    flat = rows["dcft@stsb"]  # flat surface: the lowest lr within one se, which extends the lr axis to its end
    assert flat["lr"] == 1e-5 and flat["on_edge"] == ["lr"]
    assert rows["head@mrpc"]["ratio"] is None and rows["head@mrpc"]["head_lr"] is None

    # stage runs carry their own task's choice; adapter rows' heads at the shared head_lr, head-only at its lr
    argv = json.loads((study.out / "main/stsb/dcft/seed7/argv.json").read_text())
    assert "optim.lr=1e-05" in argv and "optim.head_lr=0.001" in argv and "optim.factor_lr_ratio=1" in argv
    head_argv = json.loads((study.out / "main/mrpc/head/seed6/argv.json").read_text())
    assert not any(a.startswith(("optim.head_lr", "optim.factor_lr_ratio")) for a in head_argv)
    # the fixed point ran on the pilot data with the orthogonality weight at 0
    point = json.loads((study.out / "pilot/mrpc/dcft_noorth/lr0.01_ratio1/argv.json").read_text())
    assert "method.orth_reg_weight=0" in point and "data.train_holdout=400" in point

    pilot_md = (study.out / "pilot.md").read_text()
    assert "chosen (best" in pilot_md and "| dcft | 0.1 | 1 | 0.001 | diverged |" in pilot_md
    assert all(study.stale(j, study.selection()) is None for j in study.all_jobs(study.selection()))
    # a completed stage run at another point than the selection is reported stale (never deleted)
    rec_path = study.out / "main/mrpc/lora/seed6/results.json"
    rec = json.loads(rec_path.read_text())
    rec["config"]["optim"]["head_lr"] = 3e-4
    rec_path.write_text(json.dumps(rec))
    job = next(j for j in study.all_jobs(study.selection()) if j.key == "main/mrpc/lora/seed6")
    assert study.stale(job, study.selection()) == "head_lr 0.0003 != selected 0.001"


def test_make_study_picks_the_protocol(tmp_path):
    assert isinstance(make_study(SPEC, tmp_path), ProtocolStudy)
    with pytest.raises(SystemExit, match="protocol 'v3'"):
        make_study({**SPEC, "protocol": "v3"}, tmp_path)


def test_committed_v2_grid_is_well_formed(tmp_path):
    from pathlib import Path

    spec = load_spec(Path(__file__).resolve().parents[1] / "experiments/table1/cpu_v2.yaml")
    study = make_study(spec, tmp_path)
    jobs = study.all_jobs({})
    keys = {j.key for j in jobs}
    # 3 x 3 grids per (row, task) for the adapter rows, lr-only for head-only, the two fixed points
    assert "pilot/mrpc/dcft8/lr0.001_ratio16" in keys and "pilot/sst2/lora/lr0.003_ratio4" in keys
    assert "pilot/mrpc/dcft8_noorth/lr0.01_ratio1" in keys and "pilot/cola/head/lr0.0001" in keys
    seeds = {(j.key.split("/")[1], j.row) for j in jobs if j.stage == "main" and j.key.endswith("seed10")}
    assert seeds == {("stsb", "lora"), ("stsb", "dcft8"), ("sst2", "lora"), ("sst2", "dcft8")}
    assert all(study.rows[j.row].get("ratio_axis", True) == (j.scale is not None) for j in jobs if j.stage == "pilot")


def test_reuse_copies_only_an_identical_run(tmp_path):
    """A completed run of reuse_from whose recorded config is the job's (new keys at their defaults) is copied with
    its provenance; one that differs in anything that changes the numbers is not."""
    from omegaconf import OmegaConf

    from dcft_lab.compose import compose_config

    old_root = tmp_path / "v1"
    spec = {**SPEC, "reuse_from": str(old_root), "reuse_keys": {"pilot/mrpc/lora/lr0.001_ratio1": "pilot/lora/old"}}
    study = ProtocolStudy(spec, tmp_path / "v2")
    jobs = {j.key: j for j in study.all_jobs({})}
    job = jobs["pilot/mrpc/lora/lr0.001_ratio1"]
    overrides = [a for a in study.command(job, {})[len(study.runner):] if not a.startswith(("hydra.", "sweep_", "run."))]
    config = OmegaConf.to_container(compose_config(overrides), resolve=True)
    del config["optim"]["head_lr"], config["optim"]["factor_lr_ratio"]  # a v1 record: the keys did not exist yet
    source = old_root / "pilot/lora/old"
    source.mkdir(parents=True)
    (source / "checkpoints").mkdir()
    record = {"status": "completed", "config": config, "metrics": {"final": {"accuracy": 70.0}}}
    (source / "results.json").write_text(json.dumps(record))
    lines = []
    assert study.before_start(job, {}, lines.append)
    copied = json.loads((study.out / job.key / "results.json").read_text())
    assert copied["reused_from"]["run"] == str(source) and copied["metrics"] == record["metrics"]
    assert not (study.out / job.key / "checkpoints").exists()
    # a different seed (or lr, head lr, ratio, data slice ...) is not the same run
    (source / "results.json").write_text(json.dumps({**record, "config": {**config, "seed": 7}}))
    other = jobs["pilot/mrpc/lora/lr0.001_ratio1"]
    (study.out / other.key / "results.json").unlink()
    assert not study.before_start(other, {}, lines.append)
    assert lines[-1].endswith("(seed: 7 != 6)")
    # no reuse_from: nothing is copied
    assert not ProtocolStudy(SPEC, tmp_path / "v2b").before_start(job, {}, lines.append)


def test_every_v2_row_composes_into_a_valid_run():
    """Each row of the committed grid (issue 31's baselines included) is a valid run config on the study's preset."""
    from pathlib import Path

    from dcft_lab.compose import compose_config
    from dcft_lab.config_schema import validate

    spec = load_spec(Path(__file__).resolve().parents[1] / "experiments/table1/cpu_v2.yaml")
    labels = {}
    for name, row in spec["rows"].items():
        rc = validate(compose_config(["experiment=table1_cpu/mrpc", *row["method"], "optim.head_lr=0.001"]))
        labels[name] = rc.method.label
    assert labels["sora"] == "SoRA r=8" and labels["full"] == "Full FT" and labels["lorafa"] == "LoRA-FA r=1"
    assert len(set(labels.values())) == len(labels) - 1  # dcft8_noorth shares dcft8's label (a fixed point only)


# ------------------------------------------------------------------------------------------- failures and drivers

SMALL = {
    "protocol": "v2", "out": "unused", "jobs": 1, "sweep_name": "t", "experiment_prefix": "table1_cpu",
    "head_lr": 1e-3, "pilot": {"seed": 6, "tasks": {"mrpc": []}, "lrs": [1e-3, 3e-3], "ratios": [1]},
    "rows": {"head": {"method": ["method=none"], "ratio_axis": False, "head_lr": False}},
    "stages": [{"name": "pilot", "tasks": ["mrpc"], "rows": ["head"]},
               {"name": "main", "tasks": ["mrpc"], "rows": ["head"], "seeds": [6]}],
}
# FAIL: run folder name -> failure type; "once:" fails only on the first attempt (a crash that a rerun does not repeat)
FAILING = r'''
import json, os, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
out = Path(args["hydra.run.dir"]); out.mkdir(parents=True, exist_ok=True)
with (out / "attempts.txt").open("a") as fh:
    fh.write("x")
lr = args["optim.lr"]
kind = json.loads(os.environ["FAIL"]).get(out.name)
if kind and kind.startswith("once:") and len((out / "attempts.txt").read_text()) > 1:
    kind = None
if kind:
    record = {"status": "failed", "failure": {"type": kind.removeprefix("once:"), "reason": "x", "step": 3}}
else:
    record = {"status": "completed", "main_metric": "accuracy", "metrics": {"final": {"accuracy": 70.0}},
              "data": {"counts": {"validation": 400}}, "config": {"optim": {"lr": float(lr)}}}
(out / "results.json").write_text(json.dumps(record))
sys.exit(1 if kind else 0)
'''


def _failing_study(tmp_path, monkeypatch, fail: dict) -> ProtocolStudy:
    tmp_path.mkdir(parents=True, exist_ok=True)
    stub = tmp_path / "stub_fail.py"
    stub.write_text(FAILING)
    monkeypatch.setenv("FAIL", json.dumps(fail))
    return ProtocolStudy(SMALL, tmp_path / "study", runner=(sys.executable, str(stub)))


def _attempts(study, key: str) -> int:
    return len((study.out / key / "attempts.txt").read_text())


def test_a_crash_leaves_the_pilot_open_until_a_later_driver_reruns_it(tmp_path, monkeypatch):
    study = _failing_study(tmp_path, monkeypatch, {"lr0.001": "once:RuntimeError"})
    assert run_study(study, jobs_at_once=1, poll_s=0.02) == 1
    assert study.selection() == {}  # not decided on a crash: no main run started
    assert not (study.out / "main").exists()
    again = ProtocolStudy(SMALL, study.out, runner=study.runner)
    assert run_study(again, jobs_at_once=1, poll_s=0.02) == 0
    assert _attempts(again, "pilot/mrpc/head/lr0.001") == 2 and again.selection()["head@mrpc"]["lr"] == 1e-3
    assert (again.out / "main/mrpc/head/seed6/results.json").is_file()


def test_a_diverged_run_is_a_result_never_rerun_and_an_all_diverged_pilot_stays_open(tmp_path, monkeypatch):
    study = _failing_study(tmp_path, monkeypatch, {"lr0.001": "NonFiniteLossError"})
    run_study(study, jobs_at_once=1, poll_s=0.02)
    run_study(ProtocolStudy(SMALL, study.out, runner=study.runner), jobs_at_once=1, poll_s=0.02)
    assert _attempts(study, "pilot/mrpc/head/lr0.001") == 1  # the second driver did not rerun it
    pick = study.selection()["head@mrpc"]
    assert pick["lr"] == 3e-3 and {c["lr"]: c["score"] for c in pick["candidates"]}[1e-3] == -math.inf

    every = _failing_study(tmp_path / "b", monkeypatch, {"lr0.001": "NonFiniteLossError",
                                                         "lr0.003": "NonFiniteLossError"})
    run_study(every, jobs_at_once=1, poll_s=0.02)
    assert every.selection() == {} and not (every.out / "main").exists()


def test_one_driver_per_study_folder_and_no_second_process_in_a_running_jobs_folder(tmp_path, monkeypatch, capsys):
    import subprocess

    from dcft_lab.studies.scheduler import JOB_PID_FILE, _driver_lock

    study = _failing_study(tmp_path, monkeypatch, {})
    with _driver_lock(study.out, enabled=True) as other:
        assert other is None
        assert run_study(study, jobs_at_once=1, poll_s=0.02) == 2
    assert f"another study driver is running on {study.out} (pid " in capsys.readouterr().err
    # a job left running by a killed driver (its pid file names a live process of that folder) is not started again
    folder = study.out / "pilot/mrpc/head/lr0.001"
    folder.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"hydra.run.dir={folder}"])
    try:
        (folder / JOB_PID_FILE).write_text(f"{orphan.pid}\n")
        run_study(study, jobs_at_once=1, poll_s=0.02)
        assert not (folder / "attempts.txt").exists()
        assert f"skip  pilot/mrpc/head/lr0.001: still running as pid {orphan.pid}" in (study.out / "study.log").read_text()
    finally:
        orphan.kill()
        orphan.wait()
    run_study(ProtocolStudy(SMALL, study.out, runner=study.runner), jobs_at_once=1, poll_s=0.02)  # it is gone: runs
    assert _attempts(study, "pilot/mrpc/head/lr0.001") == 1 and not (folder / JOB_PID_FILE).exists()
