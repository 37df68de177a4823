"""``python -m dcft_lab.study --grid FILE``: run a staged study (pilot -> selection -> stages -> reports), resumable.

The rules come from the spec: ``protocol: v2`` -> ``studies.v2.ProtocolStudy`` (per-task two-axis pilots with a
tolerance rule), otherwise ``studies.v1.Study`` (the v1 CPU study). The machinery is ``studies.scheduler``, the
reports ``studies.reports``. To stop: ``touch <out>/STOP`` lets the running jobs finish; ``PAUSE`` / SIGTERM / Ctrl-C
checkpoints them now; rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .studies.reports import completed_stage_runs, expected_cells, row_labels, write_reports  # noqa: F401
from .studies.scheduler import (  # noqa: F401  (the driver's names, as they were before the split)
    BEST_INIT,
    PAUSE_FILE,
    REPO,
    SIGTERM_EXIT,
    STOP_FILE,
    BaseStudy,
    Job,
    progress_markdown,
    run_study,
    write_selection,
)
from .studies.v1 import Study, pilot_markdown  # noqa: F401

GRID_FILE = REPO / "experiments" / "table1" / "grid.yaml"


def load_spec(grid_file: Path = GRID_FILE, scale: str = "cpu") -> dict:
    grid = yaml.safe_load(grid_file.read_text())[scale]
    if "study" not in grid:
        raise SystemExit(f"error: {grid_file}: '{scale}' has no 'study' entry")
    return grid["study"]


def make_study(spec: dict, out: Path) -> BaseStudy:
    """The study of a spec: the v1 rules (``Study``) or, for ``protocol: v2``, ``studies.v2.ProtocolStudy``."""
    protocol = spec.get("protocol", "v1")
    if protocol == "v2":
        from .studies.v2 import ProtocolStudy

        return ProtocolStudy(spec, out)
    if protocol != "v1":
        raise SystemExit(f"error: protocol {protocol!r}; expected v1 or v2")
    return Study(spec, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=GRID_FILE)
    parser.add_argument("--out", type=Path, help="study folder (default: the spec's out)")
    parser.add_argument("--jobs", type=int, help="jobs side by side (default: the spec's jobs)")
    parser.add_argument("--stage", help="run only this stage (pilot, main, long, ...)")
    parser.add_argument("--dry-run", action="store_true", help="list every job with its state and command")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rewrite selection and reports")
    args = parser.parse_args(argv)
    spec = load_spec(args.grid)
    out = (args.out or REPO / spec["out"]).resolve()
    study = make_study(spec, out)
    jobs = args.jobs or int(spec.get("jobs", 1))
    if jobs < 1:
        raise SystemExit(f"error: --jobs={jobs}; expected an integer >= 1")
    if args.report_only:
        write_selection(study, study.selection())
        return _report_failures(write_reports(study))
    failures = run_study(study, jobs, dry_run=args.dry_run, only_stage=args.stage)
    if study.paused:  # unfinished, not failed; the next driver writes the reports
        return SIGTERM_EXIT
    if not args.dry_run:
        failures += _report_failures(write_reports(study))
    return 1 if failures else 0


def _report_failures(failed: list[str]) -> int:
    for out in failed:
        print(f"error: the report in {out} was not written (see the error above)", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    raise SystemExit(main())
