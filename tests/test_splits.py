"""How a QA / summarization run gets its training and evaluation sets (train file, carved slice, smoke fallback)."""

import pytest
from datasets import Dataset

from dcft_lab.data.splits import train_and_eval_examples


def _eval_set(n=20):
    return Dataset.from_dict({"id": [f"e{i}" for i in range(n)], "title": [f"t{i // 4}" for i in range(n)]})


def _split(tmp_path, train_file_exists, **overrides):
    train_file = tmp_path / "train.json"
    if train_file_exists:
        train_file.write_text("{}")
    loaded = Dataset.from_dict({"id": [f"tr{i}" for i in range(10)], "title": ["x"] * 10})
    kwargs = dict(source="local", eval_file=tmp_path / "dev.json", train_file=train_file, train_from_eval=None,
                  train_limit=None, eval_limit=None, fallback_train_cap=None, fallback_eval_limit=None, split_seed=0)
    kwargs.update(overrides)
    return train_and_eval_examples(_eval_set(), lambda: loaded, **kwargs)


def test_train_file_is_used_when_present(tmp_path):
    train, evaluation, info = _split(tmp_path, True, train_limit=4)
    assert len(train) == 4 and all(i.startswith("tr") for i in train["id"])
    assert len(evaluation) == 20
    assert info["train_source"] == "train_file" and info["files"] == [str(tmp_path / "train.json"),
                                                                      str(tmp_path / "dev.json")]
    assert (info["n_train"], info["n_eval"]) == (4, 20)


def test_missing_train_file_without_fallback_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        _split(tmp_path, False, what="questions")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "train.json") in message and "train_from_eval=N" in message
    assert "questions" in message


def test_missing_train_file_with_fallback_carves_a_disjoint_recorded_slice(tmp_path):
    train, evaluation, info = _split(tmp_path, False, fallback_train_cap=100, fallback_eval_limit=5)
    assert len(train) == 2  # 10% of 20 rows
    assert len(evaluation) == 5 and not set(train["id"]) & set(evaluation["id"])
    assert info["fallback"]["train_from_eval"] == 2 and info["train_source"] == "carved_from_validation"


def test_explicit_carve_keeps_groups_on_one_side(tmp_path):
    train, evaluation, info = _split(tmp_path, False, train_from_eval=6, group_column="title")
    assert len(train) == 6 and "fallback" not in info
    # groups of 4 rows: two whole groups are drawn, 6 of their rows train, the other 2 are dropped from both sides
    assert not set(train["title"]) & set(evaluation["title"])
    assert len(evaluation) == 12 and info["n_dropped"] == 2
