"""SQuAD and XSum through the whole training pipeline (config -> data -> adapted model -> Lightning -> results.json),
with the tiny random backbones, for DCFT, LoRA and AdaLoRA, on hand-made files in the real layout
(conftest.write_text_data_root); plus the CLI on the real SQuAD dev file (slow) and the fallback used when only the
evaluation file of a dataset is available."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dcft_lab import training
from dcft_lab.config_schema import validate
from dcft_lab.data.splits import CARVED
from dcft_lab.data.squad import SquadDataModule, build_features
from dcft_lab.data.summarization import Seq2SeqDataModule
from dcft_lab.tiny_tokenizers import tiny_bart_tokenizer, tiny_deberta_tokenizer
from helpers import make_datamodule

REPO = Path(__file__).resolve().parents[1]
ROUGE = {"rouge1", "rouge2", "rougeL", "rougeLsum"}

# Small: SQuAD windows of 128 tokens, 8 training questions carved (whole articles) from dev-v1.1.json,
# 4 other questions evaluated; XSum sources of 128 tokens, short beam search. Two optimizer steps each.
SQUAD_SMALL = ["task=squad_v1", "backbone=tiny-deberta", "task.max_length=128", "task.doc_stride=32",
               "task.train_batch_size=8", "data.train_from_eval=8", "data.eval_limit=4"]
XSUM_SMALL = ["task=xsum", "backbone=tiny-bart", "task.max_source_length=128", "task.train_batch_size=4",
              "task.generation={num_beams: 2, max_length: 12, min_length: 0}", "data.train_from_eval=8",
              "data.eval_limit=4"]
QUIET = ["logger=csv", "trainer=cpu", "trainer.max_steps=2", "trainer.enable_progress_bar=false", "run.threads=1"]

# Adapter sizes, hand-computed from the tiny architectures (hidden 48, FFN 96).
#   DCFT d=8, k=1: per W (in x out) k*(in/8 + out/8) + 64;  LoRA r=1: in + out;
#   AdaLoRA init_r=3: 3*in + 3*out + 3 (A, B and the singular values E).
# tiny-deberta, 2 layers x (q, k, v, attention.output 48x48; intermediate 48x96; output 96x48):
SQUAD_ADAPTER = {"dcft": 2 * (4 * 76 + 2 * 82), "lora": 2 * (4 * 96 + 2 * 144), "adalora": 2 * (4 * 291 + 2 * 435)}
# tiny-bart, 12 attention projections 48x48 (encoder self, decoder self AND decoder cross-attention: q, k, v, out)
# + 4 FFN matrices (fc1 48x96, fc2 96x48 in encoder and decoder). Without cross-attention it would be 8 projections.
XSUM_ADAPTER = {"dcft": 12 * 76 + 4 * 82, "lora": 12 * 96 + 4 * 144, "adalora": 12 * 291 + 4 * 435}


def run_in_process(run_dir: Path, overrides: list[str]) -> dict:
    """Compose conf/ as the CLI does and run training.execute (no subprocess: much faster)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)  # without the hydra node (its ${hydra:} keys)
    return training.execute(validate(cfg), OmegaConf.to_container(cfg, resolve=True), run_dir)


def on_disk(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def check_scale(metrics: dict, names: set[str]) -> None:
    assert set(metrics) == names
    assert all(0.0 <= value <= 100.0 for value in metrics.values()), metrics


@pytest.fixture(autouse=True)
def _data_root(text_data_root, monkeypatch):
    monkeypatch.setenv("DCFT_LAB_DATA", str(text_data_root))
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.mark.parametrize("method", ["dcft", "lora", "adalora"])
def test_squad_v1_trains_and_reports_em_f1(tmp_path, method):
    record = run_in_process(tmp_path / "run", [*SQUAD_SMALL, *QUIET, f"method={method}"])
    assert record == on_disk(tmp_path / "run")
    assert record["status"] == "completed" and record["main_metric"] == "f1"
    check_scale(record["metrics"]["final"], {"exact_match", "f1"})
    assert record["global_steps"] == 2 and record["evaluations"][-1]["step"] == 2
    assert record["params"]["adapter"] == SQUAD_ADAPTER[method]
    assert record["params"]["head"] == 48 * 2 + 2  # qa_outputs: start / end logits
    data = record["data"]
    assert data["train_source"] == CARVED and data["carve_group"] == "title"
    assert (data["n_train"], data["n_eval"]) == (8, 4)
    assert data["files"] == [str(Path(os.environ["DCFT_LAB_DATA"]) / "squad_v1.1" / "dev-v1.1.json")]
    assert "fallback" not in data  # carving was asked for explicitly


@pytest.mark.parametrize("method", ["dcft", "lora", "adalora"])
def test_xsum_trains_and_reports_rouge(tmp_path, method):
    record = run_in_process(tmp_path / "run", [*XSUM_SMALL, *QUIET, f"method={method}"])
    assert record["status"] == "completed" and record["main_metric"] == "rouge1"
    check_scale(record["metrics"]["final"], ROUGE)
    assert record["global_steps"] == 2 and record["evaluations"][-1]["step"] == 2
    assert record["target_modules"] == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert record["params"]["adapter"] == XSUM_ADAPTER[method]
    assert record["params"]["head"] == 0
    data = record["data"]
    assert data["train_source"] == CARVED and data["eval_file_is_test_sample"] is True
    assert (data["n_train"], data["n_eval"]) == (8, 4)
    assert data["generation"]["num_beams"] == 2  # the task.generation override reached the evaluator
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow  # a run in a subprocess, on the real SQuAD dev file
def test_cli_plain_squad_command_falls_back_to_a_recorded_smoke_split(tmp_path, shared_data, monkeypatch):
    """The README command, shrunk by overrides; without data.train_from_eval the run carves its own slice."""
    monkeypatch.setenv("DCFT_LAB_DATA", str(shared_data))
    run_dir = tmp_path / "cli"
    command = [sys.executable, "-m", "dcft_lab.run", "task=squad_v1", "backbone=tiny-deberta", "method=dcft",
               "task.max_length=128", "task.doc_stride=32", "data.train_limit=8", "data.eval_limit=4", *QUIET,
               f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dev f1:" in done.stdout
    record = on_disk(run_dir)
    assert record["status"] == "completed"
    check_scale(record["metrics"]["final"], {"exact_match", "f1"})
    data = record["data"]
    # 10% of the 10,570 dev questions, capped at 100 (data/factory.py); the explicit eval_limit wins over the cap.
    assert data["fallback"]["train_from_eval"] == 100 and data["fallback"]["eval_limit"] == 4
    assert "train-v1.1.json not found" in data["fallback"]["reason"]
    assert data["train_source"] == CARVED and (data["n_train"], data["n_eval"]) == (8, 4)


# ---- the fallback and the question-length guard, on hand-made files ------------------------------------------
def write_squad_dev(root: Path, n_articles: int, questions_per_article: int) -> None:
    data = []
    for a in range(n_articles):
        context = f"Article {a} says the Denver Broncos won the game in {2000 + a}."
        start = context.index("Denver Broncos")
        qas = [{"id": f"a{a}q{q}", "question": f"Who won game {q}?",
                "answers": [{"text": "Denver Broncos", "answer_start": start}]} for q in range(questions_per_article)]
        data.append({"title": f"T{a}", "paragraphs": [{"context": context, "qas": qas}]})
    path = root / "squad_v1.1" / "dev-v1.1.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": "1.1", "data": data}))


def test_squad_fallback_carves_ten_percent_and_caps_eval(tmp_path):
    write_squad_dev(tmp_path, n_articles=10, questions_per_article=5)  # 50 questions, 5 per article
    module = make_datamodule(SquadDataModule, "squad_v1", tiny_deberta_tokenizer(), data_root=tmp_path, source="local",
                             max_length=64, doc_stride=16, fallback_train_cap=100, fallback_eval_limit=20)
    info = module.data_info()
    # 10% of 50 = 5 questions = one whole article; 45 remain, of which the cap keeps 20.
    assert info["fallback"]["train_from_eval"] == 5 and info["fallback"]["eval_limit"] == 20
    assert (info["n_train"], info["n_eval"], info["n_train_groups"]) == (5, 20, 1)
    assert {q[:2] for q in module.train_examples["id"]}.isdisjoint({q[:2] for q in module.eval_examples["id"]})
    with pytest.raises(FileNotFoundError, match="train_from_eval"):  # no fallback configured: a clear error
        make_datamodule(SquadDataModule, "squad_v1", tiny_deberta_tokenizer(), data_root=tmp_path, source="local").data_info()


def test_summarization_fallback_is_capped(tmp_path):
    folder = tmp_path / "xsum"
    folder.mkdir()
    rows = [json.dumps({"document": f"Document number {i} about the council.", "summary": f"Summary {i}."})
            for i in range(30)]
    (folder / "validation.jsonl").write_text("\n".join(rows) + "\n")
    module = make_datamodule(Seq2SeqDataModule, "xsum", tiny_bart_tokenizer(), data_root=tmp_path, source="local",
                               fallback_train_cap=2, fallback_eval_limit=None)
    info = module.data_info()
    assert info["fallback"]["train_from_eval"] == 2  # min(cap 2, 10% of 30 = 3)
    assert (info["n_train"], info["n_eval"]) == (2, 28)  # no eval cap: every remaining row
    assert info["train_source"] == CARVED


def test_long_questions_are_cut_so_windows_keep_context():
    """A question longer than the window used to make the fast tokenizer panic; now it is cut to half the room."""
    from datasets import Dataset

    tokenizer = tiny_deberta_tokenizer()
    context = "The Denver Broncos won the game at the stadium in the San Francisco Bay Area."
    question = "Which team " + "really " * 40 + "won?"
    examples = Dataset.from_dict({"id": ["x"], "title": ["t"], "context": [context], "question": [question],
                                  "answers": [{"text": ["Denver Broncos"], "answer_start": [4]}]})
    features = build_features(examples, tokenizer, train=False, max_length=64, doc_stride=16)
    # room = 64 - 3 special tokens - 16 overlap = 45; questions get at most 45 // 2 = 22 tokens
    question_ids = tokenizer(question, add_special_tokens=False)["input_ids"][:22]
    for ids, token_types in zip(features["input_ids"], features["token_type_ids"]):
        assert ids[1:23] == question_ids and ids[23] == tokenizer.sep_token_id
        assert sum(token_types) > 16  # every window holds more context than the overlap
    context_tokens = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    assert len(features) == 1 + max(0, -(-(context_tokens - 39) // 23))  # 39 context per window, advancing 23
