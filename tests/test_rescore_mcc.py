"""scripts/rescore_mcc.py: one-class MCC evaluations of old records rescored to GLUE's 0, nothing else touched."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dcft_lab.data.metrics import compute_glue_metrics

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("rescore_mcc", REPO / "scripts" / "rescore_mcc.py")
rescore_mcc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rescore_mcc)

LABELS = np.array([1] * 7 + [0] * 3)


def test_old_one_class_values_are_what_torchmetrics_logged_and_the_fix_scores_zero():
    from torchmetrics.functional.classification import binary_matthews_corrcoef

    values = rescore_mcc.old_one_class_values(LABELS)
    target = torch.as_tensor(LABELS)
    for c in (0, 1):
        old = float(binary_matthews_corrcoef(torch.full_like(target, c), target)) * 100
        assert values[c] == old != 0.0
        assert compute_glue_metrics("cola", [c] * len(LABELS), LABELS.tolist())["matthews"] == 0.0


def test_the_separation_check_sees_other_confusion_matrices():
    values = rescore_mcc.old_one_class_values(LABELS)
    assert rescore_mcc.nearest_other_mcc(LABELS, values[1]) > rescore_mcc.SEPARATION
    # tp=4, tn=2, fp=1, fn=3 on these counts has MCC (8-3)/sqrt(5*7*3*5) x 100
    other = (4 * 2 - 1 * 3) / np.sqrt(5 * 7 * 3 * 5) * 100
    assert rescore_mcc.nearest_other_mcc(LABELS, other) == pytest.approx(0.0, abs=1e-9)


def _run(folder: Path, values: list[float]) -> Path:
    (folder / "csv").mkdir(parents=True)
    evaluations = [{"step": 10 * (i + 1), "epoch": 0, "metrics": {"matthews": v}} for i, v in enumerate(values)]
    best = max(evaluations, key=lambda e: e["metrics"]["matthews"])
    record = {"status": "completed", "evaluations": evaluations, "best_step": best["step"],
              "metrics": {"best": dict(best["metrics"]), "final": dict(evaluations[-1]["metrics"])}}
    (folder / "results.json").write_text(json.dumps(record, indent=2))
    rows = ["epoch,step,train/loss,val/matthews"] + [f"0,{10 * (i + 1) - 1},,{np.float32(v)}" for i, v in
                                                    enumerate(values)]
    (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_rescore_changes_exactly_the_one_class_evaluations(tmp_path):
    one_class = rescore_mcc.old_one_class_values(LABELS)
    run = _run(tmp_path / "run", [one_class[1], 40.5, one_class[1], -3.0, one_class[0]])
    record = json.loads((run / "results.json").read_text())
    assert record["metrics"]["final"]["matthews"] == one_class[0] and record["best_step"] == 20

    assert rescore_mcc.rescore_record(record, one_class) == [10, 30, 50]
    assert [e["metrics"]["matthews"] for e in record["evaluations"]] == [0.0, 40.5, 0.0, -3.0, 0.0]
    assert record["metrics"] == {"best": {"matthews": 40.5}, "final": {"matthews": 0.0}}
    assert record["best_step"] == 20
    assert rescore_mcc.rescore_record(record, one_class) == []  # a second pass changes nothing

    assert rescore_mcc.rescore_csv(run / "csv" / "metrics.csv", one_class) == 3
    logged = (run / "csv" / "metrics.csv").read_text().splitlines()[1:]
    assert [line.split(",")[-1] for line in logged] == ["0.0", "40.5", "0.0", "-3.0", "0.0"]
    assert rescore_mcc.rescore_csv(run / "csv" / "metrics.csv", one_class) == 0


def test_best_moves_when_the_old_best_was_a_one_class_value():
    one_class = rescore_mcc.old_one_class_values(LABELS)
    record = {"evaluations": [{"step": 1, "metrics": {"matthews": -1.0}},
                              {"step": 2, "metrics": {"matthews": one_class[1]}},
                              {"step": 3, "metrics": {"matthews": -2.0}}],
              "metrics": {}, "best_step": 2}
    assert rescore_mcc.rescore_record(record, one_class) == [2]
    assert record["best_step"] == 2 and record["metrics"]["best"] == {"matthews": 0.0}  # 0 is still the best
    record["evaluations"][1]["metrics"]["matthews"] = -5.0
    record["evaluations"].append({"step": 4, "metrics": {"matthews": one_class[0]}})
    assert rescore_mcc.rescore_record(record, one_class) == [4]
    assert (record["best_step"], record["metrics"]["final"]) == (4, {"matthews": 0.0})


def test_missing_folder_is_one_line_error(tmp_path, capsys):
    assert rescore_mcc.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope is not a folder" in err and len(err.strip().splitlines()) == 1
