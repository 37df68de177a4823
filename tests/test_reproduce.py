"""The paper-table grids: every row's overrides compose, validate, and produce the label the grid expects
(the aggregator matches expected cells by that label), and --dry-run prints one multirun per row."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import compose_config

REPO = Path(__file__).resolve().parents[1]
GRIDS = sorted((REPO / "experiments").glob("table*/grid.yaml"))


@pytest.mark.parametrize("every", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["each-row-and-experiment", "every-pair"])
@pytest.mark.parametrize("grid_file", GRIDS, ids=lambda p: p.parent.name)
def test_grid_rows_compose_and_label_themselves(grid_file, every):
    """Every method row with the first experiment and every experiment with the first row; every pair (a row's
    overrides against each experiment preset) in the slow suite."""
    from dcft_lab.config_schema import validate

    for scale, grid in yaml.safe_load(grid_file.read_text()).items():
        if "study" in grid or "study_file" in grid:  # staged studies: test_study.py, test_protocol.py
            continue
        for row, (label, overrides) in enumerate(grid["methods"].items()):
            for experiment in grid["experiments"] if every or row == 0 else grid["experiments"][:1]:
                cfg = compose_config([f"experiment={experiment}", *overrides])
                rc = validate(cfg)
                assert rc.method.label == label, (grid_file.parent.name, scale, experiment)
                assert rc.task.name == experiment.split("/")[-1].replace("table1_cpu/", "")


def test_dry_run_prints_one_multirun_per_method_row():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--table", "table1", "--scale",
                           "full", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "dcft_lab.run -m" in line]
    grid = yaml.safe_load((REPO / "experiments" / "table1" / "grid.yaml").read_text())["full"]
    assert len(lines) == len(grid["methods"])
    assert all("sweep_name=table1_full" in line for line in lines)
    assert all(line.startswith("python -m dcft_lab.run -m ") for line in lines)  # copy-pasteable as printed


def test_cpu_scale_dry_run_lists_the_study_jobs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--table", "table1", "--scale",
                           "cpu", "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ready      pilot/lora/lr0.0003_scale2") and "data.train_holdout=400" in lines[0]
    assert any(line.startswith("waits for the pilot of lora main/mrpc/lora/seed6") for line in lines)
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_study_v2_dry_run_through_its_study_file(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--table", "table1", "--scale",
                           "cpu_v2", "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ready      pilot/mrpc/dcft8/lr0.01_ratio1") and "optim.head_lr=0.001" in lines[0]
    assert any(line.startswith("waits for the pilot of lora@stsb main/stsb/lora/seed10") for line in lines)
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--scale", "gpu"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "no such grid; expected one of ['cpu', 'cpu_v2', 'full']" in bad.stderr


@pytest.mark.slow  # the real data
def test_chance_levels_match_the_dev_sets(shared_data):
    """The chance levels reports draw and print (TaskSpec.chance_level) are the majority class of each real dev set."""
    from collections import Counter

    from dcft_lab.data.glue import load_glue_split
    from dcft_lab.data.tasks import TASKS

    for task in ("mrpc", "sst2", "rte"):
        labels = load_glue_split(task, "validation", shared_data, source="local")["label"]
        majority = 100 * max(Counter(labels).values()) / len(labels)
        assert TASKS[task].chance_level == round(majority, 2), (task, majority)
    assert TASKS["cola"].chance_level == 0 and TASKS["stsb"].chance_level == 0    # MCC, correlation
