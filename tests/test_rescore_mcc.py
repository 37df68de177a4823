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
    (folder / "csv" / "metrics.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())  # as Lightning writes it
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
    logged = (run / "csv" / "metrics.csv").read_bytes().split(b"\r\n")[1:-1]  # line endings kept
    assert [line.split(b",")[-1] for line in logged] == [b"0.0", b"40.5", b"0.0", b"-3.0", b"0.0"]
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


def test_ties_keep_the_first_best_as_the_trainer_does():
    one_class = rescore_mcc.old_one_class_values(LABELS)
    record = {"evaluations": [{"step": 1, "metrics": {"matthews": 5.0}}, {"step": 2, "metrics": {"matthews": 5.0}},
                              {"step": 3, "metrics": {"matthews": one_class[1]}}], "metrics": {}, "best_step": 3}
    assert rescore_mcc.rescore_record(record, one_class) == [3]
    assert record["best_step"] == 1


def test_balanced_labels_need_no_rescoring():
    balanced = np.array([1, 0] * 5)
    assert rescore_mcc.old_one_class_values(balanced) == {}  # torchmetrics already gives 0 there
    record = {"evaluations": [{"step": 1, "metrics": {"matthews": 0.0}}], "metrics": {}, "best_step": 1}
    assert rescore_mcc.rescore_record(record, {}) == []


def _completed(record_dir: Path, **changes) -> Path:
    record = json.loads((record_dir / "results.json").read_text())
    record.update({"status": "completed", "world_size": 1, "data": {"eval_names": ["validation"],
                   "counts": {"validation": len(LABELS)}}, **changes})
    (record_dir / "results.json").write_text(json.dumps(record, indent=2))
    return record_dir


def test_main_rescores_once_with_provenance_and_dry_run_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rescore_mcc, "eval_labels", lambda record: LABELS)
    one_class = rescore_mcc.old_one_class_values(LABELS)
    run = _completed(_run(tmp_path / "run", [one_class[1], 40.5]))
    before = (run / "results.json").read_bytes(), (run / "csv" / "metrics.csv").read_bytes()
    assert rescore_mcc.main([str(tmp_path), "--dry-run"]) == 0
    assert ((run / "results.json").read_bytes(), (run / "csv" / "metrics.csv").read_bytes()) == before
    assert "1 evaluation(s) would be rescored" in capsys.readouterr().out

    assert rescore_mcc.main([str(tmp_path)]) == 0
    record = json.loads((run / "results.json").read_text())
    assert [e["metrics"]["matthews"] for e in record["evaluations"]] == [0.0, 40.5]
    assert record["rescored"][0]["steps"] == [10] and record["rescored"][0]["to"] == 0.0
    assert b",0.0\r\n" in (run / "csv" / "metrics.csv").read_bytes()
    after = (run / "results.json").read_bytes()
    assert rescore_mcc.main([str(tmp_path)]) == 0  # a second pass changes nothing
    assert (run / "results.json").read_bytes() == after
    assert "0 evaluation(s) rescored" in capsys.readouterr().out


@pytest.mark.parametrize("changes, message", [
    ({"status": "running"}, "status 'running'"),
    ({"world_size": 3}, "world_size 3"),
    ({"env": {"packages": {"torchmetrics": "0.1.0"}}}, "torchmetrics 0.1.0"),
])
def test_main_skips_records_it_cannot_rescore_exactly(tmp_path, monkeypatch, capsys, changes, message):
    monkeypatch.setattr(rescore_mcc, "eval_labels", lambda record: LABELS)
    one_class = rescore_mcc.old_one_class_values(LABELS)
    run = _completed(_run(tmp_path / "run", [one_class[1], 40.5]), **changes)
    before = (run / "results.json").read_bytes()
    assert rescore_mcc.main([str(tmp_path)]) == 1
    assert (run / "results.json").read_bytes() == before
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_main_names_the_record_when_its_eval_set_does_not_match(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rescore_mcc, "eval_labels", lambda record: LABELS[:-1])
    one_class = rescore_mcc.old_one_class_values(LABELS)
    run = _completed(_run(tmp_path / "run", [one_class[1]]))
    assert rescore_mcc.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(run / "results.json") in err and "9 examples, the record 10" in err
