"""Config composition and validation: typos and wrong types fail fast naming the key; presets compose per method."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from dcft_lab.config_schema import ConfigError, validate
from helpers import CONF_DIR, compose_config, one_line_error, run_cli

CONF = Path(CONF_DIR)


# ---- fast failures via the real CLI (checked before any heavy import) ----------------------------
@pytest.mark.slow
def test_cli_method_key_typo_fails_fast(tmp_path):
    proc = run_cli(["method.kernel_sise=2"], tmp_path / "run", None, timeout=60)
    assert proc.returncode == 2
    line = one_line_error(proc.stderr)
    assert "method.kernel_sise: no such key (did you mean method.kernel_size?)" in line
    assert not (tmp_path / "run").exists()  # nothing ran, no folder


@pytest.mark.slow
def test_cli_unknown_method_lists_the_options(tmp_path):
    proc = run_cli(["method=foo"], tmp_path / "run", None, timeout=60)
    assert proc.returncode == 2
    line = one_line_error(proc.stderr)
    assert "method=foo: no such option" in line
    assert "expected one of adalora, bitfit, dcft, full, hadapter, lokr, lora, lorafa, none, padapter, sora" in line


@pytest.mark.slow  # a CLI run in a subprocess, up to its config error
def test_cli_unknown_task_name_is_refused_by_the_config_check(tmp_path):
    # the config check knows the task registry (and which settings each task needs), so an unknown name is refused
    # like any bad setting: one line, exit 2, before a run folder or a record exists
    run_dir = tmp_path / "run"
    proc = run_cli(["task.name=foo"], run_dir, None, timeout=120)
    assert proc.returncode == 2  # a ValueError: bad input
    assert "Traceback" not in proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(line) == 1 and "unknown task 'foo'" in line[0] and "sst2" in line[0]
    assert not (run_dir / "results.json").exists()


# ---- validation (in-process): each error is one line naming the bad key or value -----------------
@pytest.mark.parametrize("override, expected", [
    ("+method.kernel_sise=2", ["method.kernel_sise", "kernel_size"]),  # added key: ours, with the valid names
    ("method.kernel_size=abc", ["method.kernel_size", "'abc'"]),
    ("method.rank=1.5", ["method.rank", "1.5"]),
    ("method.stride=16", ["stride=16", "kernel_size=8"]),  # DCFT values: checked here, not at the first layer
    ("method=adalora method.deltaT=x", ["method.deltaT", "'x'"]),
    ("task.train_batch_size=x", ["task.train_batch_size", "'x'"]),
    ("+trainer.max_stepz=3", ["max_stepz"]),
    ("+foo=1", ["'foo'"]),
    ("seed=abc", ["seed", "'abc'"]),
    ("eval_every_n_steps=0", ["eval_every_n_steps=0"]),
])
def test_validation_errors_name_the_key(override, expected):
    cfg = compose_config(["backbone=tiny-deberta", *override.split()])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, message


def test_trainer_key_typo_without_plus_is_hydras_error():
    with pytest.raises(ConfigCompositionException, match="trainer.max_stepz"):
        compose_config(["trainer.max_stepz=3"])


@pytest.mark.parametrize("group", ["method", "task", "backbone"])
def test_unknown_group_option_lists_options(group):
    with pytest.raises(MissingConfigException) as info:
        compose_config([f"{group}=foo"])
    assert f"Could not find '{group}/foo'" in str(info.value)
    assert "Available options" in str(info.value)


def test_valid_default_config_validates():
    rc = validate(compose_config([]))
    assert (rc.task.name, rc.backbone.name, rc.method.name, rc.seed) == ("sst2", "deberta-v3-base", "dcft", 6)
    assert rc.method.alpha == 16.0 and rc.method.orth_reg_weight == 0.1  # defaults when no preset


@pytest.mark.parametrize("method, key", [("dcft", "rank"), ("adalora", "deltaT"), ("lokr", "decompose_factor")])
def test_a_deleted_method_key_takes_the_yaml_default(method, key):
    from omegaconf import OmegaConf

    default = OmegaConf.load(Path(CONF_DIR) / "method" / f"{method}.yaml")[key]  # the one home of the default
    rc = validate(compose_config([f"method={method}", f"~method.{key}"]))
    assert getattr(rc.method, key) == default


def test_validated_method_is_complete_and_typed():
    rc = validate(compose_config(["experiment=glue/rte", "method=adalora"]))
    # the preset's step counts (600, 1800) are converted to AdaLoRA's float fields; every key is present
    assert (rc.method.tinit, rc.method.tfinal, rc.method.deltaT) == (600.0, 1800.0, 1)
    assert isinstance(rc.method.tinit, float)
    from dcft_lab.adapters import Method
    from dcft_lab.adapters.methods import method_fields

    assert isinstance(rc.method, Method) and tuple(rc.method.to_dict()) == method_fields("adalora")


# ---- experiment presets ----------------------------------------------------------------------------
def test_rte_experiment_has_the_paper_values():
    rc = validate(compose_config(["experiment=glue/rte"]))
    assert (rc.task.name, rc.backbone.name, rc.method.name) == ("rte", "deberta-v3-base", "dcft")
    assert rc.optim.lr == pytest.approx(1.2e-3)
    assert rc.method.alpha == 32.0 and rc.method.orth_reg_weight == 0.3
    assert rc.eval_every_n_steps == 100
    assert rc.trainer["max_epochs"] == 50
    assert rc.experiment == "glue/rte" and rc.seed == 6


@pytest.mark.parametrize("method, alpha_expected", [("lora", 32.0), ("adalora", 32.0), ("lokr", 32.0), ("none", None)])
def test_rte_experiment_composes_with_other_methods(method, alpha_expected):
    rc = validate(compose_config(["experiment=glue/rte", f"method={method}"]))
    assert rc.method.name == method
    assert getattr(rc.method, "alpha", None) == alpha_expected  # the task preset reaches every method that has it
    if method == "lora":
        assert not hasattr(rc.method, "orth_reg_weight")  # LoRA has none; the preset must not inject it
    if method == "adalora":
        assert rc.method.orth_reg_weight == 0.3
    assert rc.optim.lr == pytest.approx(1.2e-3) and rc.task.name == "rte"


def test_quickstart_experiment_is_minilm_sst2():
    rc = validate(compose_config(["experiment=quickstart"]))
    assert (rc.backbone.name, rc.task.name, rc.method.name) == ("minilm", "sst2", "dcft")
    assert rc.experiment == "quickstart"


# glue/* and table1_cpu/* are composed with every grid row in test_reproduce.py, quickstart above
EXPERIMENTS = sorted(str(p.relative_to(CONF / "experiment").with_suffix("")) for folder in ("smoke", "squad", "summarization")
                     for p in (CONF / "experiment" / folder).glob("*.yaml"))


def test_the_smoke_and_generation_presets_compose_and_validate():
    """The presets the README and the slow CLI tests run (smoke/*) and the SQuAD / summarization paper settings."""
    assert {"smoke/sft", "smoke/squad_v1", "smoke/xsum", "squad/squad_v1"} <= set(EXPERIMENTS)
    for experiment in EXPERIMENTS:
        rc = validate(compose_config([f"experiment={experiment}"]))
        assert (rc.experiment, rc.task.name) == (experiment, experiment.split("/")[-1]), experiment
