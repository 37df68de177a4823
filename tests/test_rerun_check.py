"""scripts/rerun_check.py: the comparison that proves a re-run with newer code computes the same run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("rerun_check", REPO / "scripts" / "rerun_check.py")
rerun_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rerun_check)


def _run(folder: Path, evaluations, losses) -> Path:
    (folder / "csv").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"evaluations": evaluations}))
    rows = ["epoch,step,train/loss,val/accuracy"] + [f"0,{step},{loss}," for step, loss in losses]
    (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    return folder


EVALS = [{"step": 2, "epoch": 0, "metrics": {"accuracy": 60.0}}, {"step": 4, "epoch": 0, "metrics": {"accuracy": 70.0}}]
LOSSES = [(1, "0.69"), (2, "0.68"), (3, "0.66"), (4, "0.61")]


def test_identical_prefix_passes_and_each_kind_of_difference_is_named(tmp_path):
    original = _run(tmp_path / "a", EVALS, LOSSES)
    assert rerun_check.compare(original, _run(tmp_path / "b", EVALS[:1], LOSSES[:2]), 1) == []
    assert rerun_check.compare(original, _run(tmp_path / "c", EVALS, LOSSES), None) == []
    changed_metric = [EVALS[0], {**EVALS[1], "metrics": {"accuracy": 70.00001}}]
    (problem,) = rerun_check.compare(original, _run(tmp_path / "d", changed_metric, LOSSES), None)
    assert problem.startswith("step 4: original {'accuracy': 70.0} != replay step 4")
    changed_loss = LOSSES[:2] + [(3, "0.6600001"), (4, "0.61")]
    (problem,) = rerun_check.compare(original, _run(tmp_path / "e", EVALS, changed_loss), None)
    assert "training losses differ up to step 4: first difference ((3, '0.66'), (3, '0.6600001'))" in problem
    # losses after the compared prefix do not matter; a replay that stopped too early is reported
    assert rerun_check.compare(original, _run(tmp_path / "f", EVALS[:1], LOSSES[:2] + [(3, "9")]), 1) == []
    assert "too few evaluations" in rerun_check.compare(original, _run(tmp_path / "g", EVALS[:1], LOSSES), 2)[0]
