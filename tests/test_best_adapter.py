"""Evaluate / export / checkpoints (issue 32): the best evaluation's adapter kept beside the final one
(``<run>/adapter-best/``) and selectable with ``adapter=best``; early stopping as an option (off by default);
``--help`` for every entry point without heavy imports; evaluate / export as quiet as ``run``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, one_line_error, restored_globals, run_inprocess

# STS-B on 6-row TSVs, lr 5e-3, one evaluation per step: the dev Pearson falls after step 1, so the best
# evaluation (step 1) is not the final one (step 4) and the two adapters differ
BEST_NOT_FINAL = ["task=stsb", "eval_every_n_steps=1", "trainer.max_steps=4", "optim.lr=5e-3"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _main(module, *args: str) -> dict:
    with restored_globals():
        return module.main(list(args))


@pytest.fixture(scope="module")
def stsb_run(tmp_path_factory) -> dict:
    from conftest import write_glue_tsv_root

    base = tmp_path_factory.mktemp("best")
    root = write_glue_tsv_root(base, "stsb")
    record = run_inprocess(BEST_NOT_FINAL, base / "run", root)
    return {"root": root, "run": base / "run", "record": record}


def test_best_adapter_is_kept_beside_the_final_one(stsb_run):
    run, record = stsb_run["run"], stsb_run["record"]
    assert record["best_step"] == 1 and record["global_steps"] == 4  # the premise: best != final
    assert record["best_adapter_dir"] == str(run / "adapter-best") and record["best_adapter_step"] == 1
    best, final = run / "adapter-best", run / "adapter"
    assert sorted(p.name for p in best.iterdir()) == sorted(p.name for p in final.iterdir())
    assert _sha(best / "adapter_model.safetensors") != _sha(final / "adapter_model.safetensors")
    assert not list(run.glob(".adapter-best.tmp*"))


def test_evaluate_adapter_best_reproduces_the_recorded_best(stsb_run, tmp_path):
    from dcft_lab import evaluate

    run, record = stsb_run["run"], stsb_run["record"]
    best = _main(evaluate, f"run={run}", "adapter=best", f"out={tmp_path}")
    assert best["adapter_choice"] == "best" and best["adapter_step"] == 1
    assert best["metrics"] == record["metrics"]["best"] and best["equals_recorded_best"] is True
    assert best["adapter"]["sha256"] == _sha(run / "adapter-best" / "adapter_model.safetensors")
    assert (tmp_path / "eval-validation-best.json").is_file()
    final = _main(evaluate, f"run={run}", f"out={tmp_path}")  # the default: the final adapter, as before
    assert final["adapter_choice"] == "final" and final["equals_recorded_final"] is True
    assert final["metrics"] != best["metrics"]


def test_export_adapter_best(stsb_run, tmp_path):
    from dcft_lab import export

    run = stsb_run["run"]
    manifest = _main(export, f"run={run}", f"out={tmp_path / 'best'}", "adapter=best")
    assert manifest["adapter_choice"] == "best" and manifest["adapter_step"] == 1
    assert _sha(tmp_path / "best" / "adapter_model.safetensors") == \
        _sha(run / "adapter-best" / "adapter_model.safetensors")
    assert "| adapter | best (step 1; `adapter-best/` of the run) |" in (tmp_path / "best" / "README.md").read_text()


def test_adapter_option_errors_are_one_line(stsb_run, glue_tsv_root, tmp_path, capsys):
    from dcft_lab import evaluate, export

    for module, extra in ((evaluate, []), (export, [f"out={tmp_path / 'x'}"])):
        with pytest.raises(SystemExit) as exc:
            _main(module, f"run={stsb_run['run']}", "adapter=bestest", *extra)
        assert exc.value.code == 2
        assert "adapter='bestest'; expected one of final, best" in one_line_error(capsys.readouterr().err)
    no_best = tmp_path / "no_best"
    run_inprocess(["task=sst2", "run.save_best_adapter=false"], no_best, glue_tsv_root("sst2"))
    assert not (no_best / "adapter-best").exists() and (no_best / "adapter").is_dir()
    with pytest.raises(SystemExit):
        _main(evaluate, f"run={no_best}", "adapter=best")
    line = one_line_error(capsys.readouterr().err)
    assert "has no adapter-best/" in line and "expected adapter=final" in line


def test_overwrite_drops_the_old_best_adapter(glue_tsv_root, tmp_path):
    """A run trained again from scratch must not keep a best adapter of the earlier training."""
    root, run = glue_tsv_root("stsb"), tmp_path / "run"
    run_inprocess(BEST_NOT_FINAL, run, root)
    stale = run / "adapter-best" / "stale.txt"
    stale.write_text("from the earlier training")
    record = run_inprocess([*BEST_NOT_FINAL, "run.overwrite=true"], run, root)
    assert record["best_adapter_step"] == 1 and not stale.exists()


# ---- early stopping --------------------------------------------------------------------------------------------
def test_early_stopping_stops_when_the_metric_stops_improving(glue_tsv_root, tmp_path):
    root = glue_tsv_root("stsb")
    # min_delta 1000 points: no evaluation after the first counts as an improvement; patience 1 -> stop at step 2
    stopped = run_inprocess(["task=stsb", "eval_every_n_steps=1", "trainer.max_steps=6", "early_stopping.enabled=true",
                             "early_stopping.patience=1", "early_stopping.min_delta=1000"], tmp_path / "es", root)
    assert stopped["status"] == "completed" and stopped["global_steps"] == 2
    assert [e["step"] for e in stopped["evaluations"]] == [1, 2]
    assert stopped["early_stopping"] == {"monitor": "val/pearson", "mode": "max", "patience": 1, "min_delta": 1000.0,
                                         "stopped": True, "step": 2}
    # off by default: the same run trains its 6 steps
    full = run_inprocess(["task=stsb", "eval_every_n_steps=1", "trainer.max_steps=6", "early_stopping.patience=1",
                          "early_stopping.min_delta=1000"], tmp_path / "full", root)
    assert full["global_steps"] == 6 and "early_stopping" not in full


def test_early_stopping_metric_must_be_the_tasks(glue_tsv_root, tmp_path):
    with pytest.raises(ValueError, match=r"early_stopping.metric='accuracy'; expected one of the task's dev metrics "
                                         r"pearson, spearman"):
        run_inprocess(["task=stsb", "early_stopping.enabled=true", "early_stopping.metric=accuracy"], tmp_path / "r",
                      glue_tsv_root("stsb"))


# ---- --help for every entry point, no heavy import -------------------------------------------------------------
ENTRY_POINTS = ["run", "evaluate", "export", "report", "study", "params", "cluster", "dry_run"]


@pytest.mark.slow
@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_help_is_instant_and_imports_nothing_heavy(command):
    start = time.time()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", f"dcft_lab.{command}", "--help"],
                          capture_output=True, text=True, timeout=120, cwd=str(REPO))
    seconds = time.time() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower() or "powered by hydra" in proc.stdout.lower() or \
        "python -m dcft_lab.run" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    heavy = imported & {"torch", "pytorch_lightning", "transformers", "peft", "datasets", "wandb"}
    assert not heavy, f"--help imported {sorted(heavy)}"
    print(f"{command} --help: {seconds:.2f}s")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_argument_errors_answer_before_heavy_imports(command):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", f"dcft_lab.{command}", "run=x", "nonsense"],
                          capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 2
    assert "argument 'nonsense' is not key=value" in proc.stderr
    assert not re.search(r"\|\s+torch$", proc.stderr, re.MULTILINE)


# ---- quiet output ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_and_export_are_quiet_unless_verbose(glue_tsv_root, minilm_path, tmp_path):
    """A trained MiniLM run evaluated / exported: no transformers LOAD REPORT ("classifier MISSING ... Consider
    training"), no progress bars, no deprecation warnings; run.verbose=true brings them back."""
    run = tmp_path / "run"
    run_inprocess(["task=sst2", "backbone=minilm", "trainer.max_steps=1"], run, glue_tsv_root("sst2"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("PYTHONWARNINGS", None)

    def call(*args):
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600,
                              cwd=str(REPO), env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    quiet = call("dcft_lab.evaluate", f"run={run}", f"out={tmp_path / 'q'}")
    verbose = call("dcft_lab.evaluate", f"run={run}", f"out={tmp_path / 'v'}", "run.verbose=true")
    assert "LOAD REPORT" in verbose
    for noise in ("LOAD REPORT", "MISSING", "Consider training", "is deprecated", "Loading weights"):
        assert noise not in quiet, quiet
    assert len(quiet.strip().splitlines()) <= 4, quiet  # the summary lines only
    exported = call("dcft_lab.export", f"run={run}", f"out={tmp_path / 'e'}", "merge=true")
    for noise in ("LOAD REPORT", "MISSING", "is deprecated"):
        assert noise not in exported, exported
    assert json.loads((tmp_path / "e" / "dcft_lab_export.json").read_text())["adapter_choice"] == "final"
