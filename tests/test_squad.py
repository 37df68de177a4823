"""SQuAD: official EM/F1, loaders, carving, preprocessing windows, post-processing, evaluator, data module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from conftest import write_text_data_root
from dcft_lab.data.splits import carve_train_from_eval
from dcft_lab.data.squad import (
    SquadDataModule,
    build_features,
    exact_match_score,
    f1_score,
    load_squad_examples,
    normalize_answer,
    postprocess_qa_predictions,
    read_squad_json,
    squad_em_f1,
)
from helpers import make_datamodule

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bert_tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(str(minilm_path))


def write_squad_json(root, version, split, articles):
    """articles: [(title, [(context, [(qid, question, [(answer text, start)] or None for impossible)])])]."""
    folder, name = {"v1": ("squad_v1.1", "v1.1"), "v2": ("squad_v2.0", "v2.0")}[version]
    data = []
    for title, paragraphs in articles:
        paras = []
        for context, qas in paragraphs:
            entries = []
            for qid, question, answers in qas:
                entry = {"id": qid, "question": question,
                         "answers": [{"text": t, "answer_start": s} for t, s in (answers or [])]}
                if version == "v2":
                    entry["is_impossible"] = answers is None
                entries.append(entry)
            paras.append({"context": context, "qas": entries})
        data.append({"title": title, "paragraphs": paras})
    path = root / folder / f"{'train' if split == 'train' else 'dev'}-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": name, "data": data}), encoding="utf-8")
    return path


def tiny_articles(n_articles=3, impossible=False):
    articles = []
    for a in range(n_articles):
        context = f"Article {a} is about the Denver Broncos. They won the game in {2000 + a} at the stadium."
        qas = [(f"q{a}a", "Who won the game?", [("Denver Broncos", context.index("Denver Broncos"))]),
               (f"q{a}b", " When was the game won?", [(str(2000 + a), context.index(str(2000 + a)))])]
        if impossible:
            qas.append((f"q{a}c", "Who lost the final?", None))
        articles.append((f"Title_{a}", [(context, qas)]))
    return articles


# ---------------------------------------------------------------------------------------------- EM / F1
def test_normalize_answer_matches_official_rules():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a day") == "apple day"
    assert normalize_answer("Theory of a thing") == "theory of thing"  # "the" inside a word stays
    assert normalize_answer("  ") == ""


def test_em_f1_hand_computed():
    assert exact_match_score("the Denver Broncos.", "Denver Broncos") == 1.0
    # pred "denver" vs gold "denver broncos": P=1, R=1/2 -> F1 = 2/3
    assert f1_score("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    # pred "broncos won" vs gold "denver broncos": P=1/2, R=1/2 -> 1/2
    assert f1_score("Broncos won", "the Denver Broncos") == pytest.approx(0.5)
    scores = squad_em_f1(
        {"a": "Denver", "b": "Carolina Panthers", "c": "nothing"},
        {"a": ["Denver Broncos", "Broncos"], "b": ["Carolina Panthers"], "c": ["Levi's Stadium"], "d": ["x"]},
    )
    # a: EM 0, F1 max(2/3, 0) ; b: 1, 1 ; c: 0, 0 ; d: missing prediction -> 0, 0
    assert scores["exact_match"] == pytest.approx(100 * 1 / 4)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1) / 4)


def test_unanswerable_gold_scores_empty_prediction():
    scores = squad_em_f1({"u1": "", "u2": "Denver", "u3": ""}, {"u1": [], "u2": [], "u3": ["a"]})
    # u1: "" vs [""] -> 1; u2: "denver" vs [""] -> 0; u3: gold "a" normalizes to "" -> unanswerable -> 1
    assert scores == {"exact_match": pytest.approx(200 / 3), "f1": pytest.approx(200 / 3)}


def test_em_f1_agree_with_torchmetrics_on_answerable_questions():
    from torchmetrics.functional.text import squad

    preds = {"a": "the Broncos", "b": "Levi's Stadium in Santa Clara", "c": "1/2 of it", "d": "Panthers"}
    golds = {"a": ["Denver Broncos"], "b": ["Levi's Stadium", "Santa Clara, California"], "c": ["1/2"], "d": ["Cam"]}
    reference = squad(
        [{"prediction_text": p, "id": k} for k, p in preds.items()],
        [{"answers": {"answer_start": [0] * len(g), "text": g}, "id": k} for k, g in golds.items()],
    )
    ours = squad_em_f1(preds, golds)
    assert ours["exact_match"] == pytest.approx(float(reference["exact_match"]))
    assert ours["f1"] == pytest.approx(float(reference["f1"]))


# ---------------------------------------------------------------------------------------------- loaders
@pytest.mark.slow  # the real data
def test_real_dev_v11_loads_through_local_loader(shared_data):
    dev = load_squad_examples("v1", "validation", shared_data, source="local")
    assert len(dev) == 10570
    assert set(dev.column_names) == {"id", "title", "context", "question", "answers"}
    first = dev[0]
    assert first["id"] == "56be4db0acb8001400a502ec"
    assert first["title"] == "Super_Bowl_50"
    assert first["question"] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first["answers"] == {"text": ["Denver Broncos"] * 3, "answer_start": [177] * 3}
    assert first["context"][177:177 + len("Denver Broncos")] == "Denver Broncos"
    assert len(set(dev["title"])) == 48


@pytest.mark.slow  # the real data
def test_carving_real_dev_is_disjoint_by_title_and_seeded(shared_data):
    dev = load_squad_examples("v1", "validation", shared_data, source="local")
    train, evaluation, info = carve_train_from_eval(dev, 500, seed=3, group_column="title")
    assert len(train) == info["n_train"] == 500
    assert len(evaluation) == info["n_eval"]
    assert info["train_source"] == "carved_from_validation"
    assert not set(train["title"]) & set(evaluation["title"])
    assert not set(train["context"]) & set(evaluation["context"])
    assert len(train) + len(evaluation) + info["n_dropped"] == len(dev)
    assert len(set(train["id"]) | set(evaluation["id"])) == len(train) + len(evaluation)
    again, _, _ = carve_train_from_eval(dev, 500, seed=3, group_column="title")
    other, _, _ = carve_train_from_eval(dev, 500, seed=4, group_column="title")
    assert again["id"] == train["id"]
    assert other["id"] != train["id"]


def test_local_v2_json_marks_impossible_questions(tmp_path):
    path = write_squad_json(tmp_path, "v2", "validation", tiny_articles(1, impossible=True))
    rows = read_squad_json(path)
    by_id = {row["id"]: row for row in rows}
    assert by_id["q0c"]["answers"] == {"text": [], "answer_start": []}
    assert by_id["q0a"]["answers"]["text"] == ["Denver Broncos"]


def test_questions_without_answers_read_as_unlabeled(tmp_path):
    """read_squad_questions: a file of questions to answer (no 'answers') is unlabeled with empty answers; a dev file
    reads as read_squad_json reads it, labeled; a malformed one is a one-line error naming the file."""
    from dcft_lab.data.squad import read_squad_questions

    path = write_squad_json(tmp_path, "v2", "validation", tiny_articles(2, impossible=True))
    examples, labeled = read_squad_questions(path)
    assert labeled is True and examples.to_dict() == read_squad_json(path).to_dict()
    raw = json.loads(path.read_text())
    del raw["data"][1]["paragraphs"][0]["qas"][0]["answers"]
    path.write_text(json.dumps(raw), encoding="utf-8")
    examples, labeled = read_squad_questions(path)
    assert labeled is False
    assert examples["id"] == [qa["id"] for a in raw["data"] for par in a["paragraphs"] for qa in par["qas"]]
    assert all(a == {"text": [], "answer_start": []} for a in examples["answers"])
    with pytest.raises(ValueError, match=r"malformed SQuAD JSON \(KeyError: 'answers'\)"):
        read_squad_json(path)  # the train / dev reader needs the answers
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x"}]}]}]}))
    with pytest.raises(ValueError, match=r"^.*\.json: malformed SQuAD JSON \(KeyError: 'question'\); expected official") \
            as caught:
        read_squad_questions(path)
    assert "\n" not in str(caught.value)


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="dev-v1.1.json"):
        load_squad_examples("v1", "validation", tmp_path, source="local")
    bad = tmp_path / "squad_v1.1" / "dev-v1.1.json"
    bad.parent.mkdir()
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_squad_examples("v1", "validation", tmp_path, source="local")
    bad.write_text(json.dumps({"data": [{"title": "t"}]}), encoding="utf-8")
    with pytest.raises(ValueError, match="malformed SQuAD JSON.*paragraphs"):
        load_squad_examples("v1", "validation", tmp_path, source="local")
    with pytest.raises(ValueError, match="version 'v3'"):
        load_squad_examples("v3", "validation", tmp_path)


def test_source_choice_and_missing_data_root(tmp_path, monkeypatch, bert_tokenizer):
    monkeypatch.delenv("DCFT_LAB_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"no SQuAD data root given .*expected <data_root>/squad_v1.1/"
                                                r"\{train-v1.1.json,dev-v1.1.json\}"):
        load_squad_examples("v1", "validation", None, source="local")
    with pytest.raises(ValueError, match="data.source='disk'; expected one of auto, local, hub"):
        make_datamodule(SquadDataModule, "squad_v1", bert_tokenizer, data_root=tmp_path, source="disk")
    write_squad_json(tmp_path, "v1", "validation", tiny_articles(3))
    dm = make_datamodule(SquadDataModule, "squad_v1", bert_tokenizer, data_root=str(tmp_path), source="auto", train_from_eval=2)
    assert dm.data_root == tmp_path and dm.resolved_source() == "local"  # the data root is resolved once, up front
    assert dm.data_info()["source"] == "local"


def test_missing_train_file_asks_for_carving(tmp_path, bert_tokenizer):
    write_squad_json(tmp_path, "v1", "validation", tiny_articles(3))
    module = make_datamodule(SquadDataModule, "squad_v1", bert_tokenizer, data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="train-v1.1.json.*train_from_eval"):
        module.setup("fit")


def test_full_splits_are_used_unless_carving_is_requested(tmp_path, bert_tokenizer):
    write_squad_json(tmp_path, "v1", "validation", tiny_articles(3))
    write_squad_json(tmp_path, "v1", "train", tiny_articles(2))
    module = make_datamodule(SquadDataModule, "squad_v1", bert_tokenizer, data_root=tmp_path)
    module.setup("fit")
    assert module.data_info()["train_source"] == "train_file"
    assert (module.data_info()["n_train"], module.data_info()["n_eval"]) == (4, 6)
    carved = make_datamodule(SquadDataModule, "squad_v1", bert_tokenizer, data_root=tmp_path, train_from_eval=2)
    carved.setup("fit")
    info = carved.data_info()
    assert (info["train_source"], info["n_train"], info["n_eval"]) == ("carved_from_validation", 2, 4)


def test_slow_tokenizer_is_rejected():
    class Slow:
        is_fast = False
        padding_side = "right"

    with pytest.raises(ValueError, match="not a fast tokenizer"):
        make_datamodule(SquadDataModule, "squad_v1", Slow())


# ---------------------------------------------------------------------------- windows and post-processing
FILLER = "Some filler words come first in this long paragraph. "
ANSWER_CONTEXT = FILLER * 3 + "The title was won by the Denver Broncos that year. " + FILLER * 3


def _windows_with_answer(features, context, answer):
    start_char = context.index(answer)
    end_char = start_char + len(answer)
    hits = []
    for index, offsets in enumerate(features["offset_mapping"]):
        spans = [o for o in offsets if o is not None]
        if spans[0][0] <= start_char and spans[-1][1] >= end_char:
            hits.append(index)
    return hits


@pytest.fixture(scope="module")
def stride_example():
    from datasets import Dataset

    from dcft_lab.data.squad import SQUAD_FEATURES

    answer_start = ANSWER_CONTEXT.index("Denver Broncos")
    return Dataset.from_dict(
        {"id": ["x"], "title": ["t"], "context": [ANSWER_CONTEXT], "question": ["Who won?"],
         "answers": [{"text": ["Denver Broncos"], "answer_start": [answer_start]}]},
        features=SQUAD_FEATURES,
    )


def test_train_windows_point_at_answer_or_cls(stride_example, bert_tokenizer):
    train = build_features(stride_example, bert_tokenizer, train=True, max_length=24, doc_stride=12)
    evaluation = build_features(stride_example, bert_tokenizer, train=False, max_length=24, doc_stride=12)
    assert len(train) == len(evaluation) > 4
    hits = _windows_with_answer(evaluation, ANSWER_CONTEXT, "Denver Broncos")
    assert len(hits) >= 2  # the answer spans two overlapping windows
    for index, row in enumerate(train):
        start, end = row["start_positions"], row["end_positions"]
        if index in hits:
            assert bert_tokenizer.decode(row["input_ids"][start:end + 1]) == "denver broncos"
        else:
            assert (start, end) == (0, 0)  # [CLS]
            assert row["input_ids"][0] == bert_tokenizer.cls_token_id


def test_postprocess_picks_best_window(stride_example, bert_tokenizer):
    features = build_features(stride_example, bert_tokenizer, train=False, max_length=24, doc_stride=12)
    window_a, window_b = _windows_with_answer(features, ANSWER_CONTEXT, "Denver Broncos")[:2]
    answer_char = ANSWER_CONTEXT.index("Denver Broncos")
    distractor_char = ANSWER_CONTEXT.index("title")

    def token_at(window, char):
        return next(k for k, o in enumerate(features[window]["offset_mapping"]) if o is not None and o[0] == char)

    def logits(answer_b_score):
        starts = [np.full(len(o), -5.0) for o in features["offset_mapping"]]
        ends = [np.full(len(o), -5.0) for o in features["offset_mapping"]]
        a_start, a_end = token_at(window_a, answer_char), token_at(window_a, answer_char + len("Denver "))
        starts[window_a][a_start], ends[window_a][a_end] = 2.0, 2.0  # answer in window A: 4
        d = token_at(window_a, distractor_char)
        starts[window_a][d], ends[window_a][d] = 3.0, 3.0  # distractor "title" in window A: 6
        b_start, b_end = token_at(window_b, answer_char), token_at(window_b, answer_char + len("Denver "))
        starts[window_b][b_start], ends[window_b][b_end] = answer_b_score, answer_b_score
        return starts, ends

    starts, ends = logits(answer_b_score=5.0)  # answer in window B: 10 beats the distractor
    assert postprocess_qa_predictions(stride_example, features, starts, ends) == {"x": "Denver Broncos"}
    starts, ends = logits(answer_b_score=1.0)  # now the distractor (6) is the best span
    assert postprocess_qa_predictions(stride_example, features, starts, ends) == {"x": "title"}
    # a 2-token answer is excluded by max_answer_length=1; the 1-token distractor remains
    starts, ends = logits(answer_b_score=5.0)
    assert postprocess_qa_predictions(stride_example, features, starts, ends, max_answer_length=1) == {"x": "title"}


def test_postprocess_v2_null_answer(bert_tokenizer):
    from datasets import Dataset

    from dcft_lab.data.squad import SQUAD_FEATURES

    examples = Dataset.from_dict(
        {"id": ["u"], "title": ["t"], "context": ["The Denver Broncos won."], "question": ["Who lost?"],
         "answers": [{"text": [], "answer_start": []}]},
        features=SQUAD_FEATURES,
    )
    features = build_features(examples, bert_tokenizer, train=False, max_length=32, doc_stride=8)
    assert len(features) == 1
    offsets = features[0]["offset_mapping"]
    span = next(k for k, o in enumerate(offsets) if o is not None and o[0] == 4)  # "denver"
    starts, ends = np.zeros(len(offsets)), np.zeros(len(offsets))
    starts[0], ends[0] = 5.0, 5.0  # null score 10
    starts[span], ends[span] = 3.0, 3.0  # best span 6
    assert postprocess_qa_predictions(examples, features, [starts], [ends], version_2=True) == {"u": ""}
    assert postprocess_qa_predictions(examples, features, [starts], [ends], version_2=False) == {"u": "Denver"}
    assert postprocess_qa_predictions(examples, features, [starts], [ends], version_2=True,
                                      null_score_diff_threshold=5.0) == {"u": "Denver"}
    predictions = postprocess_qa_predictions(examples, features, [starts], [ends], version_2=True)
    assert squad_em_f1(predictions, {"u": examples[0]["answers"]["text"]}) == {"exact_match": 100.0, "f1": 100.0}


# ------------------------------------------------------------------------------- evaluator + data module
class OracleQA(torch.nn.Module):
    """Puts the top logits on the gold span of each window (found from train-style features of the same text)."""

    def __init__(self, train_features):
        super().__init__()
        self.gold = {tuple(r["input_ids"]): (r["start_positions"], r["end_positions"]) for r in train_features}

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        starts, ends = torch.zeros(input_ids.shape), torch.zeros(input_ids.shape)
        for i in range(len(input_ids)):
            start, end = self.gold[tuple(input_ids[i][attention_mask[i].bool()].tolist())]
            starts[i, start], ends[i, end] = 10.0, 10.0
        return QuestionAnsweringModelOutput(start_logits=starts, end_logits=ends)


@pytest.mark.parametrize("data", ["hand-made", pytest.param("real", marks=pytest.mark.slow)])
def test_oracle_logits_score_100_on_a_dev_slice(data, bert_tokenizer, request, tmp_path):
    # the real dev file (slow) or hand-made articles of the same layout (conftest.write_text_data_root)
    root = request.getfixturevalue("shared_data") if data == "real" else write_text_data_root(tmp_path, n_articles=30)
    module = make_datamodule(SquadDataModule, "squad_v1", bert_tokenizer, data_root=root, train_from_eval=50, eval_limit=40,
                             max_length=128, doc_stride=48, eval_batch_size=16)
    module.setup("validate")
    assert len(module.eval_features) > 40  # some contexts need several windows
    oracle = OracleQA(build_features(module.eval_examples, bert_tokenizer, True, 128, 48))
    evaluator = module.make_evaluator()
    batches = list(module.val_dataloader()[0])
    assert set(batches[0]["meta"]) == {"example_id", "offset_mapping", "feature_index"}
    for batch in batches:
        evaluator.update(oracle, batch, 0)
    evaluator.update(oracle, batches[0], 0)  # a repeated batch (DDP sampler padding) must not count twice
    assert evaluator.compute() == {"exact_match": 100.0, "f1": 100.0}
    assert len(evaluator.predictions) == 40
    evaluator.reset()
    assert evaluator.compute() == {}


def test_v2_module_with_tiny_deberta_runs_end_to_end(tmp_path):
    from transformers import DebertaV2Config, DebertaV2ForQuestionAnswering

    from dcft_lab.tiny_tokenizers import tiny_deberta_tokenizer

    tokenizer = tiny_deberta_tokenizer()
    write_squad_json(tmp_path, "v2", "validation", tiny_articles(4, impossible=True))
    module = make_datamodule(SquadDataModule, "squad_v2", tokenizer, data_root=tmp_path, train_from_eval=3, max_length=32,
                             doc_stride=8, train_batch_size=4, eval_batch_size=4)
    module.setup("fit")
    assert module.eval_names == ("validation",)
    torch.manual_seed(0)
    config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64, type_vocab_size=0,
                             pad_token_id=tokenizer.pad_token_id)
    model = DebertaV2ForQuestionAnswering(config).eval()
    train_batch = next(iter(module.train_dataloader()))
    assert torch.isfinite(model(**train_batch).loss)
    evaluator = module.make_evaluator()
    for batch in module.val_dataloader()[0]:
        evaluator.update(model, batch, 0)
    scores = evaluator.compute()
    assert set(scores) == {"exact_match", "f1"}
    assert all(0.0 <= value <= 100.0 for value in scores.values())
    assert set(evaluator.predictions) == set(module.eval_examples["id"])
    assert len(module.eval_examples) == 9  # 3 articles x 3 questions; the carved article is not evaluated
