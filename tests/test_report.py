"""Results aggregator and paper numbers: fake results.json grids, values checked against hand arithmetic."""

import csv
import json
import math
import re
import statistics
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from dcft_lab import paper, report
from dcft_lab.report.methods import record_label

DCFT8 = "DCFT d=8 s=8 k=1"
SHOWN8 = "DCFT d=8 stride=8 k=1"     # how tables and figures write it (the record keeps DCFT8)
LORA1 = "LoRA r=1"
MAIN = {"rte": "accuracy", "cola": "matthews", "mnli": "accuracy_m", "mrpc": "accuracy", "stsb": "pearson"}
PARAMS = {DCFT8: (4_224, 4_994), LORA1: (27_648, 28_418)}   # (adapter, trainable) of a fake small backbone
# Resolved config.method of each label: DCFT scale 16/8 = 2, LoRA 16/1 = 16.
METHOD_CFG = {DCFT8: {"name": "dcft", "alpha": 16.0, "r": 8, "kernel_size": 8, "stride": None, "rank": 1,
                     "init": "official", "targets": "all", "target_modules": None},
              LORA1: {"name": "lora", "alpha": 16.0, "r": 1}}


def write_run(root: Path, label: str, task: str, seed: int, best: dict, status: str = "completed",
              reason: str | None = None, finished_at: str = "2025-01-01T00:00:00", final: dict | None = None,
              evaluations: list | None = None, method: dict | None = None, lr: float = 1e-3,
              adapter: int | None = None) -> Path:
    adapter_default, trainable = PARAMS.get(label, (1_000, 1_770))
    method = method or METHOD_CFG.get(label, {"name": label.split()[0].lower(), "alpha": 16.0, "r": 1})
    record = {
        "schema_version": 1, "status": status,
        "failure": {"reason": reason, "step": 10, "type": "RuntimeError"} if reason else None,
        "task": task, "method": method["name"], "backbone": "minilm", "seed": seed,
        "method_label": label, "experiment": "table1", "sweep_group": None, "main_metric": MAIN[task],
        "params": {"adapter": adapter_default if adapter is None else adapter, "trainable": trainable,
                   "head": 770, "total": 22_000_000},
        "metrics": {"best": best, "final": best if final is None else final},
        "evaluations": evaluations or [], "wall_time_s": 1.0,
        "config": {"method": method, "optim": {"lr": lr}},
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


def md_table(md: str, first_header: str = "| method |", after: str = "") -> dict:
    """The first markdown table after the line starting with `after`, keyed by its first column (a method as the
    runs record its label: the table shows DCFT's stride spelled out)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after)) if after else 0
    head = next(i for i in range(start, len(lines)) if lines[i].startswith(first_header))
    split = lambda line: [c.strip() for c in line.strip().strip("|").split(" | ")]
    header = split(lines[head])
    rows = {}
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        cells = split(line)
        rows[record_label(cells[0])] = dict(zip(header, cells))
    return rows


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
    # Markdown: our cell alone (the paper has its own table below), exact params with separators.
    ours = md_table(md)
    assert ours[DCFT8]["rte"] == "72.00 ± 2.83 (n=2)"
    assert "| LoRA r=1 | 16 | 1e-3 | 27,648 | 28,418 |" in md
    assert "deberta-v3-base" in md and "minilm" in md
    # Averages: DCFT (72 + 41.5)/2; paper (88.45 + 71.07)/2.
    avg = rows[(DCFT8, "avg", "avg")]
    assert float(avg["mean"]) == pytest.approx(56.75)
    assert float(avg["paper"]) == pytest.approx((88.45 + 71.07) / 2)
    assert "Missing or failed runs" in md and "None." in md
    assert "Provenance: this folder · 8 results.json" in md and str(tmp_path) not in md


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
    assert "corrupt: broken/results.json: unreadable JSON" in md
    assert "8 completed" in md and "1 corrupt" in md


def avg_legend(md: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("avg: "))


def test_avg_covers_only_tasks_where_every_row_has_two_seeds_and_says_so(tmp_path):
    write_grid(tmp_path)                                             # DCFT d=8, LoRA r=1 x rte, cola x 2 seeds
    write_run(tmp_path, "LoRA r=8", "rte", 1, {"accuracy": 60.0})   # one seed, on rte only
    code, md = run_report(tmp_path)
    assert code == 0
    rows = md_table(md)
    assert {label: row["avg"] for label, row in rows.items()} == {DCFT8: "—", LORA1: "—", "LoRA r=8": "—"}
    legend = avg_legend(md)
    assert legend.startswith("avg: — for every row: no task is one of the tasks where every row with a completed "
                             "run has ≥ 2 completed seeds")
    assert "cola (no completed run in 1 row)" in legend and "rte (1 seed in 1 row)" in legend
    assert not [key for key in read_csv(tmp_path / "table.csv") if key[1] == "avg"]
    # A second LoRA r=8 seed on rte: every row has >= 2 seeds there, so every avg is its rte score, and says so.
    write_run(tmp_path, "LoRA r=8", "rte", 2, {"accuracy": 62.0})
    code, md = run_report(tmp_path)
    rows = md_table(md)
    assert (rows[DCFT8]["avg"], rows[LORA1]["avg"], rows["LoRA r=8"]["avg"]) == ("72.00", "65.50", "61.00")
    assert avg_legend(md).startswith("avg: mean of each row's scores over rte only")
    assert "left out: cola (no completed run in 1 row)." in avg_legend(md)
    csv_rows = read_csv(tmp_path / "table.csv")
    assert float(csv_rows[(DCFT8, "avg", "avg")]["mean"]) == pytest.approx(72.0)
    assert {r["avg_tasks"] for key, r in csv_rows.items() if key[1] == "avg"} == {"rte"}


def test_avg_leaves_out_a_one_seed_cell(tmp_path):
    """v1's avg averaged one-seed RTE cells: a task where any row has a single seed is not in any row's avg."""
    write_grid(tmp_path, skip={(DCFT8, "cola", 2)})
    code, md = run_report(tmp_path)
    assert code == 0
    rows = md_table(md)
    assert rows[DCFT8]["cola"] == "40.00 (1/2)"
    assert rows[DCFT8]["avg"] == "72.00" and rows[LORA1]["avg"] == "65.50"      # rte only, not (72 + 40) / 2
    assert "over rte only" in avg_legend(md) and "left out: cola (1 seed in 1 row)." in avg_legend(md)
    # the paper's average beside ours covers the same tasks: DCFT d=8 on rte only
    assert md_table(md, after="## Paper, deberta-v3-base")[DCFT8]["avg"] == "88.45"


def test_a_cell_at_chance_is_marked_and_an_avg_that_includes_it_says_so(tmp_path):
    """Every seed at the task's chance level (CoLA MCC 0: a constant prediction) is a collapsed cell: marked †, as is
    an avg that averages it, and the legend says what † means."""
    for seed in (1, 2):
        write_run(tmp_path, DCFT8, "cola", seed, {"matthews": 0.0})
        write_run(tmp_path, DCFT8, "rte", seed, {"accuracy": 52.707581})     # 146 of 277: RTE's chance level
        write_run(tmp_path, LORA1, "cola", seed, {"matthews": 20.0 + seed})
        write_run(tmp_path, LORA1, "rte", seed, {"accuracy": 52.71 + seed})   # one seed above chance: not marked
    code, md = run_report(tmp_path)
    assert code == 0
    rows = md_table(md)
    assert rows[DCFT8]["cola"] == "0.00 ± 0.00 (n=2) †" and rows[DCFT8]["rte"] == "52.71 ± 0.00 (n=2) †"
    assert rows[DCFT8]["avg"] == "26.35 †" and rows[LORA1]["avg"] == f"{(21.5 + 54.21) / 2:.2f}"
    assert not rows[LORA1]["cola"].endswith("†") and not rows[LORA1]["rte"].endswith("†")
    assert "† every seed scores the task's chance level" in avg_legend(md)
    assert "an avg marked † includes one" in avg_legend(md)
    chance = next(line for line in md.splitlines() if line.startswith("Chance level of each dev set"))
    assert "cola 0 (matthews)" in chance and "rte 52.71 (accuracy)" in chance


def test_chance_levels_have_one_home():
    """The chance levels the figures draw and the tables print come from the task registry."""
    from dcft_lab.data.tasks import TASKS

    assert {t: s.chance_level for t, s in TASKS.items() if s.chance_level is not None} == {
        "cola": 0.0, "sst2": 50.92, "mrpc": 68.38, "stsb": 0.0, "rte": 52.71}
    assert report.chance_level("mrpc") == 68.38 and report.chance_level("qqp") is None


def test_superseded_rerun_counts_once(tmp_path):
    write_grid(tmp_path)
    write_run(tmp_path, DCFT8, "rte", 1, {"accuracy": 78.0}, finished_at="2025-01-02T00:00:09")
    run_report(tmp_path)
    rte = read_csv(tmp_path / "table.csv")[(DCFT8, "rte", "accuracy")]
    assert int(rte["n"]) == 2 and float(rte["mean"]) == pytest.approx((78.0 + 74.0) / 2)
    assert "superseded" in (tmp_path / "table.md").read_text()


def test_superseded_run_with_another_lr_is_flagged_as_a_sweep(tmp_path):
    write_run(tmp_path, DCFT8, "rte", 1, {"accuracy": 70.0}, lr=1e-3)
    write_run(tmp_path, DCFT8, "rte", 1, {"accuracy": 75.0}, lr=3e-3, finished_at="2025-01-02T00:00:09")
    code, md = run_report(tmp_path)
    assert code == 0
    assert md_table(md)[DCFT8]["rte"] == "75.00 (n=1)"
    assert "differs from the kept run in lr/scale (lr 1e-3, scale 2 vs lr 3e-3, scale 2)" in md


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
    md = (tmp_path / "table.md").read_text()
    assert md_table(md)[DCFT8]["mnli"] == "81.00 ± 1.41 / 83.00 ± 2.83 (n=2)"
    assert md_table(md, after="## Paper, deberta-v3-base")[DCFT8]["mnli"] == "89.40/89.63"


def test_figure_is_png_with_kernel_panel_only_for_a_dcft_kernel_sweep(tmp_path):
    # figure.png is params.png plus a row of kernel panels when the folder has a sweep: a taller image
    write_grid(tmp_path / "both")
    write_run(tmp_path / "both", "DCFT d=2 s=2 k=1", "rte", 1, {"accuracy": 71.0}, method=dcft_cfg(2))
    run_report(tmp_path / "both")
    assert png_size(tmp_path / "both" / "figure.png")[1] > png_size(tmp_path / "both" / "params.png")[1]
    write_run(tmp_path / "lora", LORA1, "rte", 1, {"accuracy": 60.0})
    assert report.main([str(tmp_path / "lora")]) == 0       # no DCFT run: no kernel panel
    assert png_size(tmp_path / "lora" / "figure.png") == png_size(tmp_path / "lora" / "params.png")
    write_grid(tmp_path / "one_size")                 # DCFT d=8 only: no sweep, no kernel panel
    run_report(tmp_path / "one_size")
    assert png_size(tmp_path / "one_size" / "figure.png") == png_size(tmp_path / "one_size" / "params.png")


def dcft_cfg(d, **changes) -> dict:
    """A complete resolved config.method of DCFT, as a real record has it."""
    return {"name": "dcft", "kernel_size": d, "stride": None, "rank": 1, "alpha": 16.0, "r": 8, "dropout": 0.0,
            "init": "official", "orth_reg": "official", "orth_reg_weight": 0.1, "targets": "all",
            "target_modules": None, "modules_to_save": None, **changes}


def test_kernel_panel_reads_each_records_config_not_its_label(tmp_path):
    runs = {  # label -> (config.method, on the kernel panel?)
        "DCFT d=2 s=2 k=1": (dcft_cfg(2), True),
        "DCFT d=4 s=4 k=1": (dcft_cfg(4, stride=4), True),             # s = d written out
        "DCFT d=8 s=8 k=2": (dcft_cfg(8, rank=2), True),
        "renamed DCFT run": (dcft_cfg(6), True),                        # the label format plays no part
        "DCFT d=8 s=4 k=1": (dcft_cfg(8, stride=4), False),             # s < d: another curve
        "DCFT d=4 s=4 k=1 init=zero": (dcft_cfg(4, init="zero"), False),
        "DCFT d=4 s=4 k=1 [Q,V]": (dcft_cfg(4, targets="qv"), False),
        "DCFT d=4 s=4 k=1 [query_proj]": (dcft_cfg(4, target_modules=["query_proj"]), False),
        "LoRA r=4": ({"name": "lora", "alpha": 16.0, "r": 4, "kernel_size": 4}, False),
    }
    for i, (label, (method, _)) in enumerate(runs.items()):
        write_run(tmp_path, label, "rte", 1, {"accuracy": 50.0 + i}, method=method)
    collected = report.collect_runs(tmp_path)
    table = report.aggregate(collected, report.infer_expected(collected), [], None)
    order = list(runs)
    assert report.figures._kernel_sweep(table) == {"rte": sorted(
        (method["kernel_size"], 50.0 + order.index(label)) for label, (method, shown) in runs.items() if shown)}
    # a record without a config (or a config without kernel_size) is never on the panel, beside two that are
    write_run(tmp_path / "bare", DCFT8, "rte", 1, {"accuracy": 50.0}, method={"name": "dcft"})
    write_run(tmp_path / "bare", "DCFT d=2 s=2 k=1", "rte", 1, {"accuracy": 51.0}, method=dcft_cfg(2))
    write_run(tmp_path / "bare", "DCFT d=4 s=4 k=1", "rte", 1, {"accuracy": 52.0}, method=dcft_cfg(4))
    collected = report.collect_runs(tmp_path / "bare")
    assert report.figures._kernel_sweep(report.aggregate(collected, report.infer_expected(collected), [], None)) == {
        "rte": [(2, 51.0), (4, 52.0)]}


def test_one_kernel_size_is_no_sweep(tmp_path):
    """A folder whose DCFT runs all share one kernel size (e.g. d=8 on several tasks) gets no kernel panel."""
    for task in ("rte", "cola"):
        write_run(tmp_path, DCFT8, task, 1, {MAIN[task]: 60.0}, method=dcft_cfg(8))
    collected = report.collect_runs(tmp_path)
    assert report.figures._kernel_sweep(report.aggregate(collected, report.infer_expected(collected), [], None)) == {}
    write_run(tmp_path, "DCFT d=2 s=2 k=1", "cola", 1, {MAIN["cola"]: 61.0}, method=dcft_cfg(2))
    collected = report.collect_runs(tmp_path)
    assert report.figures._kernel_sweep(report.aggregate(collected, report.infer_expected(collected), [], None)) == {
        "rte": [(8, 60.0)], "cola": [(2, 61.0), (8, 60.0)]}


def test_kernel_sweep_size_of_a_config():
    assert report.kernel_sweep_size(dcft_cfg(8)) == 8
    # records from before `init` / `targets` existed ran the paper's init on all matrices
    assert report.kernel_sweep_size({"name": "dcft", "kernel_size": 2, "stride": None, "rank": 1}) == 2
    assert report.kernel_sweep_size(dcft_cfg(8, stride=2)) is None
    assert report.kernel_sweep_size(dcft_cfg(True)) is None
    assert report.kernel_sweep_size({"name": "lokr", "kernel_size": 8}) is None
    assert report.kernel_sweep_size({}) is None


def test_task_order_is_the_task_registry():
    from dcft_lab.data.tasks import GLUE_TASKS, TASKS

    assert report.TASK_ORDER == list(TASKS) and report.GLUE8 == frozenset(GLUE_TASKS)
    assert report.sort_tasks(["zz", "sft", "rte", "cola", "xsum"]) == ["cola", "rte", "xsum", "sft", "zz"]


def test_labels_matching_is_one_rule_for_labels_and_curves_labels():
    labels = [DCFT8, LORA1]
    assert report.labels_matching("--labels", "^DCFT", labels) == [DCFT8]
    assert report.labels_matching("--curves-labels", "=1", labels) == labels
    for option in ("--labels", "--curves-labels"):
        with pytest.raises(ValueError, match=rf"^{option} '\^BitFit' matches no label; labels: \['DCFT d=8 s=8 k=1', "
                                             r"'LoRA r=1'\]$"):
            report.labels_matching(option, "^BitFit", labels)
        with pytest.raises(ValueError, match=rf"^{option} '\(' is not a valid regular expression"):
            report.labels_matching(option, "(", labels)


def test_out_dir_and_exit_codes(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err
    write_grid(tmp_path / "runs")
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"table.md", "table.csv", "figure.png",
                                                             "params.png", "curves.png"}


def test_cli_module_is_torch_free_and_exits_2_on_empty(tmp_path):
    code = ("import runpy, sys; sys.argv = ['report', sys.argv[1]]\n"
            "try:\n    runpy.run_module('dcft_lab.report', run_name='__main__')\n"
            "except SystemExit as e:\n    assert 'torch' not in sys.modules, 'report imported torch'\n"
            "    raise\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: no results.json under {tmp_path}"


# ---------------------------------------------------------------- multi-seed study options


def test_cells_carry_no_paper_text_and_the_paper_has_its_own_table(tmp_path):
    write_grid(tmp_path)
    code, md = run_report(tmp_path)
    assert code == 0
    ours_text = md.split("## Paper")[0]
    assert "paper" not in ours_text.split("Metric:")[1].split("Cells:")[0].lower() and "Δ" not in ours_text
    ours = md_table(md)
    assert ours[DCFT8]["cola"] == "41.50 ± 2.12 (n=2)"                  # (40, 43): sd = 3/√2
    assert ours[DCFT8]["avg"] == "56.75" and ours[LORA1]["avg"] == "49.25"
    heading = "## Paper, deberta-v3-base (for orientation, not comparable when the backbone differs)"
    assert heading in md and md.index(heading) > md.index(f"| {SHOWN8} |")
    printed = md_table(md, after="## Paper, deberta-v3-base")
    assert set(printed) == {LORA1, DCFT8}
    assert printed[DCFT8]["rte"] == "88.45" and printed[DCFT8]["cola"] == "71.07"
    assert printed[DCFT8]["avg"] == f"{(88.45 + 71.07) / 2:.2f}"
    assert printed[LORA1]["cola"] == "68.60"


def test_update_scale_from_the_resolved_config():
    assert report.update_scale({"name": "dcft", "alpha": 16.0, "r": 8}) == 2.0
    assert report.update_scale({"name": "lora", "alpha": 2, "r": 1}) == 2.0
    assert report.update_scale({"name": "lokr", "alpha": 1.0, "r": 4}) == 0.25
    assert report.update_scale({"name": "adalora", "alpha": 16.0, "init_r": 3, "r": 99}) == pytest.approx(16 / 3)
    assert report.update_scale({"name": "none"}) is None
    assert report.update_scale({"name": "lora", "alpha": "${preset.alpha}", "r": 1}) is None
    assert report.update_scale(None) is None
    assert [report.fmt_lr(v) for v in (1e-3, 3e-4, 2.5e-5, 0.01)] == ["1e-3", "3e-4", "2.5e-5", "1e-2"]


def test_scale_and_lr_columns(tmp_path):
    ada = {"name": "adalora", "alpha": 16.0, "init_r": 3, "target_r": 2}
    for seed in (1, 2):
        write_run(tmp_path, DCFT8, "rte", seed, {"accuracy": 70.0}, lr=3e-4)
        # LoRA: the two seeds ran with different learning rates: both must show.
        write_run(tmp_path, LORA1, "rte", seed, {"accuracy": 60.0}, lr=1e-3 if seed == 1 else 3e-3)
        write_run(tmp_path, "AdaLoRA r=3->2", "rte", seed, {"accuracy": 60.0}, method=ada)
        write_run(tmp_path, "Head only", "rte", seed, {"accuracy": 50.0}, method={"name": "none"}, adapter=0)
    code, md = run_report(tmp_path)
    assert code == 0
    ours = md_table(md)
    assert (ours[DCFT8]["scale"], ours[DCFT8]["lr"]) == ("2", "3e-4")
    assert (ours[LORA1]["scale"], ours[LORA1]["lr"]) == ("16", "1e-3, 3e-3")
    assert ours["AdaLoRA r=3->2"]["scale"] == "5.333"
    assert (ours["Head only"]["scale"], ours["Head only"]["adapter params"]) == ("—", "0")
    rows = read_csv(tmp_path / "table.csv")
    assert rows[(LORA1, "rte", "accuracy")]["lr"] == "1e-3, 3e-3"
    assert rows[(DCFT8, "rte", "accuracy")]["scale"] == "2"


def test_metric_final_and_best_pick_different_numbers(tmp_path):
    for seed, (best, final) in zip((1, 2, 3), [(80.0, 70.0), (82.0, 74.0), (84.0, 72.0)]):
        write_run(tmp_path, DCFT8, "rte", seed, {"accuracy": best}, final={"accuracy": final})
    code, md = run_report(tmp_path)
    assert code == 0
    assert md_table(md)[DCFT8]["rte"] == "82.00 ± 2.00 (n=3)"
    assert "Metric: **best** — metrics.best" in md
    row = read_csv(tmp_path / "table.csv")[(DCFT8, "rte", "accuracy")]
    assert (float(row["mean"]), row["source"]) == (82.0, "best")
    code, md = run_report(tmp_path, "--metric", "final")
    assert code == 0
    assert md_table(md)[DCFT8]["rte"] == "72.00 ± 2.00 (n=3)"
    assert "Metric: **final** — metrics.final" in md
    row = read_csv(tmp_path / "table.csv")[(DCFT8, "rte", "accuracy")]
    assert (float(row["mean"]), row["source"]) == (72.0, "final")


def test_metric_final_missing_is_a_failed_run(tmp_path):
    write_run(tmp_path, DCFT8, "rte", 1, {"accuracy": 80.0}, final={"loss": 0.3})
    write_run(tmp_path, DCFT8, "rte", 2, {"accuracy": 82.0})
    code, md = run_report(tmp_path, "--metric", "final")
    assert code == 0
    assert "completed but metrics.final lacks ['accuracy']" in md
    assert md_table(md)[DCFT8]["rte"] == "82.00 (1/2)"


def test_compare_seeds_paired_against_hand_values():
    # Shared seeds 1..3, differences [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.302653.
    c = report.compare_seeds({1: 3.0, 2: 5.0, 3: 7.0}, {1: 2.0, 2: 3.0, 3: 4.0})
    half = 4.302653 / math.sqrt(3)
    assert c.test == "paired t" and c.n_pairs == 3 and c.df == 2
    assert (c.diff, c.mean_a, c.mean_b) == (pytest.approx(2.0), pytest.approx(5.0), pytest.approx(3.0))
    assert (c.low, c.high) == (pytest.approx(2 - half, abs=1e-5), pytest.approx(2 + half, abs=1e-5))
    assert not c.significant                                            # 2 − 2.484 < 0
    # Differences [2, 3, 4]: same spread, interval [0.516, 5.484] excludes 0. A seed only A has is ignored.
    c = report.compare_seeds({1: 4.0, 2: 6.0, 3: 8.0, 9: 100.0}, {1: 2.0, 2: 3.0, 3: 4.0})
    assert c.n_pairs == 3 and c.diff == pytest.approx(3.0) and c.low == pytest.approx(3 - half, abs=1e-5)
    assert c.significant and c.unpaired == ("A seed 9",)  # ... and named, for the tables
    # seeds recorded as numbers on one side and as text on the other still pair
    c = report.compare_seeds({"1": 4.0, "2": 6.0, "3": 8.0}, {1: 2.0, 2: 3.0, 3: 4.0})
    assert c.test == "paired t" and c.n_pairs == 3 and c.unpaired == ()


def test_a_pilot_run_never_enters_a_table(tmp_path):
    # a held-out-slice score is not a dev-set result: a report pointed at a whole study folder lists it, apart
    path = write_run(tmp_path, DCFT8, "rte", 1, {"accuracy": 90.0})
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "data": {"eval_source": "train_holdout"}}))
    write_run(tmp_path, DCFT8, "rte", 2, {"accuracy": 70.0})
    collected = report.collect_runs(tmp_path, "final")
    assert [r.seed for r in collected.completed] == [2]
    assert collected.corrupt == [(path, "scored on a held-out slice of its training split (a pilot run); expected "
                                        "a dev / test set result")]


def test_compare_seeds_welch_against_hand_values():
    # No shared seed. a: mean 2, var 1; b: mean 4, var 1; se = √(1/3 + 1/3); df = 4; t(0.975, 4) = 2.776445.
    c = report.compare_seeds({1: 1.0, 2: 2.0, 3: 3.0}, {4: 3.0, 5: 4.0, 6: 5.0})
    half = 2.776445 * math.sqrt(2 / 3)
    assert c.test == "Welch t" and (c.n_a, c.n_b, c.n_pairs) == (3, 3, 0)
    assert c.df == pytest.approx(4.0) and c.diff == pytest.approx(-2.0)
    assert (c.low, c.high) == (pytest.approx(-2 - half, abs=1e-5), pytest.approx(-2 + half, abs=1e-5))
    assert not c.significant                                            # −2 + 2.267 > 0
    # Unequal variances, one shared seed only (→ Welch): va/na = 1/3, vb/nb = 2/2 = 1,
    # df = (4/3)² / ((1/3)²/2 + 1²/1) = 32/19.
    c = report.compare_seeds({1: 1.0, 2: 2.0, 3: 3.0}, {1: 4.0, 5: 6.0})
    assert c.test == "Welch t" and c.df == pytest.approx(32 / 19) and c.diff == pytest.approx(-3.0)
    assert c.high - c.diff == pytest.approx(5.176232 * math.sqrt(4 / 3), abs=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        report.compare_seeds({1: 1.0}, {1: 2.0, 2: 3.0})


def test_compare_cli_section_and_csv(tmp_path):
    for seed, (a, b) in zip((1, 2, 3), [(73.0, 70.0), (75.0, 73.0), (77.0, 76.0)]):
        write_run(tmp_path, DCFT8, "rte", seed, {"accuracy": a})
        write_run(tmp_path, LORA1, "rte", seed, {"accuracy": b})
    write_run(tmp_path, DCFT8, "cola", 1, {"matthews": 40.0})       # one seed: not compared
    write_run(tmp_path, LORA1, "cola", 1, {"matthews": 30.0})
    write_run(tmp_path, LORA1, "cola", 2, {"matthews": 32.0})
    code, md = run_report(tmp_path, "--compare", DCFT8, LORA1)
    assert code == 0
    assert f"## {SHOWN8} vs {LORA1}" in md
    section = md_table(md, first_header="| task |", after=f"## {SHOWN8} vs {LORA1}")
    # rte differences [3, 2, 1]: mean 2, sd 1 -> 2 ± 4.302653/√3 = [-0.48, +4.48].
    assert section["rte"] == {"task": "rte", "A − B": "+2.00", "95% CI": "[-0.48, +4.48]", "n": "3 pairs",
                              "test": "paired t", "verdict": "not significant"}
    assert section["cola"]["verdict"] == "too few seeds (1 vs 2; need 2 each)"
    with (tmp_path / "compare.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["task"] == "rte" and rows[0]["test"] == "paired t"
    assert float(rows[0]["diff"]) == pytest.approx(2.0)
    assert float(rows[0]["ci_low"]) == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert rows[0]["significant"] == "False" and rows[0]["n_pairs"] == "3"
    assert report.main([str(tmp_path), "--compare", DCFT8, "LoRA r=99"]) == 2     # typo: an error, not silence


def curve(values: list[float], step: int = 10, metric: str = "accuracy") -> list[dict]:
    return [{"step": step * (i + 1), "epoch": 0, "metrics": {metric: v}} for i, v in enumerate(values)]


def test_notes_are_printed_under_the_table_in_order(tmp_path):
    write_grid(tmp_path)
    code, md = run_report(tmp_path, "--note", "chance: MRPC 68.38", "--note", "RTE: one seed")
    assert code == 0
    lines = md.splitlines()
    legend = next(i for i, line in enumerate(lines) if line.startswith("Cells: mean"))
    first, second = lines.index("Note: chance: MRPC 68.38"), lines.index("Note: RTE: one seed")
    assert legend < first < second < lines.index("## Missing or failed runs")
    assert "Note: chance" not in run_report(tmp_path)[1]  # a later report without --note has none


def test_mean_curve_uses_steps_every_seed_has():
    steps, means, stds = report.mean_curve([{10: 50.0, 20: 60.0, 30: 70.0}, {10: 54.0, 20: 62.0}, {}])
    assert steps == [10, 20] and means == [52.0, 61.0]
    assert stds == [pytest.approx(math.sqrt(8)), pytest.approx(math.sqrt(2))]
    assert report.mean_curve([{10: 50.0}]) == ([10], [50.0], None)          # one seed: no band
    run = report.Run(path=Path("x"), status="completed", label="L", task="mnli", seed=1, backbone="b",
                     main_metric="accuracy_m", chosen={}, params={}, experiment=None, failure="", finished_at="",
                     evaluations=[{"step": 5, "metrics": {"accuracy_m": 80.0, "accuracy_mm": 84.0}},
                                  {"step": 9, "metrics": {"accuracy_m": 81.0}}])   # lacks mm: skipped
    assert report.seed_curve(run, ["accuracy_m", "accuracy_mm"]) == {5: 82.0}


def write_study(root: Path) -> None:
    """Three labels x two tasks x two seeds, each run with a short learning curve."""
    labels = {DCFT8: 0.0, "DCFT d=8 s=8 k=1 init=zero": 1.0, LORA1: -1.0}
    for label, shift in labels.items():
        method = {"name": "dcft", "alpha": 16.0, "r": 8, "init": "zero"} if "init" in label else None
        for task in ("rte", "cola"):
            for seed in (1, 2):
                values = [50 + shift + seed, 60 + shift + seed, 65 + shift + seed]
                write_run(root, label, task, seed, {MAIN[task]: max(values)}, final={MAIN[task]: values[-1]},
                          evaluations=curve(values, metric=MAIN[task]), method=method, adapter=PARAMS[DCFT8][0]
                          if "init" in label else None)
    write_run(root, "Head only", "rte", 1, {"accuracy": 48.0}, method={"name": "none"}, adapter=0)
    write_run(root, "Head only", "cola", 1, {"matthews": 30.0}, method={"name": "none"}, adapter=0)


def test_curves_and_params_figures_are_written(tmp_path):
    write_study(tmp_path)
    code, _ = run_report(tmp_path)
    assert code == 0
    for name in ("curves.png", "params.png", "figure.png"):
        width, height = png_size(tmp_path / name)
        assert width > 300 and height > 200 and (tmp_path / name).stat().st_size > 10_000


def test_curves_labels_and_tasks_select(tmp_path, monkeypatch):
    write_study(tmp_path)
    seen = {}

    def fake_curves(table, path, labels, tasks, marks=()):
        seen.update(path=path, labels=labels, tasks=tasks, marks=marks)
        path.write_bytes(b"png")

    monkeypatch.setattr(report.figures, "make_curves", fake_curves)
    assert report.main([str(tmp_path), "--curves-labels", "^DCFT d=8", "--curves-tasks", "cola,rte",
                        "--curves-name", "init_curves.png", "--curves-mark", "20=end of a shorter budget"]) == 0
    assert seen["marks"] == [(20, "end of a shorter budget")]
    assert seen["labels"] == [DCFT8, "DCFT d=8 s=8 k=1 init=zero"]
    assert seen["tasks"] == ["cola", "rte"]                                # the report's task order
    assert seen["path"] == tmp_path / "init_curves.png" and seen["path"].exists()
    assert report.main([str(tmp_path), "--curves-labels", "^BitFit"]) == 2      # matches nothing
    assert report.main([str(tmp_path), "--curves-tasks", "mrpc"]) == 2          # no such task here
    assert report.main([str(tmp_path), "--curves-labels", "("]) == 2            # bad regex
    assert report.main([str(tmp_path), "--curves-mark", "end"]) == 2            # not STEP=TEXT


def test_curves_default_to_tasks_with_a_completed_run(tmp_path, monkeypatch):
    """A task that is only expected so far (a planned stage) is a missing cell in the table, not an empty panel."""
    seen = {}
    monkeypatch.setattr(report.figures, "make_curves", lambda table, path, labels, tasks, marks: seen.update(tasks=tasks))
    for seed in (1, 2):
        write_run(tmp_path, LORA1, "rte", seed, {"accuracy": 60.0 + seed}, evaluations=curve([50.0, 60.0]))
    grid = [{"method_label": LORA1, "task": t, "seed": s} for t in ("cola", "rte") for s in (1, 2)]
    (tmp_path / "expected.json").write_text(json.dumps(grid))
    assert report.main([str(tmp_path), "--expect", str(tmp_path / "expected.json")]) == 0
    assert seen["tasks"] == ["rte"]
    assert report.main([str(tmp_path), "--expect", str(tmp_path / "expected.json"), "--curves-tasks", "cola,rte"]) == 0
    assert seen["tasks"] == ["cola", "rte"]                              # asked for by name: drawn, empty panel


def table_of(root: Path, **kwargs):
    collected = report.collect_runs(root)
    return report.aggregate(collected, report.infer_expected(collected), [], None, **kwargs)


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# MRPC- and STS-B-like cells (final scores of 3 seeds) of the v1 study: head-only sits near the adapter rows on
# MRPC and far below them on STS-B (where it stretched the v1 figures' y axis over 33-87).
V1_LIKE = {LORA1: (41_472, {"mrpc": [79.9, 76.5, 77.9], "stsb": [85.7, 86.1, 85.9]}),
           DCFT8: (7_488, {"mrpc": [75.5, 74.8, 75.7], "stsb": [85.5, 84.8, 85.1]}),
           "DCFT d=8 s=8 k=1 init=zero": (7_488, {"mrpc": [76.0, 77.0, 75.9], "stsb": [85.6, 85.0, 85.5]}),
           "Head only": (0, {"mrpc": [70.6, 70.4, 71.0], "stsb": [33.1, 33.7, 34.3]})}


def write_v1_like(root: Path, seeds: int = 3) -> None:
    for label, (adapter, scores) in V1_LIKE.items():
        method = {"name": "none"} if adapter == 0 else METHOD_CFG.get(label, {"name": "dcft", "init": "zero"})
        for task, values in scores.items():
            for seed, value in zip(range(6, 6 + seeds), values + [values[0] + 1.0]):
                write_run(root, label, task, seed, {MAIN[task]: value}, method=method, adapter=adapter,
                          evaluations=curve([value - 20, value - 2, value], metric=MAIN[task]))


def mean_markers(ax) -> dict:
    """label shown -> (x, y) of each row's mean marker on a panel."""
    return {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines
            if not line.get_label().startswith("_") and len(line.get_xdata()) == 1}


def test_params_figure_is_one_panel_per_task_and_never_mixes_metrics(tmp_path):
    write_v1_like(tmp_path)
    write_run(tmp_path, "LoKr r=1 f=8", "mrpc", 6, {"accuracy": 73.0}, adapter=7_488)
    fig = report.params_figure(table_of(tmp_path))
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["mrpc: accuracy (n=1–3 seeds)", "stsb: pearson (n=3 seeds)"]
    assert [ax.get_ylabel() for ax in panels] == ["accuracy (best)", "pearson (best)"]    # one metric per axis
    mrpc = mean_markers(panels[0])
    assert mrpc[LORA1] == (41_472, pytest.approx(78.1)) and "LoKr r=1 f=8" in mrpc
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert SHOWN8 in legend and DCFT8 not in legend and all(" s=" not in name for name in legend)
    assert "bars (only where a cell has ≥ 4 seeds): 95% t-interval of the mean" in fig._suptitle.get_text()
    pyplot().close(fig)


def test_params_panel_draws_head_only_and_chance_as_lines_and_zooms_past_far_ones(tmp_path):
    plt = pyplot()
    write_v1_like(tmp_path)
    table = table_of(tmp_path)
    fig, (mrpc, stsb) = plt.subplots(1, 2)
    assert report.figures.plot_params_panel(mrpc, table, "mrpc")
    assert report.figures.plot_params_panel(stsb, table, "stsb")
    # head-only is a dashed line at its mean, never a point (it has no place on a log axis); MRPC's chance level
    # (majority class, 68.38) is a dotted line: both near enough to the adapter rows to stay on the axis
    lines = {(round(line.get_ydata()[0], 2), line.get_linestyle()) for line in mrpc.lines
             if len(line.get_xdata()) == 2}
    assert lines == {(70.67, "--"), (68.38, ":")}
    assert "Head only" not in mean_markers(mrpc) and mrpc.get_xlim()[0] > 1_000
    assert mrpc.get_ylim()[0] < 68.38
    # STS-B: head-only (33.7) and chance (0) would squeeze the adapter rows (84.8-86.1) into a sliver: the axis
    # shows the rows, and the levels off it are written at its edge with their values
    low, high = stsb.get_ylim()
    assert 83 < low < 84.8 and 86.1 < high < 88
    assert not [line for line in stsb.lines if len(line.get_xdata()) == 2]
    edge = [text.get_text() for text in stsb.texts]
    assert edge == ["↓ off the axis: Head only 33.70; chance 0"]
    plt.close(fig)


def test_params_panel_rows_with_equal_counts_share_their_x_and_show_every_seed(tmp_path):
    plt = pyplot()
    write_v1_like(tmp_path)
    table = table_of(tmp_path)
    fig, ax = plt.subplots()
    report.figures.plot_params_panel(ax, table, "mrpc")
    markers = mean_markers(ax)
    assert markers[SHOWN8][0] == markers["DCFT d=8 stride=8 k=1 init=zero"][0] == 7_488      # no sideways jitter
    # every seed a dot at its row's exact x (n=3: no bars, the seeds are the spread)
    dots = [c.get_offsets() for c in ax.collections]
    assert sorted(len(d) for d in dots) == [3, 3, 3]
    assert sorted({float(x) for d in dots for x, _ in d}) == [7_488.0, 41_472.0]
    assert not ax.containers                                                                 # no error bars
    plt.close(fig)


def test_params_panel_bars_are_a_t_interval_from_four_seeds(tmp_path):
    plt = pyplot()
    write_v1_like(tmp_path, seeds=4)
    table = table_of(tmp_path)
    fig, ax = plt.subplots()
    report.figures.plot_params_panel(ax, table, "mrpc")
    scores = table.cells[(LORA1, "mrpc")].scores                     # 79.9, 76.5, 77.9, 80.9
    half = 3.182446 * statistics.stdev(scores) / 2                   # t(0.975, 3) * sd / sqrt(4)
    bars = {tuple(round(v, 4) for v in c.lines[2][0].get_segments()[0][:, 1]) for c in ax.containers}
    assert (round(statistics.fmean(scores) - half, 4), round(statistics.fmean(scores) + half, 4)) in bars
    assert len(bars) == 3                                            # one per adapter row; head-only is a line
    plt.close(fig)


def test_a_method_has_one_colour_in_every_figure_of_every_report(tmp_path, monkeypatch):
    """The colour / marker of a method come from its label alone: two reports with other rows, in another order,
    and every figure of each (params, figure, curves) draw LoRA r=1 and DCFT d=8 alike, and unlike each other."""
    figures = []
    monkeypatch.setattr(report.figures, "_save", lambda fig, path: figures.append(fig))
    write_v1_like(tmp_path / "a")
    for seed in (6, 7):
        write_run(tmp_path / "b", "DCFT d=2 s=2 k=1", "mrpc", seed, {"accuracy": 76.0 + seed}, method=dcft_cfg(2),
                  adapter=20_880, evaluations=curve([70.0, 76.0]))
        write_run(tmp_path / "b", DCFT8, "mrpc", seed, {"accuracy": 75.0 + seed}, method=dcft_cfg(8),
                  adapter=7_488, evaluations=curve([70.0, 75.0]))
        write_run(tmp_path / "b", LORA1, "mrpc", seed, {"accuracy": 78.0}, adapter=41_472,
                  evaluations=curve([70.0, 78.0]))
    assert report.main([str(tmp_path / "a")]) == 0
    assert report.main([str(tmp_path / "b"), "--order", "DCFT d=2 s=2 k=1", "--order", DCFT8]) == 0
    assert len(figures) == 6
    colours = defaultdict(set)
    for fig in figures:
        for handle, text in zip(fig.legends[0].legend_handles, fig.legends[0].get_texts()):
            colours[text.get_text()].add((handle.get_color(), handle.get_marker()))
        for ax in fig.axes:
            for name, _ in mean_markers(ax).items():
                line = next(line for line in ax.lines if line.get_label() == name)
                colours[name].add((line.get_color(), line.get_marker()))
    for name in (LORA1, SHOWN8, "DCFT d=2 stride=2 k=1"):
        style = report.method_style(name)
        assert colours[name] == {(style["color"], style["marker"])}, name
    assert report.method_style(LORA1)["color"] != report.method_style(DCFT8)["color"]
    assert report.method_style(SHOWN8) == report.method_style(DCFT8)          # recorded or shown: one method
    for fig in figures:
        pyplot().close(fig)


def test_unknown_labels_get_a_stable_style_of_their_own():
    style = report.method_style("LoRA r=16 [Q,V]")
    assert style == report.method_style("LoRA r=16 [Q,V]") and style["color"] not in {
        c for c, _, _ in report.methods.METHOD_STYLES.values()}


def test_curves_draw_every_seed_and_no_band(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report.figures, "_save", lambda fig, path: figures.append(fig))
    write_v1_like(tmp_path, seeds=2)
    table = table_of(tmp_path)
    report.figures.make_curves(table, tmp_path / "c.png", table.labels, ["stsb"], [(2, "a mark")])
    (fig,) = figures
    main, zoom = [ax for ax in fig.axes if ax.get_visible()]
    assert not [c for c in main.collections + zoom.collections if type(c).__name__ == "PolyCollection"]
    thin = [line for line in main.lines if line.get_alpha() == 0.35]
    assert len(thin) == 2 * len(V1_LIKE)                             # every seed of every row, as a line
    assert main.get_title() == "stsb: pearson"
    # the zoom fits the adapter rows' last third; head-only (far below) is written at its edge
    assert zoom.get_ylim()[0] > 80 and any("Head only" in text.get_text() for text in zoom.texts)
    assert any(list(line.get_xdata()) == [2, 2] for line in main.lines)             # --curves-mark
    assert "dash-dot line at step 2: a mark" in fig._suptitle.get_text()
    pyplot().close(fig)


@pytest.mark.parametrize(("counts", "margin"), [({LORA1: 41_472}, 2.0), ({LORA1: 41_472, DCFT8: 7_488}, 1.3)],
                         ids=["one-count", "two-counts"])
def test_params_panel_keeps_every_point_off_the_frame(tmp_path, counts, margin):
    """On a log axis matplotlib's autoscale alone gives one count limits a hair's width wide (past the point), and
    puts two counts' points on the frame, half their markers cut off."""
    plt = pyplot()
    for label, adapter in counts.items():
        for seed in (1, 2):
            write_run(tmp_path, label, "rte", seed, {"accuracy": 78.0 + seed}, adapter=adapter)
    fig, ax = plt.subplots()
    assert report.figures.plot_params_panel(ax, table_of(tmp_path), "rte")
    fig.canvas.draw()
    low, high = ax.get_xlim()
    assert low < min(counts.values()) / margin and high > max(counts.values()) * margin
    plt.close(fig)


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


def test_a_label_the_paper_numbers_lack_is_an_error_not_none(rows):
    """The join is by exact label: a label no row carries names the close ones instead of reading as "no number"."""
    with pytest.raises(ValueError, match=r"^no paper numbers for method_label 'DCFT d=8 stride=8 k=1'; close labels: "
                                         r"'DCFT d=8 s=8 k=1'"):
        paper.paper_value(rows, "DCFT d=8 stride=8 k=1", "rte", "accuracy")
    with pytest.raises(ValueError, match=r"^no paper numbers for method_label 'LoRA r=1' in table 'table4'; "):
        paper.paper_value(rows, LORA1, "cola", "matthews", table="table4")
    with pytest.raises(ValueError, match=r"none of its \d+ labels is close$"):
        paper.paper_value(rows, "Head only", "rte", "accuracy")
    assert paper.paper_value(rows, LORA1, "rte", "f1") is None  # a label the numbers know, without that metric


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


def test_paths_in_the_report_are_relative_to_its_folder(tmp_path):
    # A committed report must read the same in any clone: no absolute paths of the machine that wrote it.
    runs = tmp_path / "study" / "main"
    write_grid(runs, skip={(DCFT8, "cola", 2)}, fail={(LORA1, "rte", 2)})
    out = tmp_path / "study" / "init_study"
    assert report.main([str(runs), "--out", str(out)]) == 0
    md = (out / "table.md").read_text()
    assert str(tmp_path) not in md
    assert "Provenance: ../main · 7 results.json" in md
    failed = next(line for line in md.splitlines() if line.startswith("- failed:"))
    shown = re.search(r"\((\.\./main/[^)]+/results\.json)\)$", failed)
    assert shown and (out / shown.group(1)).exists()


def test_labels_and_tasks_restrict_the_whole_report(tmp_path):
    write_study(tmp_path)     # DCFT d=8, its init=zero variant, LoRA r=1 (rte, cola; seeds 1, 2) + head only
    out = tmp_path / "init"
    assert report.main([str(tmp_path), "--out", str(out), "--labels", "^DCFT d=8", "--tasks", "rte",
                        "--compare", "DCFT d=8 s=8 k=1 init=zero", DCFT8]) == 0
    md = (out / "table.md").read_text()
    rows = md_table(md)
    assert list(rows) == [DCFT8, "DCFT d=8 s=8 k=1 init=zero"]             # no LoRA, no head-only row
    assert "| rte | avg |" in md and "cola" not in md.split("## Paper")[0]   # only the rte column
    # rte, final scores 65 + shift + seed: DCFT d=8 66, 67; init=zero 67, 68.
    assert rows[DCFT8]["rte"] == "66.50 ± 0.71 (n=2)" and rows["DCFT d=8 s=8 k=1 init=zero"]["avg"] == "67.50"
    section = md_table(md, first_header="| task |", after="## DCFT d=8 stride=8 k=1 init=zero vs")
    assert list(section) == ["rte"] and section["rte"]["A − B"] == "+1.00"
    assert "Provenance: .. · 4 results.json (4 completed" in md              # the selection's records only
    assert {r["method_label"] for r in csv.DictReader((out / "table.csv").open())} == {DCFT8,
                                                                                      "DCFT d=8 s=8 k=1 init=zero"}
    # A comparison or selection outside what is shown is an error, and nothing is written.
    assert report.main([str(tmp_path), "--out", str(tmp_path / "x"), "--labels", "^DCFT", "--compare", DCFT8,
                        LORA1]) == 2
    assert report.main([str(tmp_path), "--out", str(tmp_path / "x"), "--labels", "^BitFit"]) == 2
    assert report.main([str(tmp_path), "--out", str(tmp_path / "x"), "--tasks", "mrpc"]) == 2
    assert report.main([str(tmp_path), "--out", str(tmp_path / "x"), "--labels", "("]) == 2
    assert not (tmp_path / "x").exists()


def test_order_fixes_rows_and_styles_across_reports(tmp_path):
    write_study(tmp_path)
    order = ["Head only", DCFT8, LORA1]
    collected = report.collect_runs(tmp_path)
    full = report.aggregate(collected, report.infer_expected(collected), [], None, order=order)
    assert full.labels == ["Head only", DCFT8, LORA1, "DCFT d=8 s=8 k=1 init=zero"]   # unlisted labels last
    default = report.aggregate(collected, report.infer_expected(collected), [], None)
    assert default.labels.index("Head only") == len(default.labels) - 1              # family order otherwise
    # A report of two of those labels draws each as the full report does.
    some, expected = report.select_runs(collected, report.infer_expected(collected), "^LoRA|init=zero", None)
    part = report.aggregate(some, expected, [], None, order=order)
    assert part.labels == [LORA1, "DCFT d=8 s=8 k=1 init=zero"]
    code, md = run_report(tmp_path, "--order", "Head only")
    assert code == 0 and list(md_table(md))[0] == "Head only"


def test_expected_cells_decide_missing_seeds_and_compared_tasks(tmp_path):
    # LoRA on rte (seeds 1, 2) and cola (seed 1 only, as planned); DCFT d=8 on rte only, as planned.
    for seed, (a, b) in zip((1, 2), [(70.0, 66.0), (74.0, 69.0)]):
        write_run(tmp_path, DCFT8, "rte", seed, {"accuracy": a})
        write_run(tmp_path, LORA1, "rte", seed, {"accuracy": b})
    write_run(tmp_path, LORA1, "cola", 1, {"matthews": 30.0})
    grid = [{"method_label": label, "task": "rte", "seed": s} for label in (DCFT8, LORA1) for s in (1, 2)]
    grid.append({"method_label": LORA1, "task": "cola", "seed": 1})
    (tmp_path / "expected.json").write_text(json.dumps(grid))
    code, md = run_report(tmp_path, "--expect", str(tmp_path / "expected.json"), "--compare", DCFT8, LORA1)
    assert code == 0
    rows = md_table(md)
    assert rows[LORA1]["cola"] == "30.00 (n=1)" and rows[DCFT8]["cola"] == report.DASH  # not "(1/2)", not "(0/2)"
    assert md.split("## Missing or failed runs")[1].strip().startswith("None.")
    section = md_table(md, first_header="| task |", after=f"## {SHOWN8} vs {LORA1}")
    assert list(section) == ["rte"]               # cola: DCFT d=8 has no cell there, so no "too few seeds" row
    # Without the grid, the cross product expects DCFT d=8 on cola and LoRA's second cola seed.
    code, md = run_report(tmp_path, "--compare", DCFT8, LORA1)
    assert "- missing: DCFT d=8 s=8 k=1 / cola / seed 1" in md and "30.00 (1/2)" in md
    assert md_table(md, first_header="| task |", after=f"## {SHOWN8} vs {LORA1}")["cola"]["verdict"].startswith(
        "too few seeds")
    # A task planned with one seed per row gets no interval, and says so (not "too few seeds").
    write_run(tmp_path, DCFT8, "cola", 1, {"matthews": 35.0})
    grid.append({"method_label": DCFT8, "task": "cola", "seed": 1})
    (tmp_path / "expected.json").write_text(json.dumps(grid))
    code, md = run_report(tmp_path, "--expect", str(tmp_path / "expected.json"), "--compare", DCFT8, LORA1)
    section = md_table(md, first_header="| task |", after=f"## {SHOWN8} vs {LORA1}")
    assert code == 0 and section["cola"]["verdict"] == "one seed planned (1 vs 1): no interval"
