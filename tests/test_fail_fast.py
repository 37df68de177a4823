"""Fail fast, fail loud (issue 32): every job is checked before anything heavy is imported, launched or written;
an unknown experiment, key or option is one line with close names; values out of range are rejected naming the key;
a dry run checks every job (config, data root, adapter shapes on a meta-device model) and exits non-zero on any
error; a multirun says how many of its jobs failed and exits non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcft_lab.config_schema import RANGES, ConfigError, validate
from dcft_lab.run import check_jobs, describe_hydra_error
from helpers import REPO, compose_config, one_line_error


# ---- the light check: ranges, names, close names ---------------------------------------------------------------
@pytest.mark.parametrize("overrides, fragments", [
    (["optim.lr=0"], ["optim.lr=0.0", "> 0"]),
    (["optim.lr=-1e-3"], ["optim.lr=-0.001", "> 0"]),
    (["optim.warmup_ratio=1.5"], ["optim.warmup_ratio=1.5", "[0, 1]"]),
    (["optim.weight_decay=-0.1"], ["optim.weight_decay=-0.1"]),
    (["optim.betas=[0.9,1.5]"], ["optim.betas", "two numbers in [0, 1)"]),
    (["method.alpha=-16"], ["method.alpha=-16", "> 0"]),
    (["method.kernel_size=abc"], ["method.kernel_size='abc'", "integer >= 1"]),
    (["method.dropout=1.0"], ["method.dropout=1.0", "[0, 1)"]),
    (["logger.mode=onlin"], ["logger.mode='onlin'", "auto, online, offline, disabled"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "-1 (no limit)"]),
    (["trainer.max_steps=0"], ["trainer.max_steps=0"]),
    (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0", ">= 1"]),
    (["task.train_batch_size=0"], ["task.train_batch_size=0", ">= 1"]),
    (["task.eval_batch_size=0"], ["task.eval_batch_size=0"]),
    (["task.max_length=-1"], ["task.max_length=-1"]),
    (["data.train_limit=-5"], ["data.train_limit=-5"]),
    (["data.eval_limit=0"], ["data.eval_limit=0"]),
    (["data.source=hubb"], ["data.source='hubb'", "auto, local, hub"]),
    (["backbone.weights=randm"], ["backbone.weights='randm'", "pretrained, random"]),
    (["run.threads=-1"], ["run.threads=-1"]),
    (["early_stopping.patience=0"], ["early_stopping.patience=0"]),
    (["method=adalora", "method.init_r=2", "method.target_r=5"], ["method.target_r=5", "method.init_r=2",
                                                                  "target_r <= init_r"]),
    (["method=lora", "method.r=0"], ["method.r=0", ">= 1"]),
    (["method=lokr", "method.decompose_factor=0"], ["method.decompose_factor=0"]),
    (["+method.kernel_sise=2"], ["method.kernel_sise", "did you mean kernel_size?"]),
    (["+trainer.max_stepz=3"], ["max_stepz", "did you mean max_steps"]),
])
def test_out_of_range_values_name_the_key(overrides, fragments):
    cfg = compose_config(["backbone=tiny-deberta", *overrides])
    for light in (True, False):  # the same message before and after the heavy imports
        with pytest.raises(ConfigError) as info:
            validate(cfg, light=light)
        message = str(info.value)
        assert "\n" not in message
        for fragment in fragments:
            assert fragment in message, message


def test_every_range_rule_accepts_the_defaults_and_every_experiment():
    """The rules must not reject a shipped config: the defaults and every experiment preset, with every method."""
    experiments = sorted(p.relative_to(REPO / "conf" / "experiment").with_suffix("").as_posix()
                         for p in (REPO / "conf" / "experiment").rglob("*.yaml"))
    assert "glue/mnli" in experiments
    for experiment in experiments:
        validate(compose_config([f"experiment={experiment}"]), light=True)
    for method in ("dcft", "lora", "adalora", "lokr", "none"):
        validate(compose_config([f"method={method}"]))
    assert {"optim.lr", "optim.warmup_ratio", "method.alpha", "logger.mode", "trainer.max_epochs",
            "task.train_batch_size", "method.target_r"} <= set(RANGES)


def test_light_check_reads_lightning_trainer_arguments_from_its_source():
    import inspect

    import pytorch_lightning as pl

    from dcft_lab.config_schema import lightning_trainer_arguments

    assert lightning_trainer_arguments() == set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}


# ---- composition errors: one line, close names ----------------------------------------------------------------
@pytest.mark.parametrize("argv, fragments", [
    (["experiment=glue/mnlii"], ["experiment=glue/mnlii: no such option", "did you mean glue/mnli", "glue/rte"]),
    (["-m", "hydra/launcher=slurmm", "task=rte,mrpc"], ["hydra/launcher=slurmm", "did you mean slurm?"]),
    (["method=dcfft"], ["method=dcfft", "did you mean dcft?"]),
    (["method.kernel_sise=2"], ["method.kernel_sise: no such key", "did you mean method.kernel_size?",
                                "+method.kernel_sise=2"]),
    (["trainer.max_stepz=3"], ["trainer.max_stepz: no such key", "trainer.max_steps"]),
    (["optim.lr=[1,"], ["cannot parse", "optim.lr=[1,"]),
    (["backbone=tiny-deberta", "optim.lr=0"], ["optim.lr=0.0; expected a number > 0"]),
    (["-m", "backbone=tiny-deberta", "optim.lr=1e-3,0"], ["job backbone=tiny-deberta optim.lr=0:", "optim.lr=0.0"]),
])
def test_check_jobs_answers_in_one_line(argv, fragments):
    with pytest.raises(ConfigError) as info:
        check_jobs(argv)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_experiment_is_an_error_everywhere():
    """Not `optional` in conf/config.yaml: a typo no longer composes the default task (SST-2) silently."""
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as info:
        compose_config(["experiment=glue/mnlii"])
    assert "did you mean glue/mnli" in describe_hydra_error(info.value, ["experiment=glue/mnlii"])
    assert compose_config(["experiment=glue/mnli"]).task.name == "mnli"


def test_check_jobs_gives_each_jobs_folder(tmp_path):
    folders = check_jobs(["-m", "backbone=tiny-deberta", "method.kernel_size=2,4", f"hydra.sweep.dir={tmp_path}",
                          "logger.tags=[a]", "sweep_name=s"])
    assert folders == [tmp_path / "backbone=tiny-deberta,method.kernel_size=2",
                       tmp_path / "backbone=tiny-deberta,method.kernel_size=4"]
    assert check_jobs(["backbone=tiny-deberta", f"hydra.run.dir={tmp_path / 'one'}"]) == [tmp_path / "one"]
    assert not tmp_path.joinpath("one").exists()  # checking writes nothing


# ---- multirun summary ------------------------------------------------------------------------------------------
def test_sweep_summary_counts_failed_jobs_and_names_their_folders(tmp_path, capsys):
    from dcft_lab.run import _sweep_summary

    folders = [tmp_path / name for name in ("ok", "bad", "killed", "never")]
    for folder, record in zip(folders, [
            {"status": "completed"},
            {"status": "failed", "failure": {"type": "ValueError", "reason": "DCFT cannot adapt x", "step": None}},
            {"status": "running"}]):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(record))
    assert _sweep_summary(folders) == 1
    err = capsys.readouterr().err
    assert "3 of 4 jobs failed" in err
    for name in ("bad", "killed", "never"):
        assert str(tmp_path / name) in err
    assert str(tmp_path / "ok") + ":" not in err
    assert "ValueError: DCFT cannot adapt x" in err
    assert _sweep_summary(folders[:1]) == 0
    assert "1 of 1 jobs completed" in capsys.readouterr().out


# ---- DRY_RUN ---------------------------------------------------------------------------------------------------
def _dry_run(argv, capsys):
    from dcft_lab.dry_run import preview

    code = preview(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err


def test_dry_run_checks_every_job_and_fails_on_any_error(capsys, tmp_path):
    code, out, err = _dry_run(["-m", "backbone=tiny-deberta", "method.kernel_size=5,8",
                               f"hydra.sweep.dir={tmp_path}"], capsys)
    assert code == 1
    assert out.count("ERROR:") == 1 and "kernel_size=5" in out and "d_in=48" in out  # the meta-model shape check
    assert "1 of 2 job(s) would fail" in err
    code, out, _ = _dry_run(["backbone=tiny-deberta", "method.kernel_size=8"], capsys)
    assert code == 0 and "ERROR" not in out
    code, out, _ = _dry_run(["backbone=tiny-deberta", "optim.lr=abc"], capsys)
    assert code == 1 and "ERROR: bad 'optim' config: optim.lr" in out
    code, out, _ = _dry_run(["backbone=tiny-deberta", "optim.lr=0"], capsys)
    assert code == 1 and "ERROR: optim.lr=0.0; expected a number > 0" in out
    code, out, _ = _dry_run(["backbone=tiny-deberta", f"data.root={tmp_path / 'none'}"], capsys)
    assert code == 1 and "data root" in out


@pytest.mark.slow  # its own process: on its first import submitit reconfigured logging process-wide (its
# logging.config.dictConfig), which in a shared test process closed handlers other tests' libraries bound to pytest's
# captures; dry_run._import_submitit_quietly now skips that set-up (next test)
def test_dry_run_batch_error_is_an_error(tmp_path):
    proc, _ = _cli(["-m", "backbone=tiny-deberta", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=3"], tmp_path,
                   DRY_RUN="1")
    assert proc.returncode == 1 and "batch: ERROR task.train_batch_size=32" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_dry_run_imports_submitit_without_its_logging_setup(monkeypatch):
    """submitit's first import runs logging.config.dictConfig, which shuts down every handler of the process (absl's
    then closes the stream it writes to: in a notebook or under pytest's capsys, a redirected one). The dry run's
    import skips that set-up and leaves SUBMITIT_LOG_LEVEL as it was."""
    import logging.config

    from dcft_lab import dry_run

    for name in [m for m in sys.modules if m == "submitit" or m.startswith("submitit.")]:
        monkeypatch.delitem(sys.modules, name)  # a first import again (the originals come back afterwards)
    calls = []
    monkeypatch.setattr(logging.config, "dictConfig", calls.append)
    monkeypatch.delenv("SUBMITIT_LOG_LEVEL", raising=False)
    module = dry_run._import_submitit_quietly()
    assert module.__name__ == "submitit" and hasattr(module, "AutoExecutor")
    assert calls == [] and "SUBMITIT_LOG_LEVEL" not in os.environ


@pytest.mark.parametrize("argv, fragment", [
    (["-m", "hydra/launcher=slurmm"], "hydra/launcher=slurmm: no such option (did you mean slurm?)"),
    (["-m", "method.kernel_sise=2,4"], "method.kernel_sise: no such key"),
])
def test_dry_run_composition_errors_are_one_line(argv, fragment, capsys):
    code, _, err = _dry_run(argv, capsys)
    assert code == 2
    assert fragment in one_line_error(err)


# ---- the real CLI: about a second, no heavy import -------------------------------------------------------------
def _cli(args, tmp_path, python_flags=(), **env):
    full_env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0", **env}
    start = time.time()
    proc = subprocess.run([sys.executable, *python_flags, "-m", "dcft_lab.run", *args], env=full_env, capture_output=True,
                          text=True, timeout=300, cwd=str(tmp_path))
    return proc, time.time() - start


@pytest.mark.slow
@pytest.mark.parametrize("args, fragment", [
    (["experiment=glue/mnlii"], "did you mean glue/mnli"),
    (["backbone=minilm", "task=rte", "optim.lr=-1e-3"], "optim.lr=-0.001; expected a number > 0"),
    (["+method.kernel_sise=2"], "method.kernel_sise"),
    (["logger.mode=onlin"], "logger.mode='onlin'"),
])
def test_cli_bad_override_answers_before_heavy_imports(args, fragment, tmp_path):
    proc, seconds = _cli(args, tmp_path, python_flags=("-X", "importtime"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert fragment in one_line_error(proc.stderr)
    assert not (tmp_path / "outputs").exists()  # no run folder for a command that cannot run
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    heavy = imported & {"torch", "pytorch_lightning", "peft", "transformers", "datasets", "wandb"}
    assert not heavy, f"the CLI imported {sorted(heavy)} before answering"  # the 12-24 s of issue 32
    # the check imports neither torch nor Lightning: measured in a child that reports what it imported
    probe = subprocess.run([sys.executable, "-c", (
        "import sys\nfrom dcft_lab.run import check_jobs\nfrom dcft_lab.config_schema import ConfigError\n"
        f"try:\n    check_jobs({args!r})\nexcept ConfigError:\n    pass\n"
        "print(sorted(m for m in ('torch', 'pytorch_lightning', 'peft', 'transformers') if m in sys.modules))")],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr[-2000:]
    print(f"{' '.join(args)}: rc 2 in {seconds:.1f}s")


@pytest.mark.slow
def test_cli_dry_run_exit_codes(tmp_path):
    proc, _ = _cli(["-m", "backbone=tiny-deberta", "method.kernel_size=5,8"], tmp_path, DRY_RUN="1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "ERROR: DCFT cannot adapt" in proc.stdout
    proc, _ = _cli(["-m", "hydra/launcher=slurmm"], tmp_path, DRY_RUN="1")
    assert proc.returncode == 2 and "did you mean slurm" in one_line_error(proc.stderr)
    assert not Path(tmp_path / "multirun").exists()
