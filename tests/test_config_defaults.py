"""One home per default (issue 33): every run default is written once, in conf/. The config dataclasses, the
generation settings and the data-module constructors hold no second copy; a config that leaves a key out (an old
run record) takes the YAML's value; the summarization settings a composed run uses are the decided ones."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dcft_lab.build import run_datamodule
from dcft_lab.compose import compose_config
from dcft_lab.config_schema import _SECTIONS, ConfigError, RunConfig, TaskConfig, validate
from dcft_lab.data.causal_lm import DecoderSummarizationDataModule, PromptResponseDataModule
from dcft_lab.data.glue import GlueDataModule
from dcft_lab.data.squad import SquadDataModule
from dcft_lab.data.summarization import GenerationSettings, Seq2SeqDataModule
from dcft_lab.data.tasks import TASKS, get_task

REPO = Path(__file__).resolve().parents[1]
DATA_MODULES = (GlueDataModule, SquadDataModule, Seq2SeqDataModule, PromptResponseDataModule,
                DecoderSummarizationDataModule)
# TaskConfig keys of one task family: None there means "not a setting of this task", never a value
FAMILY_KEYS = {f.name for f in dataclasses.fields(TaskConfig)} - {"name", "train_batch_size", "eval_batch_size"}


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


# ---- no second copy ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("schema", [*_SECTIONS.values(), RunConfig, GenerationSettings], ids=lambda s: s.__name__)
def test_schemas_hold_no_default_values(schema):
    for f in dataclasses.fields(schema):
        if schema is TaskConfig and f.name in FAMILY_KEYS:
            assert f.default is None and f.default_factory is dataclasses.MISSING, f.name  # "not this task's"
        else:
            assert not _has_default(f), f"{schema.__name__}.{f.name} has a default; its home is conf/"


@pytest.mark.parametrize("cls", DATA_MODULES, ids=lambda c: c.__name__)
def test_data_modules_take_the_typed_config_not_loose_settings(cls):
    config_keys = {f.name for schema in (_SECTIONS["task"], _SECTIONS["data"]) for f in dataclasses.fields(schema)}
    config_keys |= {"data_root", "generation", "task_name"}
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    assert {"spec", "task", "data", "tokenizer", "seed"} <= names
    assert not names & config_keys, f"{cls.__name__} takes config keys one by one: {sorted(names & config_keys)}"
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name in ("spec", "task", "data", "tokenizer", "seed"):
            assert parameter.default is inspect.Parameter.empty, (cls.__name__, name)


# ---- composing the default config yields every value -------------------------------------------------------
@pytest.mark.parametrize("overrides", [[], ["logger=csv"], ["backbone=tiny-llama"], ["backbone=bart-large"]])
def test_the_composed_config_sets_every_schema_key(overrides):
    cfg = compose_config(overrides)
    for key, schema in _SECTIONS.items():
        expected = {f.name for f in dataclasses.fields(schema)}
        if key == "task":
            expected -= FAMILY_KEYS - set(cfg.task.keys())  # the family's keys: next test
        assert set(cfg[key].keys()) == expected, key
    assert {f.name for f in dataclasses.fields(RunConfig)} <= set(cfg.keys())


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_yaml_sets_what_its_data_module_reads(task):
    assert (REPO / "conf" / "task" / f"{task}.yaml").is_file()
    rc = validate(compose_config([f"task={task}"]), light=True)
    spec = get_task(task)
    reads = spec.task_keys
    module_keys = {"classification": GlueDataModule.task_keys, "regression": GlueDataModule.task_keys, "qa": (),
                   "seq2seq": Seq2SeqDataModule.task_keys, "causal_lm": PromptResponseDataModule.task_keys}
    assert reads and set(module_keys[spec.family]) <= set(reads), task
    for key in reads:
        assert getattr(rc.task, key) is not None, f"conf/task/{task}.yaml lacks {key}"
    if spec.family == "seq2seq":  # the generation settings too, every field
        assert set(rc.task.generation) == {f.name for f in dataclasses.fields(GenerationSettings)}


@pytest.mark.parametrize("task, key", [("sst2", "max_length"), ("squad_v1", "doc_stride"),
                                       ("squad_v2", "null_score_diff_threshold"), ("xsum", "max_source_length")])
def test_a_null_task_setting_is_refused_by_the_config_check(task, key):
    # before anything is built: one line naming the key, not a failed run after the model has loaded
    with pytest.raises(ConfigError, match=rf"^task '{task}' has no task\.{key}; expected it in conf/task/{task}\.yaml"):
        validate(compose_config([f"task={task}", f"task.{key}=null"]), light=True)


def test_a_task_without_a_setting_its_module_reads_is_a_clear_error():
    from dcft_lab.tiny_tokenizers import tiny_deberta_tokenizer

    rc = validate(compose_config(["task=rte", "~task.max_length"]), light=True)
    assert rc.task.max_length == 320  # a key left out takes the YAML's value ...
    rc.task = dataclasses.replace(rc.task, max_length=None)  # ... a task whose YAML lacks it is an error
    with pytest.raises(ValueError, match=r"task 'rte' has no task.max_length; expected it in conf/task/rte.yaml"):
        run_datamodule(rc, get_task("rte"), tiny_deberta_tokenizer(), "classification")


# ---- a config without a newer key (old run records) takes the YAML's value ------------------------------------
# keys added after the first recorded runs; an old record lacks them (the report and evaluate still read those)
NEWER_KEYS = ["optim.factor_lr_ratio", "optim.head_lr", "run.save_best_adapter", "run.verbose", "early_stopping",
              "logger.project", "logger.mode", "logger.tags", "backbone.gradient_checkpointing", "backbone.dtype",
              "task.generation.early_stopping", "task.generation.max_new_tokens"]


@pytest.mark.parametrize("overrides", [["experiment=table1_cpu/mrpc", "logger=csv"], ["experiment=smoke/xsum"]])
def test_a_config_without_the_newer_keys_validates_to_the_same_run(overrides):
    full = OmegaConf.to_container(compose_config(overrides), resolve=True)
    old = copy.deepcopy(full)
    for dotted in NEWER_KEYS:
        *parents, last = dotted.split(".")
        node = old
        for part in parents:
            node = node.get(part) or {}
        node.pop(last, None)
    assert old != full
    assert validate(OmegaConf.create(old), light=True) == validate(OmegaConf.create(full), light=True)


def test_the_committed_run_records_still_validate():
    records = sorted((REPO / "results").glob("*/**/results.json"))[::10]
    assert records, "no committed run records under results/"
    for path in records:
        config = {k: v for k, v in json.loads(path.read_text())["config"].items() if k != "hydra"}
        rc = validate(OmegaConf.create(config), light=True)
        for key in ("task", "data", "optim"):  # what the record says is what the run uses
            for name, value in config[key].items():
                assert getattr(getattr(rc, key), name) == value, (path, key, name)


# ---- the summarization settings a composed run uses (decided in issue 33) -------------------------------------
# XSum beam 8 and CNN/DM source 1024: AdaLoRA's NLG_QA/scripts/run_bart_xsum.sh (--num_beams 8, --max_source_length
# 768) and run_bart_cnndailymail.sh (--max_source_length 1024, --max_target_length 160, --num_beams 4), the BART-large
# setup the DCFT paper follows (docs: "Beam 8 (XSum), 4 (CNN/DM)").
@pytest.mark.parametrize("overrides, source, target, beams", [
    (["task=xsum"], 768, 64, 8),
    (["experiment=summarization/xsum"], 768, 64, 8),
    (["task=cnn_dailymail"], 1024, 160, 4),
    (["experiment=summarization/cnn_dailymail"], 1024, 160, 4),
])
def test_summarization_runs_use_the_decided_settings(overrides, source, target, beams):
    from dcft_lab.tiny_tokenizers import tiny_bart_tokenizer

    rc = validate(compose_config(["backbone=tiny-bart", *overrides]), light=True)
    dm = run_datamodule(rc, get_task(rc.task.name), tiny_bart_tokenizer(), "seq2seq")
    assert isinstance(dm, Seq2SeqDataModule)
    assert (dm.max_source_length, dm.max_target_length) == (source, target)
    assert dm.make_evaluator().generation.num_beams == beams
    assert dm.make_evaluator().generation.generate_kwargs()["num_beams"] == beams
