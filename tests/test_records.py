"""The run record: atomic writes, failures recorded with their step, completed runs skipped unless overwritten."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dcft_lab import records
from dcft_lab.records import RunRecord, new_record, read_results, write_json_atomic
from helpers import logged_values, one_line_error, read_csv_log, run_cli, run_inprocess

PREVIOUS = {"status": "completed", "metrics": {"best": {"accuracy": 71.5}}}


def _previous_file(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, PREVIOUS)
    return path, path.read_bytes()


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "results.json")


# ---- write_json_atomic -----------------------------------------------------------------------------
def test_write_then_read_round_trip(tmp_path):
    path, _ = _previous_file(tmp_path)
    assert json.loads(path.read_text()) == PREVIOUS == read_results(tmp_path)
    assert _leftovers(tmp_path) == []


class _BrokenStr:
    """json falls back to str() for unknown objects (records._jsonable); this one fails there, mid-dump."""

    def __str__(self):
        raise RuntimeError("cannot serialize")


def test_failure_mid_dump_keeps_previous_file(tmp_path):
    path, before = _previous_file(tmp_path)
    # "head" is written out before the bad value is reached: the temp file really is partial when it fails
    payload = {"head": "x" * 100_000, "bad": _BrokenStr()}
    with pytest.raises(RuntimeError, match="cannot serialize"):
        write_json_atomic(path, payload)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_circular_payload_keeps_previous_file(tmp_path):
    path, before = _previous_file(tmp_path)
    loop: dict = {"status": "running"}
    loop["self"] = loop
    with pytest.raises(ValueError, match="Circular"):
        write_json_atomic(path, loop)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_interrupted_before_rename_keeps_previous_file(tmp_path, monkeypatch):
    path, before = _previous_file(tmp_path)
    written = []

    def crash_instead_of_rename(src, dst):
        written.append(open(src).read())  # the complete new text was in the temp file
        raise KeyboardInterrupt

    monkeypatch.setattr(records.os, "replace", crash_instead_of_rename)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"status": "failed"})
    assert json.loads(written[0]) == {"status": "failed"}
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_read_results_ignores_missing_and_partial_files(tmp_path):
    assert read_results(tmp_path) is None
    (tmp_path / "results.json").write_text('{"status": "compl')
    assert read_results(tmp_path) is None


# ---- failures ----------------------------------------------------------------------------------------
@pytest.mark.slow  # a run in a subprocess
def test_cli_injected_failure_is_recorded_with_its_step(glue_tsv_root, tmp_path):
    root = glue_tsv_root("sst2")
    run_dir = tmp_path / "run"
    proc = run_cli(["task=sst2", "run.inject_failure=train_step:2"], run_dir, root)
    assert proc.returncode == 1  # a run failure (not bad input, which exits 2)
    line = one_line_error(proc.stderr)
    assert "injected failure at step 2" in line and str(run_dir / "results.json") in line
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed"
    assert record["failure"]["step"] == 2
    assert record["failure"]["reason"] == "injected failure at step 2 (run.inject_failure)"
    assert record["failure"]["type"] == "RuntimeError"
    assert record["finished_at"] is not None and record["task"] == "sst2"
    # the two steps that did run were logged
    assert len(logged_values(read_csv_log(run_dir), "train/task_loss")) == 2


# ---- RunRecord: the one save() of a run attempt ---------------------------------------------------------
_FIELDS = dict(task="rte", method="lora", method_label="LoRA r=1", backbone="tiny-deberta", seed=6,
               main_metric="accuracy", config={"seed": 6}, experiment=None, sweep_group=None)


def test_run_record_saves_its_fields_in_order_and_round_trips(tmp_path):
    record = RunRecord.begin(tmp_path, None, False, 0, **_FIELDS)
    record["params"] = {"adapter": 1}
    record.save()
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == record == read_results(tmp_path) and on_disk["params"] == {"adapter": 1}
    # results.json's fields and their order (old records are read by report/, saved_run, studies/): written out
    # here, so a change to new_record shows up as a change to this list
    assert list(on_disk) == list(new_record(**_FIELDS, run_dir=str(tmp_path))) == [
        "schema_version", "status", "failure", "task", "method", "method_label", "backbone", "seed", "experiment",
        "sweep_group", "main_metric", "params", "metrics", "best_step", "evaluations", "wall_time_s",
        "wall_time_total_s", "data", "config", "env", "run_dir", "started_at", "finished_at", "attempts"]
    assert on_disk["run_dir"] == str(tmp_path) and on_disk["wall_time_total_s"] == on_disk["wall_time_s"] >= 0


def test_run_record_of_a_rank_other_than_zero_writes_nothing(tmp_path):
    record = RunRecord.begin(tmp_path, None, False, 1, **_FIELDS)
    record.save()
    assert not (tmp_path / "results.json").exists() and record["wall_time_s"] is not None  # stamped all the same
    record.rank = 0  # e.g. the Trainer says this process is global rank 0
    record.save()
    assert read_results(tmp_path) == record


def test_run_record_carries_the_earlier_attempts(tmp_path):
    killed = {"status": "running", "attempts": 1, "wall_time_s": 5.0, "wall_time_total_s": 5.0}
    record = RunRecord.begin(tmp_path, killed, False, 0, **_FIELDS)
    record.save()
    assert record["attempts"] == 2 and record["previous_failures"][0]["type"] == "Killed"
    assert record["wall_time_total_s"] == pytest.approx(5.0 + record["wall_time_s"], abs=2e-3)
    failed = {**record, "status": "failed", "failure": {"type": "ValueError", "reason": "x", "step": 3},
              "env": {"git_commit": "abc123", "packages": {"torch": "2.13.0"}}}
    third = RunRecord.begin(tmp_path, failed, False, 0, **_FIELDS)
    third.save()
    assert third["attempts"] == 3 and [f["type"] for f in third["previous_failures"]] == ["Killed", "ValueError"]
    assert third["wall_time_total_s"] == pytest.approx(record["wall_time_total_s"] + third["wall_time_s"], abs=2e-3)
    # which code each earlier attempt ran, so a resume under another commit shows
    assert [a["git_commit"] for a in third["previous_attempts"]] == [None, "abc123"]
    assert third["previous_attempts"][1] == {"started_at": record["started_at"], "git_commit": "abc123",
                                             "packages": {"torch": "2.13.0"}}
    # an overwritten completed run (fresh start) is a new run: its time starts from zero
    fresh = RunRecord.begin(tmp_path, {**third, "status": "completed"}, True, 0, **_FIELDS)
    fresh.save()
    assert fresh["wall_time_total_s"] == fresh["wall_time_s"] and fresh["attempts"] == 4


def test_git_commit_flags_changed_or_new_code_but_not_results(tmp_path):
    import subprocess

    from dcft_lab.records import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "results" / "r.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init")
    head = git_commit(tmp_path / "src")
    assert head and not head.endswith("+dirty")
    (tmp_path / "results" / "r.json").write_text('{"more": 1}\n')  # results written into the checkout: still clean
    (tmp_path / "results" / "new.json").write_text("{}\n")
    assert git_commit(tmp_path / "src") == head
    (tmp_path / "src" / "b.py").write_text("y = 2\n")  # a new, not yet added source file: dirty
    assert git_commit(tmp_path / "src") == head + "+dirty"


def test_malformed_inject_spec_is_rejected(glue_tsv_root, tmp_path):
    with pytest.raises(ValueError, match="run.inject_failure='train_step:two'"):
        run_inprocess(["task=sst2", "run.inject_failure=train_step:two"], tmp_path / "run", glue_tsv_root("sst2"))


# ---- skip / overwrite -------------------------------------------------------------------------------
def test_completed_run_is_skipped_unless_overwritten(glue_tsv_root, tmp_path):
    root = glue_tsv_root("sst2")
    run_dir = tmp_path / "run"
    first = run_inprocess(["task=sst2"], run_dir, root)
    assert first["status"] == "completed" and first["attempts"] == 1
    assert first["wall_time_total_s"] == first["wall_time_s"] > 0
    before = (run_dir / "results.json").read_bytes()
    mtime = os.stat(run_dir / "results.json").st_mtime_ns

    again = run_inprocess(["task=sst2"], run_dir, root)
    assert again["skipped"] is True and again["started_at"] == first["started_at"]
    assert (run_dir / "results.json").read_bytes() == before
    assert os.stat(run_dir / "results.json").st_mtime_ns == mtime

    rerun = run_inprocess(["task=sst2", "run.overwrite=true"], run_dir, root)
    assert "skipped" not in rerun and rerun["status"] == "completed" and rerun["attempts"] == 2
    # a real rerun from scratch, not a "resume" from the finished run's last checkpoint
    assert "resumed_from" not in rerun
    assert rerun["wall_time_total_s"] == rerun["wall_time_s"]  # a new run: the overwritten one's time not added
    assert len(logged_values(read_csv_log(run_dir), "train/task_loss")) == 3
    assert rerun["evaluations"] == first["evaluations"]  # same seed, same result
    assert json.loads((run_dir / "results.json").read_text())["attempts"] == 2


def test_an_overwrite_with_another_method_leaves_no_files_of_the_old_one(glue_tsv_root, tmp_path):
    # the old PEFT adapter files would make the new head-only run look like a mismatched PEFT run to evaluate
    from dcft_lab.saved_run import open_run

    root, run_dir = glue_tsv_root("sst2"), tmp_path / "run"
    run_inprocess(["task=sst2", "method=lora"], run_dir, root)
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    run_inprocess(["task=sst2", "method=none", "run.overwrite=true"], run_dir, root)
    assert sorted(p.name for p in (run_dir / "adapter").iterdir()) == ["head.safetensors"]
    assert open_run(run_dir).adapter_kind == "head"


def test_summary_names_the_eval_set_and_every_final_metric(capsys, tmp_path):
    from dcft_lab.run import _print_summary

    record = {"task": "mrpc", "method_label": "LoRA r=1", "backbone": "minilm", "seed": 6, "main_metric": "accuracy",
              "metrics": {"best": {"accuracy": 80.0, "f1": 86.0}, "final": {"accuracy": 79.5, "f1": 85.25}},
              "best_step": 60, "params": {"adapter": 41472, "trainable": 190082}, "wall_time_s": 12.0,
              "data": {"eval_source": "dev"}}
    _print_summary(record, tmp_path)
    out = capsys.readouterr().out
    assert "  dev accuracy: best 80.00 (step 60), final 79.50 (final f1 85.25)" in out
    record["data"]["eval_source"] = "train_holdout"
    _print_summary(record, tmp_path)
    out = capsys.readouterr().out
    assert "  held-out train accuracy: best 80.00" in out and "wall 12s\n" in out  # a record from before the total
    record.update(wall_time_total_s=31.0, attempts=3)  # a resumed run: the total over its attempts
    _print_summary(record, tmp_path)
    assert "wall 31s over 3 attempts\n" in capsys.readouterr().out


def test_written_files_keep_the_umask_mode(tmp_path):
    """mkstemp and safetensors create 0600 files; a record or adapter on a shared cluster must stay readable."""
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    from dcft_lab.records import make_shareable, write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "results.json", {"a": 1})
        (tmp_path / "adapter").mkdir()
        save_file({"w": torch.zeros(2)}, str(tmp_path / "adapter" / "head.safetensors"))
        make_shareable(tmp_path / "adapter")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "adapter" / "head.safetensors").stat().st_mode) == 0o644


# ---- the logging side: W&B mode, the console line of an evaluation -------------------------------------
def test_wandb_mode_auto_follows_the_environment(monkeypatch, tmp_path):
    from dcft_lab.loggers import wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode("auto") == "offline"
    assert wandb_mode("disabled") == "disabled" and wandb_mode("online") == "online"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"


def test_evaluation_line_names_the_step_metric_and_best():
    from dcft_lab.loggers import evaluation_line

    record = {"main_metric": "accuracy", "metrics": {"best": {"accuracy": 70.0, "f1": 1.0}}, "best_step": 50,
              "data": {"eval_source": "dev"}}
    line = evaluation_line(record, {"step": 100, "epoch": 1, "metrics": {"accuracy": 68.5, "f1": 60.25}})
    assert line == "step 100: dev accuracy 68.50 (best 70.00 at step 50); f1 60.25"
    record["data"]["eval_source"] = "train_holdout"
    assert evaluation_line(record, {"step": 1, "metrics": {"accuracy": 1.0}}).startswith("step 1: held-out train ")


def test_environment_names_the_code_that_ran():
    import dcft_lab
    from dcft_lab.records import environment, git_commit

    env = environment("cpu")
    assert env["source"] == str(Path(dcft_lab.__file__).resolve().parent)  # a pinned worktree shows as itself
    assert env["git_commit"] == git_commit() and env["device"] == "cpu" and "torch" in env["packages"]
