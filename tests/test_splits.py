"""How a QA / summarization run gets its training and evaluation sets (train file, carved slice, smoke fallback), and
the helpers every loader shares: the data.source choice and seeded subsets."""

import numpy as np
import pytest
from datasets import Dataset

from dcft_lab.data.splits import resolve_source, seeded_subset, subset_indices, train_and_eval_examples


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


# ---- seeded subsets: one helper for GLUE, QA / summarization and dcft_lab.evaluate ------------------------------
# (n, limit, seed) -> indices, as the former GLUE helper (glue._subset_indices) picked them before the QA /
# summarization subset and it became one function: a change here would change which examples GLUE runs train on.
SUBSETS_BEFORE_MERGE = {
    (10, 3, 0): [5, 6, 9],
    (100, 7, 1): [3, 14, 44, 48, 72, 82, 92],
    (408, 5, 0): [109, 125, 207, 257, 343],
    (3668, 12, 6): [684, 1256, 1351, 1372, 1627, 1648, 1894, 1968, 2320, 2409, 3463, 3619],
    (20, 4, 2): [2, 4, 5, 14],
    (40, 12, 1): [1, 4, 9, 11, 13, 15, 16, 23, 28, 30, 33, 34],
}


@pytest.mark.parametrize("case", sorted(SUBSETS_BEFORE_MERGE))
def test_subset_indices_pick_what_glue_picked_before(case):
    n, limit, seed = case
    indices = subset_indices(n, limit, seed)
    assert indices.dtype == np.int64  # GLUE records sha1(indices.tobytes()) in the run record
    assert indices.tolist() == SUBSETS_BEFORE_MERGE[case]
    rows = Dataset.from_dict({"row": list(range(n))})
    assert seeded_subset(rows, limit, seed)["row"] == SUBSETS_BEFORE_MERGE[case]


def test_subset_keeps_everything_without_a_binding_limit():
    rows = Dataset.from_dict({"row": list(range(5))})
    for limit in (None, 5, 9):
        assert subset_indices(5, limit, 0) is None
        assert seeded_subset(rows, limit, 0) is rows
    with pytest.raises(ValueError, match="limit must be a positive number"):
        subset_indices(5, 0, 0)


def test_resolve_source(tmp_path):
    present = lambda root: (root / "here").is_dir()
    assert resolve_source("hub", tmp_path, present) == "hub"
    assert resolve_source("auto", tmp_path, present) == "hub"
    assert resolve_source("auto", None, present) == "hub"
    (tmp_path / "here").mkdir()
    assert resolve_source("auto", tmp_path, present) == "local"
    assert resolve_source("local", tmp_path, lambda root: False) == "local"  # the loader then names the missing file
    with pytest.raises(FileNotFoundError, match=r"no SQuAD data root given .*; expected <data_root>/squad"):
        resolve_source("local", None, present, "SQuAD", "<data_root>/squad")
    with pytest.raises(ValueError, match="unknown source 'disk'; expected one of: auto, local, hub"):
        resolve_source("disk", tmp_path, present)
