"""studies.compare: two studies' main cells side by side, from the run records alone."""

from __future__ import annotations

import json
from pathlib import Path

from dcft_lab.studies.compare import comparison_markdown, main_cells


def _run(root: Path, task: str, row: str, seed: int, score: float, lr: float, alpha: float, **optim) -> None:
    folder = root / "main" / task / row / f"seed{seed}"
    folder.mkdir(parents=True)
    record = {"status": "completed", "seed": seed, "main_metric": "accuracy",
              "metrics": {"final": {"accuracy": score}},
              "config": {"optim": {"lr": lr, **optim}, "method": {"name": "lora", "r": 1, "alpha": alpha}}}
    (folder / "results.json").write_text(json.dumps(record))


def test_points_scores_and_gaps_side_by_side(tmp_path):
    old, new = tmp_path / "v1", tmp_path / "v2"
    for seed, (a, b) in zip((6, 7, 8), [(70.0, 74.0), (72.0, 75.0), (74.0, 79.0)]):
        _run(old, "mrpc", "dcft8", seed, a, 1e-2, 64)                       # v1: head at the row's lr
        _run(old, "mrpc", "lora", seed, b, 1e-3, 8)
        _run(new, "mrpc", "dcft8", seed, a + 3, 3e-3, 64, head_lr=1e-3, factor_lr_ratio=4)
        _run(new, "mrpc", "lora", seed, b, 1e-3, 8, head_lr=1e-3, factor_lr_ratio=1)
    (old / "main/mrpc/lora/seed8/results.json").write_text(json.dumps({"status": "failed"}))  # not a score
    cells = main_cells(old)
    assert cells[("lora", "mrpc")].scores == {"6": 74.0, "7": 75.0}
    assert cells[("dcft8", "mrpc")].setting("scale") == "64"  # alpha / r of the recorded method

    text = comparison_markdown(old, new, "v1", "v2", [("dcft8", "lora")])
    # dcft8: 72 ± 2 -> 75 ± 2; lr, ratio and head lr all moved, the scale did not
    assert ("| dcft8 | mrpc | 0.01 / 64 / 1 / 0.01 | 72.00 ± 2.00 (n=3) | 0.003 / 64 / 4 / 0.001 | "
            "75.00 ± 2.00 (n=3) | +3.00 | lr, ratio, head_lr |") in text
    assert "| lora | mrpc | 0.001 / 8 / 1 / 0.001 | 74.50 ± 0.71 (n=2) | 0.001 / 8 / 1 / 0.001 |" in text
    assert text.count("| nothing |") == 1  # lora: the same point in both
    # the gap, paired by seed: v1 diffs -4, -3 (seed 8 has no lora run) -> -3.5; v2 diffs -1, 0, -2 -> -1.0
    gap_v1, gap_v2 = text.split("| mrpc | ")[-1].split(" | ")
    assert gap_v1.startswith("-3.50 [") and gap_v1.endswith("(2 pairs)")
    assert gap_v2.startswith("-1.00 [") and "(3 pairs)" in gap_v2
