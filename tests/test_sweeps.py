"""Multirun sweeps: one folder per job, one W&B group per sweep, the local launcher's cap, SLURM config keys,
a failing job that does not stop the others, and the aggregator's table over the sweep.

The sweeps themselves (python -m dcft_lab.run -m, 4 runs each) are slow tests; the fast suite checks their parts in
this process: the sweep name, the job folder names, a job's record of its sweep, and (test_bad_input.py) that a
failed multirun job does not exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY_RUN, compose_config, run_inprocess

pytestmark = pytest.mark.timeout(600)  # a sweep here takes up to 2 min on 2 loaded cores, and a test may run two


def _multirun(tmp_path: Path, data_root: Path, sweep_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "DCFT_LAB_DATA": str(data_root),
           "DCFT_LAB_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "dcft_lab.run", "-m", *TINY_RUN, "task=rte", "trainer.max_steps=2",
           f"hydra.sweep.dir={sweep_dir}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _records(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]


# basic launcher: a 2 x 2 sweep in one process; the submitit local launcher starts a process per job, so 2 jobs
@pytest.mark.slow
@pytest.mark.parametrize("launcher, sweep, labels", [
    ("basic", ["method.kernel_size=2,4", "method.rank=1,2"],
     ["DCFT d=2 s=2 k=1", "DCFT d=2 s=2 k=2", "DCFT d=4 s=4 k=1", "DCFT d=4 s=4 k=2"]),
    ("local", ["method.kernel_size=2,4"], ["DCFT d=2 s=2 k=1", "DCFT d=4 s=4 k=1"]),
], ids=["basic", "local"])
def test_multirun_gives_a_run_and_a_table_row_per_job(launcher, sweep, labels, tmp_path, glue_tsv_root):
    from dcft_lab.report import main as report_main

    root = glue_tsv_root("rte")
    sweep_dir = tmp_path / "sweep"
    proc = _multirun(tmp_path, root, sweep_dir, "method=dcft", *sweep, f"hydra/launcher={launcher}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(labels)} of {len(labels)} jobs completed" in proc.stdout
    records = _records(sweep_dir)
    assert len(records) == len(labels) and all(r["status"] == "completed" for r in records)
    assert len({r["run_dir"] for r in records}) == len(labels)
    assert sorted(r["method_label"] for r in records) == labels
    groups = {r["sweep_group"] for r in records}
    assert len(groups) == 1 and None not in groups  # one sweep name, set before the jobs started
    assert report_main([str(sweep_dir)]) == 0
    table = (sweep_dir / "table.md").read_text()
    assert sum(label.replace(" s=", " stride=") in table for label in labels) == len(labels)  # stride spelled out
    rows = (sweep_dir / "table.csv").read_text().strip().splitlines()
    assert len({line.split(",")[0] for line in rows[1:]}) == len(labels)


@pytest.mark.slow
def test_multirun_whose_jobs_all_fail_exits_non_zero(tmp_path, glue_tsv_root):
    """Issue 32: a sweep whose every job fails used to exit 0 with no summary."""
    sweep = tmp_path / "sweep"
    proc = _multirun(tmp_path, glue_tsv_root("rte"), sweep, "method.kernel_size=5,7")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 of 2 jobs failed" in proc.stderr
    for k in (5, 7):
        assert f"method.kernel_size={k}" in proc.stderr and "DCFT cannot adapt" in proc.stderr


def test_two_sweeps_in_the_same_second_do_not_collide(tmp_path, glue_tsv_root):
    from dcft_lab.run import _ensure_sweep_name

    a = _ensure_sweep_name(["run.py", "-m", "seed=1,2"])
    b = _ensure_sweep_name(["run.py", "-m", "seed=1,2"])
    name_a = [x for x in a if x.startswith("sweep_name=")]
    name_b = [x for x in b if x.startswith("sweep_name=")]
    assert len(name_a) == len(name_b) == 1 and name_a != name_b
    assert _ensure_sweep_name(["run.py", "-m", "sweep_name=mine"]) == ["run.py", "-m", "sweep_name=mine"]
    assert _ensure_sweep_name(["run.py", "seed=1"]) == ["run.py", "seed=1"]  # single runs get no sweep name


@pytest.mark.slow
def test_failing_job_does_not_stop_the_sweep_and_is_reported(tmp_path, glue_tsv_root):
    from dcft_lab.report import main as report_main

    root = glue_tsv_root("rte")
    sweep = tmp_path / "sweep"
    proc = _multirun(tmp_path, root, sweep, "method=dcft", "method.kernel_size=2,4",
                     "run.inject_failure=null,train_step:1")
    assert proc.returncode == 1, proc.stderr[-3000:]  # the sweep ran to the end, and says that jobs failed
    records = _records(sweep)
    assert sorted(r["status"] for r in records) == ["completed", "completed", "failed", "failed"]
    failed = [r for r in records if r["status"] == "failed"]
    assert "2 of 4 jobs failed" in proc.stderr
    for r in failed:
        assert f"{r['run_dir']}: RuntimeError: injected failure" in proc.stderr
    assert all(r["failure"]["step"] == 1 and "injected failure" in r["failure"]["reason"] for r in failed)
    assert report_main([str(sweep)]) == 0
    table = (sweep / "table.md").read_text().lower()
    assert "failed" in table and "injected failure" in table

    # re-running the same sweep only retries what failed (completed runs keep their records)
    before = {r["run_dir"]: r["started_at"] for r in records if r["status"] == "completed"}
    name = records[0]["sweep_group"]
    again = _multirun(tmp_path, root, sweep, "method=dcft", "method.kernel_size=2,4",
                      "run.inject_failure=null,train_step:1", f"sweep_name={name}")
    assert again.returncode == 1, again.stderr[-3000:]
    after = {r["run_dir"]: r for r in _records(sweep)}
    assert all(after[d]["started_at"] == t for d, t in before.items())
    assert all(after[r["run_dir"]].get("attempts") == 2 for r in failed)


def test_job_folders_are_named_by_their_overrides():
    """hydra.sweep.subdir (and hydra.run.dir) end in ${dcft_dirname:...}: one folder per job of a sweep, a plain path
    component, and a long name stays short and unique."""
    from dcft_lab.compose import run_dirname as _dirname

    jobs = [f"method.kernel_size={k},method.rank={r}" for k in (2, 4) for r in (1, 2)]
    assert len({_dirname(job) for job in jobs}) == 4
    assert _dirname("") == "defaults" and "/" not in _dirname("task.train_file=/a/b.jsonl")
    long = "method.target_modules=[" + ",".join(f"layer_{i}.attention.query" for i in range(12)) + "]"
    assert len(_dirname(long)) == 112 and _dirname(long) != _dirname(long.replace("layer_11", "layer_10"))


def test_a_job_records_its_sweep_name_as_its_group(glue_tsv_root, tmp_path):
    """A multirun job gets sweep_name=... from run.py: its record's sweep_group groups the sweep (W&B, report)."""
    record = run_inprocess(["task=rte", "trainer.max_steps=1", "sweep_name=s1"], tmp_path / "run", glue_tsv_root("rte"))
    assert record["status"] == "completed" and record["sweep_group"] == "s1"


def test_slurm_and_local_launcher_configs_compose():
    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"])
    from hydra import compose, initialize_config_dir

    from helpers import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        full = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                            "hydra.launcher.gpus_per_node=4", "trainer=ddp"],
                       return_hydra_config=True)
        launcher = full.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher")
        for key in ("partition", "gpus_per_node", "timeout_min", "array_parallelism", "max_num_timeout",
                    "cpus_per_task", "mem_gb", "additional_parameters", "setup"):
            assert key in launcher, key
        assert launcher.partition == "gpu" and launcher.gpus_per_node == 4
        assert full.trainer.strategy == "ddp"
        local = compose("config", overrides=["hydra/launcher=local"], return_hydra_config=True)
        assert local.hydra.launcher._target_.endswith("LocalLauncher")
        assert local.max_parallel_jobs == 1
        assert local.hydra.sweeper.max_batch_size == 1
    assert cfg.method.name == "dcft"
