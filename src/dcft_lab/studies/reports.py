"""A study's reports: ``python -m dcft_lab.report`` on its stage folders, one per ``reports`` entry of the spec."""

from __future__ import annotations

import json
import sys

from .scheduler import BEST_INIT, REPO, BaseStudy


def completed_stage_runs(study: BaseStudy) -> dict[str, tuple[str, str]]:
    """Folder key (<stage>/<task>/<row>/seed<n>) -> (row, method_label) of every completed stage run."""
    runs = {}
    for path in sorted(study.out.glob("*/*/*/seed*/results.json")):
        key = str(path.parent.relative_to(study.out))
        rec = study.record(key)
        if rec and rec.get("status") == "completed":
            runs[key] = (path.parts[-3], rec.get("method_label"))
    return runs


def row_labels(runs: dict[str, tuple[str, str]], chosen: dict) -> dict:
    """Row key (aliases included) -> the method_label its completed runs recorded."""
    labels = {}
    for row, label in runs.values():
        labels.setdefault(row, label)
    if chosen.get(BEST_INIT) in labels:
        labels[BEST_INIT] = labels[chosen[BEST_INIT]]
    return labels


def expected_cells(study: BaseStudy, chosen: dict, folder: str, labels: dict) -> tuple[list[dict], list[str]]:
    """The spec's (method_label, task, seed) cells under a stage folder, for the report's --expect, and the rows
    none of whose runs has completed yet (their label is only known from a completed record)."""
    cells, unlabelled = [], []
    for job in study.all_jobs(chosen):
        if job.stage == "pilot" or not job.key.startswith(folder + "/"):
            continue
        _stage, task, row, seed = job.key.split("/")
        if row in labels:
            cells.append({"method_label": labels[row], "task": task, "seed": int(seed.removeprefix("seed"))})
        elif row not in unlabelled:
            unlabelled.append(row)
    return cells, unlabelled


def write_reports(study: BaseStudy) -> list[str]:
    """The spec's reports (tables, comparisons, figures) from the stage folders that exist so far. Each report
    expects exactly the spec's cells of its folder (``expected.json`` beside it) and shows the rows in the spec's
    order (``--order``; a method's colour comes from its label, the same in every report). Returns the out folders
    of reports that failed (the report printed why); the other reports are still written."""
    from ..report import label_pattern
    from ..report import main as report_main

    runs, chosen = completed_stage_runs(study), study.selection()
    labels = row_labels(runs, chosen)
    order = [labels[row] for row in study.rows if row in labels]
    stale = {job.key: why for job in study.all_jobs(chosen) if (why := study.stale(job, chosen))}
    failed = []
    for report in study.spec.get("reports", []):
        folder = study.out / report["folder"]
        if not any(folder.rglob("results.json")):
            continue
        out = study.out / report.get("out", ".")
        here = sorted(k for k in stale if k.startswith(report["folder"] + "/"))
        if here:  # a run made at a point the selection no longer picks is not a result of the protocol
            print(f"report {report['folder']}: {len(here)} stale run(s), e.g. {here[0]} ({stale[here[0]]}); "
                  "expected every run at its selected point (delete the stale folders and rerun the driver)",
                  file=sys.stderr)
            failed.append(str(out))
            continue
        out.mkdir(parents=True, exist_ok=True)
        cells, unlabelled = expected_cells(study, chosen, report["folder"], labels)
        (out / "expected.json").write_text(json.dumps(cells, indent=1) + "\n")
        shown = label_pattern("labels", report["labels"]) if "labels" in report else None
        present = {label for key, (_row, label) in runs.items() if key.startswith(report["folder"] + "/")
                   and (shown is None or shown.search(label))}
        args = [str(folder), "--out", str(out), "--table", "table1", "--metric", "final",
                "--expect", str(out / "expected.json")]
        for label in order:
            args += ["--order", label]
        for a, b in report.get("compare", []):
            if labels.get(a) in present and labels.get(b) in present:
                args += ["--compare", labels[a], labels[b]]
        for key in ("labels", "tasks", "curves_labels", "curves_tasks", "curves_name"):
            if key in report:
                args += ["--" + key.replace("_", "-"), str(report[key])]
        for note in report.get("notes", []):
            args += ["--note", str(note)]
        for mark in report.get("curves_marks", []):     # "STEP=TEXT": a vertical line in the learning curves
            args += ["--curves-mark", str(mark)]
        if shown is None and chosen.get(BEST_INIT) in labels and labels[chosen[BEST_INIT]] in present:
            args += ["--note", f"best initialisation by the pilot among {', '.join(study.spec['best_init_among'])} "
                               f"(the init run in every stage): {labels[chosen[BEST_INIT]]}"]
        if unlabelled and shown is None:
            args += ["--note", f"not in the table yet (no completed run): spec rows {', '.join(unlabelled)}"]
        if report_main(args) != 0:
            failed.append(str(out))
    earlier = study.spec.get("compare_with")  # {root, name, gaps}: an earlier study of the same cells
    if earlier:
        from .compare import comparison_markdown

        name = study.spec.get("name", study.out.name)
        text = comparison_markdown(REPO / earlier["root"], study.out, earlier["name"], name,
                                   [tuple(g) for g in earlier.get("gaps", [])])
        (study.out / f"{earlier['name']}_vs_{name}.md").write_text(text)
    return failed
