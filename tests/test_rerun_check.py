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
# csv loss rows carry the batch index: row s is the (s+1)-th batch, trained before the evaluation at global step s+1
LOSSES = [(0, "0.69"), (1, "0.68"), (2, "0.66"), (3, "0.61")]


def test_identical_prefix_passes_and_each_kind_of_difference_is_named(tmp_path):
    original = _run(tmp_path / "a", EVALS, LOSSES)
    assert rerun_check.compare(original, _run(tmp_path / "b", EVALS[:1], LOSSES[:2]), 1) == []
    assert rerun_check.compare(original, _run(tmp_path / "c", EVALS, LOSSES), None) == []
    changed_metric = [EVALS[0], {**EVALS[1], "metrics": {"accuracy": 70.00001}}]
    (problem,) = rerun_check.compare(original, _run(tmp_path / "d", changed_metric, LOSSES), None)
    assert problem.startswith("step 4: original {'accuracy': 70.0} != replay step 4")
    changed_loss = LOSSES[:2] + [(2, "0.6600001"), (3, "0.61")]
    (problem,) = rerun_check.compare(original, _run(tmp_path / "e", EVALS, changed_loss), None)
    assert "training losses differ up to step 4: first difference ((2, '0.66'), (2, '0.6600001'))" in problem
    last_batch = LOSSES[:3] + [(3, "0.6100001")]  # the 4th batch, the last before the evaluation at step 4
    assert "first difference ((3, '0.61'), (3, '0.6100001'))" in rerun_check.compare(
        original, _run(tmp_path / "h", EVALS, last_batch), None)[0]
    # losses after the compared prefix do not matter: the row with the evaluation's own step number is the next batch,
    # which a replay stopped at that evaluation never trains (it was reported as a difference before)
    assert rerun_check.compare(original, _run(tmp_path / "f", EVALS[:1], LOSSES[:2] + [(2, "9")]), 1) == []
    assert "too few evaluations" in rerun_check.compare(original, _run(tmp_path / "g", EVALS[:1], LOSSES), 2)[0]
