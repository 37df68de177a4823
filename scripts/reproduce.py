"""Launch (or print) a paper table's grid, then aggregate it:
`make reproduce-table1 [SCALE=cpu] [LAUNCHER=slurm]`, `make reproduce TABLE=table4 [LAUNCHER=slurm]`.

Each method row of experiments/<table>/grid.yaml is one Hydra multirun over the scale's per-task presets, all in one
sweep folder with a fixed sweep name, so re-running the command skips completed runs and retries failed ones.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def commands(table: str, scale: str, launcher: str, out: Path, sweep_name: str, extra: list[str]) -> tuple[list, list]:
    grids = yaml.safe_load((REPO / "experiments" / table / "grid.yaml").read_text())
    if scale not in grids:
        raise SystemExit(f"error: {table} has no '{scale}' grid; expected one of {sorted(grids)}")
    grid = grids[scale]
    seeds = ",".join(str(s) for s in grid["seeds"])
    cmds, expected = [], []
    for label, overrides in grid["methods"].items():
        cmds.append([sys.executable, "-m", "dcft_lab.run", "-m", f"experiment={','.join(grid['experiments'])}",
                     f"seed={seeds}", *overrides, f"sweep_name={sweep_name}", f"hydra.sweep.dir={out}",
                     f"hydra/launcher={launcher}", *extra])
        for exp in grid["experiments"]:
            for seed in grid["seeds"]:
                expected.append({"method_label": label, "task": exp.split("/")[-1], "seed": seed})
    return cmds, expected


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", default="table1", help="folder under experiments/ holding grid.yaml")
    parser.add_argument("--scale", default="full", help="a top-level key of the table's grid.yaml: full | cpu (study v1) "
                        "| cpu_v2 (study v2)")
    parser.add_argument("--launcher", choices=("basic", "local", "slurm"), default="basic")
    parser.add_argument("--out", type=Path, help="sweep folder (default: results/<table>_<scale>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides for every job (e.g. hydra.launcher.partition=gpu)")
    parser.add_argument("--jobs", type=int, help="study grids: jobs side by side (default: the grid's jobs)")
    args = parser.parse_args(argv)
    grid_file = REPO / "experiments" / args.table / "grid.yaml"
    grids = yaml.safe_load(grid_file.read_text())
    if args.scale not in grids:
        raise SystemExit(f"error: --scale {args.scale!r}: {args.table} has no such grid; expected one of {sorted(grids)}")
    grid = grids[args.scale]
    study_grid = []
    if "study_file" in grid:  # a study spec in its own file (its `cpu: study:` entry)
        study_grid = ["--grid", str(grid_file.parent / grid["study_file"])]
    if "study" in grid or study_grid:  # a staged study (pilot -> selection -> table): dcft_lab.study drives it, then the report
        from dcft_lab.study import main as study_main

        study_args = [*study_grid, *(["--out", str(args.out)] if args.out else []), *(["--jobs", str(args.jobs)] if args.jobs else []),
                      *(["--dry-run"] if args.dry_run else [])]
        if args.launcher != "basic" or args.extra:
            raise SystemExit("error: the CPU study runs its jobs itself (--jobs N); --launcher and extra overrides "
                             "are for the full-scale grids")
        return study_main(study_args)
    out = (args.out or REPO / "results" / f"{args.table}_{args.scale}").resolve()
    sweep_name = f"{args.table}_{args.scale}"
    cmds, expected = commands(args.table, args.scale, args.launcher, out, sweep_name, args.extra)
    for cmd in cmds:
        print(shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else cmd), flush=True)  # copy-pasteable
    if args.dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "expected_grid.json").write_text(json.dumps(expected, indent=1))
    failures = 0
    for cmd in cmds:
        failures += subprocess.run(cmd, cwd=REPO).returncode != 0
    from dcft_lab.report import main as report_main

    report_main([str(out), "--expect", str(out / "expected_grid.json"), "--table", args.table])
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
