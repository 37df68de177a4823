"""Results aggregator and paper numbers: fake results.json grids, values checked against hand arithmetic."""

import csv
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dcft_lab import paper, report

DCFT8 = "DCFT d=8 s=8 k=1"
LORA1 = "LoRA r=1"
MAIN = {"rte": "accuracy", "cola": "matthews", "mnli": "accuracy_m"}
PARAMS = {DCFT8: (4_224, 4_994), LORA1: (27_648, 28_418)}   # (adapter, trainable) of a fake small backbone


def write_run(root: Path, label: str, task: str, seed: int, best: dict, status: str = "completed",
              reason: str | None = None, finished_at: str = "2025-01-01T00:00:00") -> Path:
    adapter, trainable = PARAMS.get(label, (1_000, 1_770))
    record = {
        "schema_version": 1, "status": status,
        "failure": {"reason": reason, "step": 10, "type": "RuntimeError"} if reason else None,
        "task": task, "method": label.split()[0].lower(), "backbone": "minilm", "seed": seed,
        "method_label": label, "experiment": "table1", "sweep_group": None, "main_metric": MAIN[task],
        "params": {"adapter": adapter, "trainable": trainable, "head": 770, "total": 22_000_000},
        "metrics": {"best": best, "final": best}, "evaluations": [], "wall_time_s": 1.0,
        "run_dir": "x", "started_at": "2025-01-01T00:00:00", "finished_at": finished_at,
    }
    folder = root / f"{label.replace(' ', '_').replace('=', '')}-{task}-{seed}-{status}-{finished_at[-2:]}"
    folder.mkdir(parents=True)
    path = folder / "results.json"
    path.write_text(json.dumps(record))
    return path


# The 2-label x 2-task x 2-seed grid; per-seed main-metric values.
GRID = {(DCFT8, "rte"): [70.0, 74.0], (DCFT8, "cola"): [40.0, 43.0],
        (LORA1, "rte"): [65.0, 66.0], (LORA1, "cola"): [30.0, 36.0]}


def write_grid(root: Path, skip=(), fail=()):
    for (label, task), values in GRID.items():
        for seed, value in zip((1, 2), values):
            if (label, task, seed) in skip:
                continue
            if (label, task, seed) in fail:
                # A failed run that still carries a (bogus) metric: it must not enter the mean.
                write_run(root, label, task, seed, {MAIN[task]: 99.0}, status="failed", reason="loss is NaN")
            else:
                write_run(root, label, task, seed, {MAIN[task]: value})


def read_csv(path: Path) -> dict:
    with path.open(newline="") as handle:
        return {(r["method_label"], r["task"], r["metric"]): r for r in csv.DictReader(handle)}


def run_report(root: Path, *extra) -> tuple[int, str]:
    code = report.main([str(root), *extra])
    md = (root / "table.md").read_text() if (root / "table.md").exists() else ""
    return code, md


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_mean_std_paper_and_diff(tmp_path, capsys):
    write_grid(tmp_path)
    code, md = run_report(tmp_path)
    assert code == 0
    assert capsys.readouterr().out == md
    rows = read_csv(tmp_path / "table.csv")
    rte = rows[(DCFT8, "rte", "accuracy")]
    assert int(rte["n"]) == 2
    assert float(rte["mean"]) == pytest.approx(72.0)
    assert float(rte["std"]) == pytest.approx(math.sqrt(8.0))          # ddof=1: ((2^2+2^2)/1)^0.5
    assert float(rte["paper"]) == pytest.approx(88.45)                 # DCFT paper Table 1
    assert float(rte["diff"]) == pytest.approx(72.0 - 88.45)
    assert rte["paper_backbone"] == "deberta-v3-base" and rte["paper_table"] == "table1"
    cola = rows[(LORA1, "cola", "matthews")]
    assert float(cola["mean"]) == pytest.approx(33.0)
    assert float(cola["std"]) == pytest.approx(math.sqrt(18.0))
    assert float(cola["paper"]) == pytest.approx(68.60)
    assert cola["params_adapter"] == "27648" and cola["params_trainable"] == "28418"
    # Markdown: ours beside paper (marked as another backbone), difference, exact params with separators.
    assert "72.00 ± 2.83 (n=2) · paper† 88.45 · Δ -16.45" in md
    assert "| LoRA r=1 | 27,648 | 28,418 |" in md
    assert "deberta-v3-base" in md and "minilm" in md
    # Averages: DCFT (72 + 41.5)/2; paper (88.45 + 71.07)/2.
    avg = rows[(DCFT8, "avg", "avg")]
    assert float(avg["mean"]) == pytest.approx(56.75)
    assert float(avg["paper"]) == pytest.approx((88.45 + 71.07) / 2)
    assert "Missing or failed runs" in md and "None." in md
    assert f"Provenance: {tmp_path} · 8 results.json" in md


def test_missing_seed_and_failed_run_are_listed_and_excluded(tmp_path):
    write_grid(tmp_path, skip={(DCFT8, "cola", 2)}, fail={(LORA1, "rte", 2)})
    code, md = run_report(tmp_path)
    assert code == 0
    assert f"missing: {DCFT8} / cola / seed 2" in md
    assert f"failed: {LORA1} / rte / seed 2: loss is NaN" in md
    rows = read_csv(tmp_path / "table.csv")
    lora_rte = rows[(LORA1, "rte", "accuracy")]
    assert float(lora_rte["mean"]) == pytest.approx(65.0) and int(lora_rte["n"]) == 1
    assert lora_rte["std"] == ""                                        # n=1: no std
    assert float(rows[(DCFT8, "cola", "matthews")]["mean"]) == pytest.approx(40.0)
    assert "65.00 (1/2)" in md and "40.00 (1/2)" in md


def test_expect_grid_marks_unfinished_seeds(tmp_path):
    write_grid(tmp_path)
    grid = [{"method_label": label, "task": task, "seed": seed}
            for (label, task) in GRID for seed in (1, 2, 3)]
    expect = tmp_path / "grid.json"
    expect.write_text(json.dumps(grid))
    code, md = run_report(tmp_path, "--expect", str(expect))
    assert code == 0
    assert "72.00 ± 2.83 (2/3)" in md
    assert md.count("/ seed 3 (no results.json)") == 4


def test_corrupt_json_is_reported_not_fatal(tmp_path):
    write_grid(tmp_path)
    bad = tmp_path / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"status": "completed", "task": "rte", "metr')
    code, md = run_report(tmp_path)
    assert code == 0
    assert f"corrupt: {bad}: unreadable JSON" in md
    assert "8 completed" in md and "1 corrupt" in md


def test_avg_blank_when_a_task_is_missing(tmp_path):
    write_grid(tmp_path)
    write_run(tmp_path, "LoRA r=8", "rte", 1, {"accuracy": 60.0})   # only one of the table's two tasks
    code, md = run_report(tmp_path)
    assert code == 0
    line = next(l for l in md.splitlines() if l.startswith("| LoRA r=8 |"))
    assert line.rstrip(" |").endswith("—")
    rows = read_csv(tmp_path / "table.csv")
    assert ("LoRA r=8", "avg", "avg") not in rows
    assert (LORA1, "avg", "avg") in rows


def test_superseded_rerun_counts_once(tmp_path):
    write_grid(tmp_path)
    write_run(tmp_path, DCFT8, "rte", 1, {"accuracy": 78.0}, finished_at="2025-01-02T00:00:09")
    run_report(tmp_path)
    rte = read_csv(tmp_path / "table.csv")[(DCFT8, "rte", "accuracy")]
    assert int(rte["n"]) == 2 and float(rte["mean"]) == pytest.approx((78.0 + 74.0) / 2)
    assert "superseded" in (tmp_path / "table.md").read_text()


def test_mnli_shows_matched_and_mismatched(tmp_path):
    for seed, (m, mm) in zip((1, 2), [(80.0, 81.0), (82.0, 85.0)]):
        write_run(tmp_path, DCFT8, "mnli", seed, {"accuracy_m": m, "accuracy_mm": mm})
        write_run(tmp_path, DCFT8, "rte", seed, {"accuracy": 70.0})
    run_report(tmp_path)
    rows = read_csv(tmp_path / "table.csv")
    assert float(rows[(DCFT8, "mnli", "accuracy_m")]["mean"]) == pytest.approx(81.0)
    assert float(rows[(DCFT8, "mnli", "accuracy_mm")]["mean"]) == pytest.approx(83.0)
    assert float(rows[(DCFT8, "mnli", "accuracy_mm")]["paper"]) == pytest.approx(89.63)
    # avg with MNLI = (m+mm)/2 = 82.0
    assert float(rows[(DCFT8, "avg", "avg")]["mean"]) == pytest.approx((82.0 + 70.0) / 2)
    assert "paper† 89.40/89.63" in (tmp_path / "table.md").read_text()


def test_figure_is_png_with_kernel_panel_only_for_dcft(tmp_path):
    write_grid(tmp_path / "both")
    run_report(tmp_path / "both")
    width_two, _ = png_size(tmp_path / "both" / "figure.png")
    write_run(tmp_path / "lora", LORA1, "rte", 1, {"accuracy": 60.0})
    assert report.main([str(tmp_path / "lora")]) == 0
    width_one, _ = png_size(tmp_path / "lora" / "figure.png")
    assert width_two > width_one                      # panel (b) skipped without DCFT runs


def test_out_dir_and_exit_codes(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err
    write_grid(tmp_path / "runs")
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"table.md", "table.csv", "figure.png"}


def test_cli_module_is_torch_free_and_exits_2_on_empty(tmp_path):
    code = ("import runpy, sys; sys.argv = ['report', sys.argv[1]]\n"
            "try:\n    runpy.run_module('dcft_lab.report', run_name='__main__')\n"
            "except SystemExit as e:\n    assert 'torch' not in sys.modules, 'report imported torch'\n"
            "    raise\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: no results.json under {tmp_path}"


# ---------------------------------------------------------------- paper numbers


@pytest.fixture(scope="module")
def rows():
    return paper.load_paper_numbers()


def test_paper_numbers_key_values(rows):
    assert paper.paper_value(rows, DCFT8, "rte", "accuracy", table="table1") == 88.45
    assert paper.paper_value(rows, DCFT8, "rte", "accuracy") == 88.45           # same in every table
    assert paper.paper_value(rows, "AdaLoRA 0.32M", "qqp", "accuracy") == 91.78
    assert paper.paper_value(rows, "AdaLoRA 0.32M", "qqp", "f1") == 89.16
    assert paper.paper_value(rows, "DCFT d=8 s=8 k=1 [Q,K,V,O]", "cola", "matthews") == 68.37
    assert paper.paper_value(rows, "LoRA r=8", "avg", "avg") == 88.34
    assert paper.paper_value(rows, "Full FT", "xsum", "rougeL") == 37.26
    assert paper.paper_value(rows, LORA1, "rte", "f1") is None
    exact = {r["method_label"]: r["params_exact"] for r in rows if r["table"] in ("table1", "table4", "table5")}
    assert exact[DCFT8] == 25344 and exact["DCFT d=2 s=2 k=1"] == 83232 and exact[LORA1] == 165888
    assert exact["DCFT d=8 s=1 k=1"] == 169488


def test_paper_value_ambiguity_needs_a_table(rows):
    # Same configuration, different printed STS-B values in Table 1 (91.56) and Table 5 (91.50).
    with pytest.raises(ValueError, match="ambiguous"):
        paper.paper_value(rows, DCFT8, "stsb", "pearson")
    assert paper.paper_value(rows, DCFT8, "stsb", "pearson", table="table5") == 91.50
    assert paper.paper_value(rows, DCFT8, "stsb", "pearson", table="table1") == 91.56


def test_paper_numbers_vocabulary_and_averages(rows):
    tasks = set(report.TASK_ORDER) | {"avg"}
    metrics = {"matthews", "accuracy", "f1", "pearson", "accuracy_m", "accuracy_mm", "exact_match",
               "rouge1", "rouge2", "rougeL", "accuracy_f1_mean", "avg"}
    assert {r["task"] for r in rows} <= tasks and {r["metric"] for r in rows} <= metrics
    # Printed Table 4 averages are the mean of its six tasks (checks the transcription of every cell).
    for d in (2, 4, 6, 8, 12):
        label = f"DCFT d={d} s={d} k=1"
        cells = [r["value"] for r in rows if r["table"] == "table4" and r["method_label"] == label and r["task"] != "avg"]
        assert len(cells) == 6
        assert sum(cells) / 6 == pytest.approx(paper.paper_value(rows, label, "avg", "avg", table="table4"), abs=0.006)
    # Exact counts follow k*(d_in/d + d_out/d) + d^2 over six matrices x 12 layers of DeBERTaV3-base.
    for d in (2, 4, 6, 8, 12):
        per_layer = 4 * (768 // d * 2 + d * d) + 2 * (768 // d + 3072 // d + d * d)
        r = next(r for r in rows if r["table"] == "table4" and r["method_label"] == f"DCFT d={d} s={d} k=1")
        assert r["params_exact"] == 12 * per_layer


def test_paper_numbers_env_override_and_errors(tmp_path, monkeypatch):
    alt = tmp_path / "p.csv"
    alt.write_text(",".join(paper.COLUMNS) + "\ntable1,minilm,X,rte,accuracy,50.5,10,,src,\n")
    monkeypatch.setenv(paper.ENV_VAR, str(alt))
    loaded = paper.load_paper_numbers()
    assert loaded[0]["value"] == 50.5 and loaded[0]["params_exact"] == 10
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        paper.load_paper_numbers(tmp_path / "nowhere.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("table,value\nx,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        paper.load_paper_numbers(bad)
