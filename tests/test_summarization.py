"""Summarization: ROUGE against hand-computed values, JSONL loaders, carving, seq2seq batches, ROUGE evaluator."""

from __future__ import annotations

import json

import pytest
import torch

from dcft_lab.data.summarization import (
    Seq2SeqDataModule,
    corpus_rouge,
    generation_settings,
    load_summarization_split,
    rouge_f1,
    sentence_splitter,
    split_sentences,
)
from dcft_lab.tiny_tokenizers import tiny_bart_tokenizer
from helpers import make_datamodule, task_and_data

torch.set_num_threads(1)


def tiny_bart(tokenizer):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
    )
    return BartForConditionalGeneration(config).eval()


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def toy_rows(n, tag):
    return [{"document": f"Document {tag} {i} says the council approved plan number {i}. It was late.",
             "summary": f"Council approves plan {i}.", "id": f"{tag}{i}"} for i in range(n)]


# ------------------------------------------------------------------------------------------------------ ROUGE
def test_rouge_hand_computed_single_sentence():
    scores = rouge_f1("the cat sat on the mat", "the cat is on the mat")
    # unigrams: 5 of 6 match both ways -> 5/6; bigrams: the-cat, on-the, the-mat = 3 of 5 -> 3/5;
    # LCS "the cat on the mat" = 5 -> 5/6
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)
    assert scores["rougeLsum"] == pytest.approx(5 / 6)


def test_rouge_lsum_uses_sentence_split_and_stemming():
    scores = rouge_f1("the cat sat. the dog ran.", "the dog ran. the cat sat.")
    # whole-text LCS of "the cat sat the dog ran" vs "the dog ran the cat sat" is 3 of 6 -> 1/2;
    # per-sentence union LCS matches every reference sentence fully -> 1; bigrams 4 of 5 shared
    assert scores["rougeL"] == pytest.approx(0.5)
    assert scores["rougeLsum"] == pytest.approx(1.0)
    assert scores["rouge2"] == pytest.approx(0.8)
    assert rouge_f1("cats running", "cat run")["rouge1"] == pytest.approx(1.0)  # Porter stemmer on


def test_sentence_split_and_corpus_mean():
    assert sentence_splitter() in ("nltk_punkt", "regex")
    assert split_sentences(" Hello there. How are you? Fine! ") == ["Hello there.", "How are you?", "Fine!"]
    scores = corpus_rouge(["the cat sat on the mat", "a b"], ["the cat is on the mat", "a b"])
    assert scores["rouge1"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    with pytest.raises(ValueError, match="equally many"):
        corpus_rouge(["x"], [])


# ---------------------------------------------------------------------------------------------- loaders
@pytest.mark.slow  # the real data
def test_real_xsum_sample_loads_as_validation_and_test(shared_data):
    validation = load_summarization_split("xsum", "validation", shared_data, source="local")
    assert len(validation) == 1000
    assert validation.column_names == ["document", "summary"]
    assert validation[0]["summary"] == ("Proposals for an indoor water park and a hotel at West Midland Safari Park "
                                        "have been approved by councillors.")
    test = load_summarization_split("xsum", "test", shared_data, source="auto")
    assert test["summary"][-1] == validation["summary"][-1]
    if not (shared_data / "xsum").is_dir():
        with pytest.raises(FileNotFoundError, match="xsum/train.jsonl"):
            load_summarization_split("xsum", "train", shared_data, source="local")


def test_local_jsonl_layout_and_errors(tmp_path):
    write_jsonl(tmp_path / "cnn_dailymail" / "validation.jsonl", toy_rows(3, "v"))
    rows = load_summarization_split("cnn_dailymail", "validation", tmp_path)
    assert rows["summary"] == ["Council approves plan 0.", "Council approves plan 1.", "Council approves plan 2."]
    bad = tmp_path / "cnn_dailymail" / "test.jsonl"
    bad.write_text('{"document": "a", "summary": "b"}\n{"document": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"test.jsonl:2: expected an object with string fields"):
        load_summarization_split("cnn_dailymail", "test", tmp_path)
    bad.write_text('{"document": "a", "summary": "b"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"test.jsonl:2: not valid JSON"):
        load_summarization_split("cnn_dailymail", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="cnn_dailymail/train.jsonl"):
        load_summarization_split("cnn_dailymail", "train", tmp_path, source="local")
    with pytest.raises(ValueError, match="'gigaword'"):
        load_summarization_split("gigaword", "train", tmp_path)
    with pytest.raises(ValueError, match="unknown source 'web'; expected one of: auto, local, hub"):
        load_summarization_split("cnn_dailymail", "validation", tmp_path, source="web")


def test_missing_data_root_for_local_source(monkeypatch):
    monkeypatch.delenv("DCFT_LAB_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"no summarization data root given .*expected <data_root>/xsum/"):
        load_summarization_split("xsum", "validation", None, source="local")


@pytest.mark.slow  # the real data
def test_carving_from_real_xsum_sample_is_disjoint_and_recorded(shared_data):
    tokenizer = tiny_bart_tokenizer()
    module = make_datamodule(Seq2SeqDataModule, "xsum", tokenizer, data_root=shared_data, train_from_eval=100, eval_limit=50,
                               max_source_length=32, max_target_length=16)
    module.setup("fit")
    info = module.data_info()
    assert (info["train_source"], info["n_train"], info["n_eval"]) == ("carved_from_validation", 100, 50)
    assert info["files"][0].endswith("xsum_test_1000.jsonl")
    assert not set(module.train_examples["document"]) & set(module.eval_examples["document"])
    again = make_datamodule(Seq2SeqDataModule, "xsum", tokenizer, data_root=shared_data, train_from_eval=100, eval_limit=50, seed=7)
    again.setup("fit")
    assert again.train_examples["summary"] == module.train_examples["summary"]  # split_seed, not seed, decides


def test_missing_train_file_asks_for_carving(tmp_path):
    write_jsonl(tmp_path / "xsum_test_sample" / "xsum_test_1000.jsonl", toy_rows(5, "t"))
    module = make_datamodule(Seq2SeqDataModule, "xsum", tiny_bart_tokenizer(), data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="train.jsonl.*train_from_eval"):
        module.setup("fit")


# -------------------------------------------------------------------------------------------- batches
def test_batches_mask_label_padding_and_keep_references(tmp_path):
    tokenizer = tiny_bart_tokenizer()
    write_jsonl(tmp_path / "cnn_dailymail" / "train.jsonl", toy_rows(4, "a"))
    rows = toy_rows(3, "v")
    rows[1]["summary"] = "A much longer reference summary that has many more tokens than the others."
    write_jsonl(tmp_path / "cnn_dailymail" / "validation.jsonl", rows)
    module = make_datamodule(Seq2SeqDataModule, "cnn_dailymail", tokenizer, data_root=tmp_path, eval_batch_size=3,
                               max_source_length=40, max_target_length=64)
    module.setup("fit")
    assert module.data_info()["train_source"] == "train_file"
    batch = next(iter(module.val_dataloader()[0]))
    assert batch["meta"]["references"] == [row["summary"] for row in rows]
    for i, row in enumerate(rows):
        expected = tokenizer(text_target=row["summary"])["input_ids"]
        labels = batch["labels"][i].tolist()
        assert labels[: len(expected)] == expected
        assert labels[len(expected):] == [-100] * (len(labels) - len(expected))
    assert set(next(iter(module.train_dataloader()))) == {"input_ids", "attention_mask", "labels"}


# ------------------------------------------------------------------------------------------------ evaluator
class OracleGenerator(torch.nn.Module):
    """generate() returns the tokenized reference of each input (looked up by its input ids)."""

    def __init__(self, tokenizer, dataset):
        super().__init__()
        self.targets = {tuple(ids): tokenizer(text_target=ref)["input_ids"]
                        for ids, ref in zip(dataset["input_ids"], dataset["references"])}
        self.pad = tokenizer.pad_token_id
        self.calls = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append(kwargs)
        outputs = [self.targets[tuple(row[mask.bool()].tolist())] for row, mask in zip(input_ids, attention_mask)]
        width = max(map(len, outputs))
        return torch.tensor([ids + [self.pad] * (width - len(ids)) for ids in outputs])


@pytest.mark.parametrize("data", ["hand-made", pytest.param("real", marks=pytest.mark.slow)])
def test_oracle_generation_scores_100_with_configured_settings(data, request):
    # the real XSum sample (slow) or hand-made documents of the same layout (conftest.write_text_data_root)
    root = request.getfixturevalue("shared_data" if data == "real" else "text_data_root")
    tokenizer = tiny_bart_tokenizer()
    module = make_datamodule(Seq2SeqDataModule, "xsum", tokenizer, data_root=root, train_from_eval=10, eval_limit=6,
                               max_source_length=48, eval_batch_size=4, generation={"num_beams": 3})
    module.setup("validate")
    oracle = OracleGenerator(tokenizer, module.eval_features)
    evaluator = module.make_evaluator()
    for batch in module.val_dataloader()[0]:
        evaluator.update(oracle, batch, 0)
    assert evaluator.compute() == {key: pytest.approx(100.0) for key in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    assert oracle.calls[0] == {"num_beams": 3, "max_length": 62, "min_length": 11, "length_penalty": 1.0,
                               "no_repeat_ngram_size": 3, "early_stopping": True}
    assert len(evaluator.predictions) == 6
    evaluator.reset()
    assert evaluator.compute() == {} and evaluator.predictions == []


def test_generation_settings():
    xsum = task_and_data("xsum")[1].generation  # the task's generation settings, as a run composes them
    settings = generation_settings({**xsum, "max_new_tokens": 20})
    assert "max_length" not in settings.generate_kwargs() and settings.generate_kwargs()["max_new_tokens"] == 20
    with pytest.raises(ValueError, match="beam_size"):
        generation_settings({**xsum, "beam_size": 2})
    with pytest.raises(ValueError, match=r"lacks \['early_stopping'\]"):  # no defaults of its own: the YAML's
        generation_settings({k: v for k, v in xsum.items() if k != "early_stopping"})


def test_tiny_bart_and_its_peft_wrapper_generate_through_evaluator(tmp_path):
    from peft import LoraConfig, get_peft_model

    tokenizer = tiny_bart_tokenizer()
    write_jsonl(tmp_path / "xsum" / "validation.jsonl", toy_rows(4, "v"))
    write_jsonl(tmp_path / "xsum" / "train.jsonl", toy_rows(4, "t"))
    module = make_datamodule(Seq2SeqDataModule, "xsum", tokenizer, data_root=tmp_path, eval_batch_size=4,
                               generation={"num_beams": 2, "max_length": 10, "min_length": 0})
    module.setup("fit")
    assert "eval_file_is_test_sample" not in module.data_info()
    model = tiny_bart(tokenizer)
    batch = next(iter(module.val_dataloader()[0]))
    assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "meta"}).loss)
    for candidate in (model, get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                                task_type="SEQ_2_SEQ_LM"))):
        evaluator = module.make_evaluator()
        lengths, generate = [], candidate.generate

        def recording_generate(*args, generate=generate, lengths=lengths, **kwargs):
            out = generate(*args, **kwargs)
            lengths.append(out.shape[-1])
            return out

        candidate.generate = recording_generate
        evaluator.update(candidate, batch, 0)
        assert lengths and max(lengths) <= 10  # generation obeys the task's max_length
        scores = evaluator.compute()
        assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
        assert scores == pytest.approx(corpus_rouge(evaluator.predictions, evaluator.references))
        assert evaluator.references == [row["summary"] for row in toy_rows(4, "v")]


def test_documents_to_summarize_ids_and_labels(tmp_path):
    """read_documents (evaluate file= / split=test): 'summary' and 'id' optional; labeled only when every row has a
    summary; a row without a document is a one-line error naming the line."""
    from dcft_lab.data.summarization import read_documents

    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": 7, "document": "a", "summary": "s"}\n\n{"document": "b", "summary": "t"}\n')
    examples, ids, labeled = read_documents(path)
    assert (examples["document"], examples["summary"], ids, labeled) == (["a", "b"], ["s", "t"], ["7", "1"], True)
    path.write_text('{"document": "a", "summary": "s"}\n{"document": "b"}\n')
    examples, ids, labeled = read_documents(path)
    assert (examples["summary"], ids, labeled) == (["s", ""], ["0", "1"], False)
    path.write_text('{"document": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"^.*docs.jsonl:2: expected an object with a string field 'document'$"):
        read_documents(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match=r"docs.jsonl has no rows; expected JSON lines with 'document'"):
        read_documents(path)
