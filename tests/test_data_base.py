"""What the task families share: the data-module and evaluator bases, the JSON-lines reader, the task spec handed
down from the factory, and the names dcft_lab.data.squad keeps after its split into squad_processing / squad_metrics."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from conftest import default_glue_rows, write_glue_tsv_root
from dcft_lab.config_schema import DataConfig, section
from dcft_lab.data import factory, tasks
from dcft_lab.data.base import ExampleDataModule, TaskDataModule
from dcft_lab.data.causal_lm import (
    DecoderRougeEvaluator,
    DecoderSummarizationDataModule,
    PerplexityEvaluator,
    PromptResponseDataModule,
)
from dcft_lab.data.evaluator import Evaluator
from dcft_lab.data.glue import GlueDataModule
from dcft_lab.data.jsonl import iter_jsonl
from dcft_lab.data.metrics import GlueEvaluator
from dcft_lab.data.squad import SquadDataModule
from dcft_lab.data.squad_metrics import SquadEvaluator
from dcft_lab.data.summarization import RougeEvaluator, Seq2SeqDataModule
from dcft_lab.data.tasks import get_task

torch.set_num_threads(1)
TEST_DATA = Path(__file__).resolve().parent / "data"


# ---- JSON lines ---------------------------------------------------------------------------------------------
def test_iter_jsonl_skips_blank_lines_and_numbers_the_rest(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2, "b": "x"}\n', encoding="utf-8")
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2, "b": "x"})]


@pytest.mark.parametrize("text, message", [
    ('{"a": 1}\n{"a": \n', r"rows.jsonl:2: not valid JSON \(.*\); expected one object per line$"),
    ('{"a": 1}\n\n[1, 2]\n', r"rows.jsonl:3: expected an object with field 'a'$"),
])
def test_iter_jsonl_bad_line_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as caught:
        list(iter_jsonl(path, "an object with field 'a'"))
    assert "\n" not in str(caught.value)


def test_every_jsonl_reader_names_the_bad_line(tmp_path):
    from dcft_lab.data.causal_lm import read_prompt_response_jsonl
    from dcft_lab.data.summarization import read_documents, read_summary_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"document": "d", "summary": "s", "prompt": "p", "response": "r"}\n"just a string"\n')
    for read in (read_summary_jsonl, read_prompt_response_jsonl, read_documents):
        with pytest.raises(ValueError, match=r"rows.jsonl:2: expected an object with (a )?string field"):
            read(path)
    path.write_text('{"document": "d", "summary": "s", "prompt": "p", "response": "r"}\n{oops\n')
    for read in (read_summary_jsonl, read_prompt_response_jsonl, read_documents):
        with pytest.raises(ValueError, match=r"rows.jsonl:2: not valid JSON"):
            read(path)


def test_prompts_only_file_is_a_one_line_error(tmp_path):
    """A prompt/response file to score (evaluate file= on sft) with a row lacking 'response' asks for predictions,
    which perplexity tasks have none of: one line naming the row; a complete file reads."""
    from dcft_lab.data.base import DataInputError
    from dcft_lab.data.causal_lm import read_scored_file

    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "Why?"}\n')
    with pytest.raises(DataInputError, match=r"^.*rows.jsonl:2 has no 'response'; predictions \(generated responses\) "
                                             r"are not supported for task 'sft'") as caught:
        read_scored_file(path, "sft")
    assert "\n" not in str(caught.value)
    path.write_text('{"prompt": "p", "response": "r"}\n')
    assert read_scored_file(path, "sft")["response"] == ["r"]


# ---- evaluators -------------------------------------------------------------------------------------------
def test_update_is_add_scored_of_score_batch():
    calls = []

    class Recording(Evaluator):
        def score_batch(self, model, batch, dataloader_idx=0):
            calls.append(("score", batch, dataloader_idx))
            return (batch["x"] * 2,)

        def add_scored(self, scored, dataloader_idx=0):
            calls.append(("add", scored, dataloader_idx))

    batch = {"x": 3}
    Recording().update(None, batch, 1)
    assert calls == [("score", batch, 1), ("add", (6,), 1)]


@pytest.mark.parametrize("cls", [GlueEvaluator, SquadEvaluator, RougeEvaluator, DecoderRougeEvaluator,
                                 PerplexityEvaluator])
def test_every_evaluator_uses_the_shared_update(cls):
    assert issubclass(cls, Evaluator)
    assert cls.update is Evaluator.update  # no family re-implements the model/metric split
    for name in ("score_batch", "add_scored", "compute", "reset"):
        assert getattr(cls, name) is not getattr(Evaluator, name), f"{cls.__name__}.{name} is not implemented"


# ---- data modules -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [GlueDataModule, SquadDataModule, Seq2SeqDataModule, PromptResponseDataModule,
                                 DecoderSummarizationDataModule])
def test_every_data_module_uses_the_shared_loaders(cls):
    assert issubclass(cls, TaskDataModule)
    assert cls.train_dataloader is TaskDataModule.train_dataloader
    assert cls.val_dataloader is TaskDataModule.val_dataloader
    assert cls.eval_names is TaskDataModule.eval_names


def test_qa_and_summarization_share_the_example_pipeline():
    for cls in (SquadDataModule, Seq2SeqDataModule, DecoderSummarizationDataModule):
        assert issubclass(cls, ExampleDataModule)
        assert cls.setup is ExampleDataModule.setup and cls._load_examples is ExampleDataModule._load_examples


def test_squad_names_stay_importable_from_squad():
    from dcft_lab.data import squad, squad_metrics, squad_processing

    for module in (squad_processing, squad_metrics):
        for name in ("QACollator", "build_features", "postprocess_qa_predictions", "prepare_train_features",
                     "prepare_eval_features", "META_KEYS", "SquadEvaluator", "squad_em_f1", "f1_score",
                     "exact_match_score", "normalize_answer"):
            if hasattr(module, name):
                assert getattr(squad, name) is getattr(module, name), name


# ---- the task spec, looked up once (by the caller) ---------------------------------------------------------
def _cfgs(task: str, root: Path, **settings):
    """The typed task / data configs (conf/ defaults + settings), built without the task registry."""
    data_keys = {f.name for f in fields(DataConfig)}
    data = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items() if k in data_keys}
    task_node = {k: v for k, v in settings.items() if k not in data_keys}
    return (section("task", {"name": task, "train_batch_size": 4, "eval_batch_size": 8, **task_node}),
            section("data", {"root": str(root), "source": "local", **data}))


@pytest.fixture
def registry_emptied(monkeypatch):
    """Copies of the registry's specs; the registry itself is emptied, so any look-up of a task by name (instead
    of using the spec handed down) fails."""
    specs = {name: replace(spec) for name, spec in tasks.TASKS.items()}  # equal, but not the registry's objects
    monkeypatch.setattr(tasks, "TASKS", {})
    return specs


def test_factory_hands_the_spec_down(registry_emptied, text_data_root, tmp_path):
    from dcft_lab.backbones import prepare_decoder_tokenizer
    from dcft_lab.tiny_tokenizers import tiny_bart_tokenizer, tiny_deberta_tokenizer, tiny_decoder_tokenizer

    specs = registry_emptied
    task_cfg, data_cfg = _cfgs("sft", text_data_root, max_length=64,
                               train_file=str(TEST_DATA / "sft_tiny_train.jsonl"),
                               eval_file=str(TEST_DATA / "sft_tiny_dev.jsonl"))
    tokenizer = prepare_decoder_tokenizer(tiny_decoder_tokenizer("llama"))
    dm = factory.build_datamodule(specs["sft"], task_cfg, data_cfg, tokenizer, 0)
    assert dm.spec is specs["sft"]
    dm.setup("fit")
    assert isinstance(dm.make_evaluator(), PerplexityEvaluator)

    task_cfg, data_cfg = _cfgs("xsum", text_data_root, max_source_length=64, max_target_length=16,
                               generation={"num_beams": 2}, train_from_eval=8, eval_limit=4)
    dm = factory.build_datamodule(specs["xsum"], task_cfg, data_cfg, tiny_bart_tokenizer(), 0)
    assert dm.spec is specs["xsum"]
    dm.setup("fit")
    assert dm.make_evaluator().generation.num_beams == 2
    assert dm.data_info()["task"] == "xsum" and len(next(iter(dm.val_dataloader()[0]))["input_ids"]) == 4

    task_cfg, data_cfg = _cfgs("squad_v1", text_data_root, max_length=64, doc_stride=16, n_best=5,
                               max_answer_length=10, train_from_eval=8, eval_limit=4)
    dm = factory.build_datamodule(specs["squad_v1"], task_cfg, data_cfg, tiny_deberta_tokenizer(), 0)
    assert dm.spec is specs["squad_v1"]
    dm.setup("fit")
    assert isinstance(dm.make_evaluator(), SquadEvaluator) and dm.data_info()["n_eval"] == 4

    task_cfg, data_cfg = _cfgs("mrpc", write_glue_tsv_root(tmp_path, "mrpc", rows={
        "train.tsv": default_glue_rows("mrpc", n=10), "dev.tsv": default_glue_rows("mrpc", n=6)}), max_length=64,
        train_limit=8, eval_limit=4, cache_dir=tmp_path / "cache")
    dm = factory.build_datamodule(specs["mrpc"], task_cfg, data_cfg, tiny_deberta_tokenizer(), 0)
    assert dm.spec is specs["mrpc"]
    dm.setup("fit")
    assert dm.make_evaluator().spec is specs["mrpc"] and dm.data_info()["counts"] == {"train": 8, "validation": 4}


def test_a_spec_is_accepted_wherever_a_task_name_is():
    from dcft_lab.data.summarization import summarization_local_path

    xsum = get_task("xsum")
    assert summarization_local_path(xsum, "test", "/r") == summarization_local_path("xsum", "test", "/r")
