"""Re-run a committed run with the current code and check that its numbers are identical.

    python scripts/rerun_check.py RUN_DIR [--evaluations N] [--out DIR]

Replays RUN_DIR's own command-line overrides (``.hydra/overrides.yaml``) into a fresh folder, in a subprocess with
the same thread count. With ``--evaluations N`` the replay is stopped (SIGKILL, the ordinary fault-injection hook)
right after the step of the N-th evaluation, which keeps the check cheap: the learning-rate schedule, data order and
evaluations are those of the full run, so equal prefixes mean the code computes the same run. Compares every
evaluation's metrics and every logged training loss (full precision) of that prefix; exit 0 when identical.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _losses(run_dir: Path, up_to_step: int) -> list[tuple[int, str]]:
    """(step, loss) rows of csv/metrics.csv as the strings logged (no float round trip), of the batches up to global
    step ``up_to_step``. A loss row's ``step`` is the batch index (Lightning logs it before the optimizer step
    increments the global step): row s is the (s+1)-th batch, so the rows wanted are s < up_to_step."""
    with (run_dir / "csv" / "metrics.csv").open() as handle:
        return [(int(row["step"]), row["train/loss"]) for row in csv.DictReader(handle)
                if row.get("train/loss") and int(row["step"]) < up_to_step]


def compare(original: Path, replay: Path, n_evaluations: int | None) -> list[str]:
    """Differences between the first N evaluations and losses of two run folders (empty when identical)."""
    a = json.loads((original / "results.json").read_text())["evaluations"]
    b = json.loads((replay / "results.json").read_text())["evaluations"]
    n = len(a) if n_evaluations is None else n_evaluations
    problems = []
    if len(a) < n or len(b) < n:
        return [f"too few evaluations to compare: original {len(a)}, replay {len(b)}, wanted {n}"]
    for ea, eb in zip(a[:n], b[:n]):
        if (ea["step"], ea["metrics"]) != (eb["step"], eb["metrics"]):
            problems.append(f"step {ea['step']}: original {ea['metrics']} != replay step {eb['step']} {eb['metrics']}")
    last = a[n - 1]["step"]
    la, lb = _losses(original, last), _losses(replay, last)
    if la != lb:
        diff = next(((x, y) for x, y in zip(la, lb) if x != y), (len(la), len(lb)))
        problems.append(f"training losses differ up to step {last}: first difference {diff}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--evaluations", type=int, help="replay only up to the N-th evaluation (default: all)")
    parser.add_argument("--out", type=Path, help="replay folder (default: a temporary folder)")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    record = json.loads((run_dir / "results.json").read_text())
    if record.get("status") != "completed":
        raise SystemExit(f"error: {run_dir} is {record.get('status')!r}; expected a completed run to compare with")
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    overrides = [o for o in overrides if not o.startswith(("hydra.", "run.inject_failure"))]
    out = (args.out or Path(tempfile.mkdtemp(prefix="rerun-"))).resolve()
    extra = []
    if args.evaluations:
        stop = record["evaluations"][args.evaluations - 1]["step"]
        # SIGKILL in the first training step after `stop` steps: the evaluation at `stop` is already recorded
        extra = [f"run.inject_failure=kill:{stop}"]
    cmd = [sys.executable, "-m", "dcft_lab.run", *overrides, *extra, f"hydra.run.dir={out}", "logger=csv",
           "trainer.enable_progress_bar=false"]
    print("replaying:", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, cwd=REPO)
    problems = compare(run_dir, out, args.evaluations)
    for line in problems:
        print("DIFFERENT:", line)
    if not problems:
        n = args.evaluations or len(record["evaluations"])
        print(f"IDENTICAL: {n} evaluations and every training loss up to step {record['evaluations'][n - 1]['step']}"
              f" (original commit {record.get('env', {}).get('git_commit')}, replay in {out})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
