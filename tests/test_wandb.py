"""W&B as its users expect (issue 32): the run id kept in the run folder and reused on resume, automatic tags,
a readable group per sweep, the offline sync command in the summary, and no logger.* key in a run folder's name.
Offline W&B runs, in-process on tiny-deberta."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from dcft_lab.config_schema import LoggerConfig, validate
from dcft_lab.loggers import WANDB_ID_FILE, auto_tags
from helpers import compose_config, run_inprocess

WANDB_RUN = ["logger=wandb", "eval_every_n_steps=1"]


@pytest.fixture
def wandb_inits(monkeypatch):
    """Every wandb.init call's keyword arguments (the real init still runs, offline)."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    calls = []
    real_init = wandb.init

    def init(*args, **kwargs):
        calls.append(kwargs)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    return calls


def _offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def _stored(offline_run: Path) -> bytes:
    """The bytes of W&B's own offline record of the run (what `wandb sync` uploads)."""
    return b"".join(p.read_bytes() for p in offline_run.glob("*.wandb"))


def test_run_id_is_kept_and_reused_when_the_run_resumes(glue_tsv_root, tmp_path, wandb_inits):
    root, run_dir = glue_tsv_root("sst2"), tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected failure"):  # fails at step 2, after the checkpoint of step 1
        run_inprocess(["task=sst2", *WANDB_RUN, "run.inject_failure=train_step:2"], run_dir, root)
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert len(run_id) == 8
    record = run_inprocess(["task=sst2", *WANDB_RUN], run_dir, root)  # the same run again: resumes
    assert record["status"] == "completed" and record["resumed_from"].endswith("last.ckpt")
    assert (run_dir / WANDB_ID_FILE).read_text().strip() == run_id
    assert [(c["id"], c["resume"]) for c in wandb_inits] == [(run_id, "allow"), (run_id, "allow")]
    runs = _offline_runs(run_dir)
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # W&B's run is that id, twice
    assert record["wandb"]["id"] == run_id and record["wandb"]["resumed"] is True
    assert record["wandb"]["sync"] == f"wandb sync {run_dir / 'wandb'}/offline-run-*"

    # run.overwrite=true trains from scratch: a new W&B run
    again = run_inprocess(["task=sst2", *WANDB_RUN, "run.overwrite=true"], run_dir, root)
    new_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert new_id != run_id and again["wandb"]["id"] == new_id and wandb_inits[-1]["id"] == new_id


def test_automatic_tags_and_group_reach_wandb(glue_tsv_root, tmp_path, wandb_inits):
    run_dir = tmp_path / "run"
    record = run_inprocess(["task=sst2", *WANDB_RUN, "method.kernel_size=4", "logger.tags=[mine]",
                            "sweep_name=glue-sst2_by-kernel_size_x"], run_dir, glue_tsv_root("sst2"))
    expected = ["dcft", "sst2", "tiny-deberta", "kernel_size=4", "stride=4", "rank=1", "mine"]
    assert wandb_inits[0]["tags"] == expected and record["wandb"]["tags"] == expected
    assert wandb_inits[0]["group"] == "glue-sst2_by-kernel_size_x"
    stored = _stored(_offline_runs(run_dir)[0])
    for text in ["kernel_size=4", "tiny-deberta", "mine", "glue-sst2_by-kernel_size_x"]:
        assert text.encode() in stored, text


@pytest.mark.parametrize("method, numbers", [
    ("dcft", ["kernel_size=8", "stride=8", "rank=1"]),
    ("lora", ["r=1"]),
    ("adalora", ["init_r=3", "target_r=2"]),
    ("lokr", ["r=1", "decompose_factor=8"]),
    ("none", []),
])
def test_auto_tags_name_the_method_and_its_numbers(method, numbers):
    rc = validate(compose_config([f"method={method}", "experiment=glue/rte", "logger.tags=[rte,extra]"]))
    assert auto_tags(rc) == [method, "rte", "deberta-v3-base", *numbers, "experiment=glue/rte", "extra"]


def test_summary_prints_the_offline_sync_command(capsys, tmp_path):
    from dcft_lab.run import _print_summary

    record = {"task": "sst2", "method_label": "DCFT", "backbone": "b", "seed": 6, "main_metric": "accuracy",
              "metrics": {"best": {"accuracy": 1.0}, "final": {"accuracy": 1.0}}, "best_step": 1,
              "params": {"adapter": 1, "trainable": 2}, "wall_time_s": 1.0,
              "wandb": {"id": "abcd1234", "mode": "offline", "sync": f"wandb sync {tmp_path}/wandb/offline-run-*"}}
    _print_summary(record, tmp_path)
    assert f"W&B offline (run id abcd1234): wandb sync {tmp_path}/wandb/offline-run-*" in capsys.readouterr().out


def test_logger_keys_are_never_part_of_the_run_folder_name(tmp_path):
    from dcft_lab.run import check_jobs

    cfg = compose_config([])
    excluded = set(compose_config([], hydra_config=True).hydra.job.config.override_dirname.exclude_keys)
    assert {"logger"} | {f"logger.{f.name}" for f in fields(LoggerConfig)} <= excluded
    assert set(cfg.logger.keys()) <= {f.name for f in fields(LoggerConfig)}
    base = ["-m", "backbone=tiny-deberta", f"hydra.sweep.dir={tmp_path}", "sweep_name=s"]
    plain = check_jobs(base)
    tagged = check_jobs([*base, "logger.tags=[kxr]", "logger.group=g", "logger.project=p", "logger.mode=offline"])
    assert plain == tagged == check_jobs([*base, "logger=csv"]) == [tmp_path / "backbone=tiny-deberta"]


@pytest.mark.parametrize("argv, label", [
    (["experiment=glue/mnli", "method.kernel_size=2,8", "method.rank=1,2"], "glue-mnli_by-kernel_size-rank"),
    (["task=rte,mrpc", "method=lora", "hydra/launcher=slurm"], "lora_by-task"),
    (["seed=1,2,3"], "by-seed"),
    (["optim.lr=[1,"], ""),
])
def test_sweep_name_is_readable(argv, label):
    from dcft_lab.run import _ensure_sweep_name, sweep_label

    assert sweep_label(argv) == label
    name = next(a for a in _ensure_sweep_name(["run.py", "-m", *argv]) if a.startswith("sweep_name="))
    assert name.startswith(f"sweep_name={label}_" if label else "sweep_name=20")


def test_results_record_names_the_wandb_run(glue_tsv_root, tmp_path, wandb_inits):
    run_dir = tmp_path / "run"
    run_inprocess(["task=sst2", *WANDB_RUN], run_dir, glue_tsv_root("sst2"))
    record = json.loads((run_dir / "results.json").read_text())
    assert record["wandb"]["mode"] == "offline" and record["wandb"]["project"] == "dcft_lab"
    assert record["wandb"]["dir"] == str(run_dir / "wandb")
