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
    from dcft_lab.adapters import build_method
    from dcft_lab.config_schema import validate

    for scale, grid in yaml.safe_load(grid_file.read_text()).items():
        if "study" in grid:  # staged studies are checked in test_study.py
            continue
        for row, (label, overrides) in enumerate(grid["methods"].items()):
            for experiment in grid["experiments"] if every or row == 0 else grid["experiments"][:1]:
                cfg = compose_config([f"experiment={experiment}", *overrides])
                rc = validate(cfg)
                assert build_method(rc.method).label == label, (grid_file.parent.name, scale, experiment)
                assert rc.task.name == experiment.split("/")[-1].replace("table1_cpu/", "")


def test_dry_run_prints_one_multirun_per_method_row():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--table", "table1", "--scale",
                           "full", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "dcft_lab.run -m" in line]
    grid = yaml.safe_load((REPO / "experiments" / "table1" / "grid.yaml").read_text())["full"]
    assert len(lines) == len(grid["methods"])
    assert all("sweep_name=table1_full" in line for line in lines)


def test_cpu_scale_dry_run_lists_the_study_jobs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--table", "table1", "--scale",
                           "cpu", "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ready      pilot/lora/lr0.0003_scale2") and "data.train_holdout=400" in lines[0]
    assert any(line.startswith("waits for the pilot of lora main/mrpc/lora/seed6") for line in lines)
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.slow  # the real data
def test_cpu_study_chance_levels_match_the_dev_sets(shared_data):
    """The chance levels the CPU study's table notes print are the majority class of each real dev set."""
    from collections import Counter

    from dcft_lab.data.glue import load_glue_split

    notes = " ".join(yaml.safe_load((REPO / "experiments" / "table1" / "grid.yaml").read_text())
                     ["cpu"]["study"]["reports"][0]["notes"])
    for task, name in (("mrpc", "MRPC"), ("sst2", "SST-2"), ("rte", "RTE")):
        labels = load_glue_split(task, "validation", shared_data, source="local")["label"]
        majority = 100 * max(Counter(labels).values()) / len(labels)
        assert f"{name} {majority:.2f}" in notes, (task, majority)
