"""Rescore committed run records whose Matthews correlation came from a one-class prediction.

    python scripts/rescore_mcc.py RESULTS_DIR [--dry-run]

Before the fix in ``dcft_lab.data.metrics`` (GLUE's definition: MCC = 0 when every prediction is one class),
torchmetrics scored such an evaluation with a small non-zero value that depends only on the eval set's class counts
(CoLA dev, all "acceptable": 2.5641 on the 0-100 scale). MCC is a function of the confusion matrix, and a one-class
prediction's matrix follows from the labels alone, so those evaluations can be rescored exactly without rerunning:

1. the eval set's labels come from the run's own data module (its config: dev set, or the held-out training slice);
2. the old metric's value for "all class 0" and "all class 1" is computed on them; an evaluation is rescored only
   if it equals one of the two, and only after checking that no other confusion matrix with those class counts
   comes within 1e-4 of it (so the value identifies the one-class prediction);
3. those evaluations become 0.0 in ``results.json`` (evaluations, metrics.final, metrics.best / best_step by the
   trainer's rule) and in ``csv/metrics.csv``; the record gets a ``rescored`` entry saying what changed, from what,
   and by which commit. A second pass finds nothing to change.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dcft_lab.module import best_evaluation
from dcft_lab.records import git_commit, write_json_atomic

METRIC = "matthews"
TOLERANCE = 1e-9  # |logged - one-class value| on the 0-100 scale: the same float computation, so equal
SEPARATION = 1e-4  # the nearest other confusion matrix must be this far away (0-100 scale): float32 MCC errs by
#                    under 1e-5 there, so no other matrix's logged value can equal a one-class value


def old_one_class_values(labels: np.ndarray) -> dict[int, float]:
    """class -> torchmetrics' (pre-fix, one process) MCC x 100 of predicting that class for every example; a class
    whose value is already 0 (balanced labels) needs no rescoring and is left out."""
    import torch
    from torchmetrics.classification import BinaryMatthewsCorrCoef

    target = torch.as_tensor(labels, dtype=torch.long)
    values = {c: float(BinaryMatthewsCorrCoef()(torch.full_like(target, c), target)) * 100.0 for c in (0, 1)}
    return {c: v for c, v in values.items() if v != 0.0}


def nearest_other_mcc(labels: np.ndarray, value: float) -> float:
    """Distance from ``value`` to the MCC x 100 of every confusion matrix with these labels' class counts whose
    predictions use both classes (the only matrices with a well-defined, non-degenerate MCC)."""
    n_pos = int((labels == 1).sum())
    n_neg = len(labels) - n_pos
    tp, tn = np.meshgrid(np.arange(n_pos + 1, dtype=np.float64), np.arange(n_neg + 1, dtype=np.float64))
    fn, fp = n_pos - tp, n_neg - tn
    denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    ok = denom > 0
    mcc = (tp * tn - fp * fn)[ok] / np.sqrt(denom[ok]) * 100.0
    return float(np.min(np.abs(mcc - value)))


def rescore_record(record: dict, one_class: dict[int, float]) -> list[int]:
    """Set every one-class evaluation's MCC to 0 in ``record`` (evaluations, final, best by the trainer's rule);
    return the steps changed."""
    steps = []
    for evaluation in record.get("evaluations") or []:
        value = evaluation.get("metrics", {}).get(METRIC)
        if value is not None and value != 0.0 and any(abs(value - v) <= TOLERANCE for v in one_class.values()):
            evaluation["metrics"][METRIC] = 0.0
            steps.append(evaluation["step"])
    if steps:
        best = best_evaluation(record["evaluations"], METRIC)  # the trainer's rule
        record["metrics"] = {"best": dict(best["metrics"]), "final": dict(record["evaluations"][-1]["metrics"])}
        record["best_step"] = best["step"]
    return steps


def rescore_csv(path: Path, one_class: dict[int, float]) -> int:
    """The same change in Lightning's csv/metrics.csv (values logged as float32); returns the rows changed."""
    column = f"val/{METRIC}"
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    if column not in (fields or []):
        return 0
    targets = {np.float32(v) for v in one_class.values()}
    changed = 0
    for row in rows:
        if row[column] and np.float32(float(row[column])) in targets:
            row[column], changed = "0.0", changed + 1
    if changed:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)  # "\r\n", as Lightning's CSV logger writes it
            writer.writeheader()
            writer.writerows(rows)
    return changed


def eval_labels(record: dict) -> np.ndarray:
    """The labels of the run's eval set, built by the run's own data module from its recorded config (the caller
    checks their count against the record's)."""
    from omegaconf import OmegaConf

    from dcft_lab.backbones import get_backbone, load_tokenizer
    from dcft_lab.build import run_datamodule
    from dcft_lab.config_schema import validate
    from dcft_lab.data.tasks import get_task

    rc = validate(OmegaConf.create({k: v for k, v in record["config"].items() if k != "hydra"}))
    spec = get_task(rc.task.name)
    dm = run_datamodule(rc, spec, load_tokenizer(get_backbone(rc.backbone.name), rc.backbone.path), spec.family)
    dm.setup_eval()
    if len(dm.eval_names) != 1:
        raise ValueError(f"task {spec.name} has {len(dm.eval_names)} eval sets; expected one (MCC tasks: CoLA)")
    return np.asarray(dm.dataset(dm.eval_names[0])["labels"])


def _refusal(record: dict) -> str | None:
    """Why a record's old one-class value cannot be recomputed here (None when it can)."""
    import torchmetrics

    if record.get("status") != "completed":
        return (f"status '{record.get('status')}': its checkpoint still holds the old evaluations; finish the run "
                "first (a resume would write them back)")
    if (record.get("world_size") or 1) != 1:
        return f"world_size {record['world_size']}: the old value depended on the process count; expected 1"
    logged = ((record.get("env") or {}).get("packages") or {}).get("torchmetrics")
    if logged and logged != torchmetrics.__version__:
        return f"made with torchmetrics {logged}; installed is {torchmetrics.__version__}; expected the same version"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        print(f"error: {args.results_dir} is not a folder; expected a results folder with run records",
              file=sys.stderr)
        return 2
    commit = git_commit(Path(__file__).resolve().parent)  # once, before this pass dirties the checkout
    labels_cache: dict[str, np.ndarray] = {}
    total, refused = 0, 0
    for path in sorted(args.results_dir.rglob("results.json")):
        record = json.loads(path.read_text())
        if not any(METRIC in e.get("metrics", {}) for e in record.get("evaluations") or []):
            continue
        if (why := _refusal(record)) is not None:
            print(f"skipped {path}: {why}", file=sys.stderr)
            refused += 1
            continue
        data = record.get("data") or {}
        key = json.dumps({k: v for k, v in data.items() if k not in ("cache", "cache_paths", "tokenizer")},
                         sort_keys=True, default=str)
        if key not in labels_cache:
            try:
                labels_cache[key] = eval_labels(record)
            except (OSError, ValueError, KeyError) as err:
                print(f"error: {path}: could not rebuild its eval set ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); expected the run's data to be readable",
                      file=sys.stderr)
                return 1
        labels = labels_cache[key]
        expected = (data.get("counts") or {}).get((data.get("eval_names") or ["validation"])[0])
        if expected is not None and len(labels) != expected:
            print(f"error: {path}: the rebuilt eval set has {len(labels)} examples, the record {expected}; expected "
                  "the same eval set", file=sys.stderr)
            return 1
        if len(set(labels.tolist())) < 2:
            print(f"error: {path}: the eval set's labels are all one class ({len(labels)} examples); expected two "
                  "classes (every MCC on it is degenerate)", file=sys.stderr)
            return 1
        one_class = old_one_class_values(labels)
        for c, v in one_class.items():
            gap = nearest_other_mcc(labels, v)
            if gap < SEPARATION:
                print(f"error: {path}: the one-class value {v:.6f} (class {c}) is within {gap:.2e} of another "
                      f"confusion matrix's MCC; expected a gap of at least {SEPARATION}", file=sys.stderr)
                return 1
        steps = rescore_record(record, one_class)
        metrics_csv = path.parent / "csv" / "metrics.csv"
        if not args.dry_run and metrics_csv.is_file():
            rescore_csv(metrics_csv, one_class)  # by value, so also finishes a CSV an interrupted pass left
        if not steps:
            continue
        total += len(steps)
        print(f"{path.parent}: {len(steps)} evaluation(s) -> 0.0 at steps {steps}; final "
              f"{record['metrics']['final'][METRIC]:.2f}, best {record['metrics']['best'][METRIC]:.2f}")
        if args.dry_run:
            continue
        record.setdefault("rescored", []).append({
            "metric": METRIC, "steps": steps, "from": {str(c): v for c, v in one_class.items()}, "to": 0.0,
            "reason": "one-class prediction: GLUE's MCC is 0 there; torchmetrics gave a small non-zero value",
            "by": "scripts/rescore_mcc.py", "commit": commit,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        write_json_atomic(path, record)
    print(f"{total} evaluation(s) {'would be ' if args.dry_run else ''}rescored"
          + (f"; {refused} record(s) skipped (see above)" if refused else ""))
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
