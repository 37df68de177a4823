"""GLUE task registry, TSV loaders (real files and tiny synthetic ones), error paths and the data module."""

from __future__ import annotations

import hashlib
from collections import Counter

import datasets
import numpy as np
import pytest
import torch

from dcft_lab.data import glue
from dcft_lab.data.glue import GlueDataModule, load_glue_split
from dcft_lab.data.tasks import GLUE_TASKS, TASKS, get_task
from helpers import make_datamodule

torch.set_num_threads(1)

# Label ids in the order of the HF hub "nyu-mll/glue" ClassLabel features.
HUB_LABELS = {
    "cola": ["unacceptable", "acceptable"], "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"], "qqp": ["not_duplicate", "duplicate"],
    "mnli": ["entailment", "neutral", "contradiction"], "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
}
PAIR_TASKS = {"mrpc", "qqp", "stsb", "mnli", "qnli", "rte"}


# ---- registry ----------------------------------------------------------------------------------
def test_registry_has_all_tasks_with_paper_metrics():
    paper_tasks = {*GLUE_TASKS, "squad_v1", "squad_v2", "xsum", "cnn_dailymail"}
    # tasks beyond the paper's, each named here on purpose: sft (decoder-only prompt -> response, perplexity)
    non_paper = {"sft": ("causal_lm", "perplexity", ("loss", "perplexity"), False)}
    assert set(TASKS) == paper_tasks | set(non_paper) and not paper_tasks & set(non_paper)
    for name, (family, main, metrics, greater_is_better) in non_paper.items():
        spec = get_task(name)
        assert (spec.family, spec.main_metric, spec.metrics, spec.greater_is_better) == \
            (family, main, metrics, greater_is_better), name
    # the paper's tasks: encoder families only, and every main metric is "higher is better"
    assert all(get_task(name).family != "causal_lm" and get_task(name).greater_is_better for name in paper_tasks)
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"}
    expected = {
        "cola": ("matthews", ("matthews",)), "sst2": ("accuracy", ("accuracy",)),
        "mrpc": ("accuracy", ("accuracy", "f1")), "qqp": ("accuracy", ("accuracy", "f1")),
        "stsb": ("pearson", ("pearson", "spearman")), "mnli": ("accuracy_m", ("accuracy_m", "accuracy_mm")),
        "qnli": ("accuracy", ("accuracy",)), "rte": ("accuracy", ("accuracy",)),
        "squad_v1": ("f1", ("exact_match", "f1")), "squad_v2": ("f1", ("exact_match", "f1")),
    }
    for name, (main, metrics) in expected.items():
        assert (get_task(name).main_metric, get_task(name).metrics) == (main, metrics), name
    assert get_task("mnli").eval_names == ("validation_matched", "validation_mismatched")
    assert get_task("stsb").family == "regression" and get_task("stsb").num_labels == 1
    assert get_task("xsum").family == "seq2seq" and get_task("xsum").num_labels == 0
    assert "rougeLsum" in get_task("cnn_dailymail").metrics
    for name, labels in HUB_LABELS.items():
        assert list(get_task(name).label_names) == labels and get_task(name).num_labels == len(labels)
    assert {name for name in GLUE_TASKS if get_task(name).is_pair} == PAIR_TASKS


def test_unknown_task_names_choices():
    with pytest.raises(ValueError, match=r"unknown task 'glue_x'; expected one of: cola, .*rte"):
        get_task("glue_x")
    with pytest.raises(ValueError, match="'squad_v1' is not a GLUE task"):
        load_glue_split("squad_v1", "train", "/nonexistent", source="local")


@pytest.mark.slow  # the real data
# ---- real files --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task,n_train,n_dev",
    [("cola", 8551, 1043), ("sst2", 67349, 872), ("mrpc", 3668, 408), ("rte", 2490, 277), ("stsb", 5749, 1500)],
)
def test_real_glue_row_counts(shared_data, task, n_train, n_dev):
    train = load_glue_split(task, "train", shared_data, source="local")
    dev = load_glue_split(task, "validation", shared_data, source="auto")
    assert (len(train), len(dev)) == (n_train, n_dev)
    expected_columns = ["sentence1", "sentence2", "label"] if task in PAIR_TASKS else ["sentence1", "label"]
    assert train.column_names == expected_columns
    assert all(isinstance(s, str) and s for s in dev["sentence1"])


@pytest.mark.slow  # the real data
def test_real_glue_contents(shared_data):
    mrpc_train = load_glue_split("mrpc", "train", shared_data, source="local")
    mrpc_dev = load_glue_split("mrpc", "validation", shared_data, source="local")
    # counts from glue/MRPC/SOURCE.md: train 1=2474 / 0=1194, dev 1=279 / 0=129
    assert Counter(mrpc_train["label"]) == {1: 2474, 0: 1194}
    assert Counter(mrpc_dev["label"]) == {1: 279, 0: 129}
    assert mrpc_train[0]["sentence1"].startswith('Amrozi accused his brother , whom he called " the witness "')
    rte = load_glue_split("rte", "train", shared_data, source="local")
    assert rte[0] == {"sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
                      "sentence2": "Weapons of Mass Destruction Found in Iraq.", "label": 1}  # not_entailment
    assert rte[1]["label"] == 0
    stsb = load_glue_split("stsb", "validation", shared_data, source="local")
    assert stsb[0]["label"] == pytest.approx(5.0) and stsb[1]["label"] == pytest.approx(4.75)
    assert min(stsb["label"]) >= 0.0 and max(stsb["label"]) <= 5.0
    cola = load_glue_split("cola", "train", shared_data, source="local")
    assert cola[0] == {"sentence1": "Our friends won't buy this analysis, let alone the next one we propose.", "label": 1}
    assert set(cola["label"]) == {0, 1}


# ---- synthetic files in every layout -------------------------------------------------------------
@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"])
def test_tiny_tsv_round_trip(glue_tsv_root, task, glue_rows):
    root = glue_tsv_root(task)
    spec = get_task(task)
    files = {"train": "train", "validation": "dev", "validation_matched": "dev_matched",
             "validation_mismatched": "dev_mismatched"}
    for split in spec.splits:
        rows = glue_rows(task, tag=files[split])
        ds = load_glue_split(task, split, root, source="local")
        assert len(ds) == len(rows)
        sst2_pad = " " if task == "sst2" else ""  # SST-2 sentences end in a space, kept as in the hub copy
        assert ds["sentence1"] == [s1 + sst2_pad for s1, _, _ in rows]
        if task in PAIR_TASKS:
            assert ds["sentence2"] == [s2 for _, s2, _ in rows]
        if task == "stsb":
            assert ds["label"] == pytest.approx([float(y) for _, _, y in rows])
        else:
            names = HUB_LABELS[task]
            raw_to_id = {"0": 0, "1": 1} if task in {"cola", "sst2", "mrpc", "qqp"} else {n: i for i, n in enumerate(names)}
            assert ds["label"] == [raw_to_id[y] for _, _, y in rows]


def test_mnli_has_no_plain_validation_split(glue_tsv_root):
    root = glue_tsv_root("mnli")
    with pytest.raises(ValueError, match="unknown split 'validation' for task 'mnli'; expected one of: train, validation_matched"):
        load_glue_split("mnli", "validation", root, source="local")


def test_data_root_from_env(glue_tsv_root, monkeypatch):
    root = glue_tsv_root("rte")
    monkeypatch.setenv("DCFT_LAB_DATA", str(root))
    assert len(load_glue_split("rte", "train", None, source="local")) == 6


# ---- error paths -------------------------------------------------------------------------------
def test_missing_root_folder_file(tmp_path, glue_tsv_root, monkeypatch):
    monkeypatch.delenv("DCFT_LAB_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="no GLUE data root given"):
        load_glue_split("rte", "train", None, source="local")
    with pytest.raises(FileNotFoundError, match=r"data root .*nowhere not found; expected layout <data_root>/glue/RTE/"):
        load_glue_split("rte", "train", tmp_path / "nowhere", source="local")
    root = glue_tsv_root("rte")
    with pytest.raises(FileNotFoundError, match=r"GLUE folder .*glue/QNLI not found"):
        load_glue_split("qnli", "train", root, source="local")
    (root / "glue" / "RTE" / "dev.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"GLUE file .*RTE/dev.tsv not found"):
        load_glue_split("rte", "validation", root, source="local")


def test_per_eval_set_facts_live_on_the_task_spec():
    """Metrics, leaderboard names and test files are one per eval set, checked where a task is declared; the head
    size is num_labels, or 1 for tasks without a label head."""
    from dcft_lab.data.metrics import loader_metric_kinds
    from dcft_lab.data.tasks import TaskSpec

    for spec in TASKS.values():
        kinds = spec.metric_kinds()
        assert len(kinds) == len(spec.eval_names)
        assert sorted(name for per_set in kinds for name in per_set) == sorted(spec.metrics), spec.name
        assert spec.main_metric in spec.headline_metrics and len(spec.headline_metrics) == len(spec.eval_names)
        assert spec.head_size == max(spec.num_labels, 1) >= 1
        if spec.glue is not None:
            assert loader_metric_kinds(spec) == kinds
            assert len(spec.board_names) == len(spec.glue.test_files) == len(spec.eval_names), spec.name
    with pytest.raises(ValueError, match=r"task 'two' has eval sets \('a', 'b'\) but 0 per-set metric assignments"):
        TaskSpec("two", "classification", 2, "accuracy", ("accuracy",), eval_names=("a", "b"), label_names=("x", "y"))
    with pytest.raises(ValueError, match=r"eval_metrics report \['accuracy', 'accuracy'\]; expected each of"):
        TaskSpec("two", "classification", 2, "accuracy", ("accuracy",), eval_names=("a", "b"), label_names=("x", "y"),
                 eval_metrics=((("accuracy", "accuracy"),), (("accuracy", "accuracy"),)))
    with pytest.raises(ValueError, match=r"board_names \('A',\); expected one per eval set"):
        TaskSpec("two", "classification", 2, "acc_a", ("acc_a", "acc_b"), eval_names=("a", "b"),
                 label_names=("x", "y"), eval_metrics=((("acc_a", "accuracy"),), (("acc_b", "accuracy"),)),
                 board_names=("A",))


def test_wrong_column_count_names_file_and_line(glue_tsv_root):
    root = glue_tsv_root("rte", raw={"train.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta b\tentailment\n"})
    with pytest.raises(ValueError, match=r"RTE/train.tsv:3: got 3 columns, expected 4"):
        load_glue_split("rte", "train", root, source="local")
    root = glue_tsv_root("cola", raw={"train.tsv": "gj04\t1\t\tfine\ngj04\t1\tno sentence\n"})
    with pytest.raises(ValueError, match=r"CoLA/train.tsv:2: got 3 columns, expected 4"):
        load_glue_split("cola", "train", root, source="local")


def test_unknown_label_and_bad_score(glue_tsv_root):
    root = glue_tsv_root("qnli", rows={"train.tsv": [("q", "s", "entailment"), ("q2", "s2", "contradiction")]})
    with pytest.raises(ValueError, match=r"QNLI/train.tsv:3: label 'contradiction' is not one of the expected labels \['entailment', 'not_entailment'\]"):
        load_glue_split("qnli", "train", root, source="local")
    root = glue_tsv_root("stsb", rows={"train.tsv": [("a", "b", "1.0"), ("c", "d", "high")]})
    with pytest.raises(ValueError, match=r"STS-B/train.tsv:3: score 'high' is not a number"):
        load_glue_split("stsb", "train", root, source="local")


def test_empty_and_header_only_and_bad_header(glue_tsv_root):
    root = glue_tsv_root("sst2", raw={"train.tsv": "", "dev.tsv": "sentence\tlabel\n"})
    with pytest.raises(ValueError, match=r"SST-2/train.tsv is empty"):
        load_glue_split("sst2", "train", root, source="local")
    with pytest.raises(ValueError, match=r"SST-2/dev.tsv has no data rows"):
        load_glue_split("sst2", "validation", root, source="local")
    root = glue_tsv_root("cola", raw={"dev.tsv": ""})
    with pytest.raises(ValueError, match=r"CoLA/dev.tsv has no data rows"):
        load_glue_split("cola", "validation", root, source="local")
    root = glue_tsv_root("qqp", raw={"train.tsv": "id\tq1\tq2\tis_duplicate\n1\ta\tb\t0\n"})
    with pytest.raises(ValueError, match=r"header lacks column\(s\) \['question1', 'question2'\]"):
        load_glue_split("qqp", "train", root, source="local")


def test_one_reader_for_train_dev_test_and_user_files(tmp_path):
    """read_glue_file reads every GLUE-layout TSV of a task: a test file (unlabeled, ids from its index / id column),
    a labeled dev file, CoLA's header-less train file; read_glue_tsv is it with labels required."""
    test = tmp_path / "test.tsv"
    test.write_text('index\tsentence1\tsentence2\n100\ta " quote\tb\n\n101\tc\td\n', encoding="utf-8")
    texts, labels, ids = glue.read_glue_file(test, "rte")
    assert texts == {"sentence1": ['a " quote', "c"], "sentence2": ["b", "d"]} and labels is None
    assert ids == ["100", "101"]
    qqp = tmp_path / "qqp.tsv"
    qqp.write_text("id\tquestion1\tquestion2\n7\tq\tr\n", encoding="utf-8")
    assert glue.read_glue_file(qqp, "qqp")[2] == ["7"]
    dev = tmp_path / "dev.tsv"
    dev.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tnot_entailment\n1\tc\td\tentailment\n")
    texts, labels, ids = glue.read_glue_file(dev, "rte")
    assert labels == [1, 0] and ids == ["0", "1"]
    assert glue.read_glue_tsv(dev, "rte") == {**texts, "label": labels}
    cola = tmp_path / "cola.tsv"
    cola.write_text("gj04\t1\t\tfine .\ngj04\t0\t*\tbad .\n")
    assert glue.read_glue_file(cola, "cola") == ({"sentence1": ["fine .", "bad ."]}, [1, 0], ["0", "1"])
    cola.write_text("index\tsentence\n5\tfine .\n")  # CoLA's test file has a header
    assert glue.read_glue_file(cola, "cola") == ({"sentence1": ["fine ."]}, None, ["5"])


@pytest.mark.parametrize("text, required, message", [
    ("index\tpremise\thypothesis\n0\ta\tb\n", False,
     r"^.*mine.tsv: header lacks column\(s\) \['sentence1', 'sentence2'\] of task 'rte'; got header \['index', "
     r"'premise', 'hypothesis'\]; expected sentence1, sentence2 \(and label when labeled\)$"),
    ("index\tsentence1\tsentence2\n0\ta\tb\n", True,  # a test file where a labeled one is needed
     r"^.*mine.tsv: header lacks column\(s\) \['label'\] of task 'rte'; .*expected sentence1, sentence2, label$"),
    ("index\tsentence1\tsentence2\n0\ta\n", False, r"^.*mine.tsv:2: got 2 columns, expected 3 \(as the header\)$"),
    ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n", False,
     r"^.*mine.tsv:2: label 'yes' is not one of the expected labels \['entailment', 'not_entailment'\] of task 'rte'$"),
    ("\n", False, r"^.*mine.tsv is empty; expected rte rows in the GLUE layout$"),
])
def test_malformed_user_file_is_a_one_line_error(tmp_path, text, required, message):
    path = tmp_path / "mine.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as caught:
        glue.read_glue_file(path, "rte", labels_required=required)
    assert "\n" not in str(caught.value)


def test_bad_source_and_split(glue_tsv_root):
    root = glue_tsv_root("rte")
    with pytest.raises(ValueError, match="unknown source 'disk'; expected one of: auto, local, hub"):
        load_glue_split("rte", "train", root, source="disk")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_glue_split("rte", "test", root, source="local")


# ---- hub path (mocked: the hub is unreachable here) ----------------------------------------------
def _fake_hub(calls):
    def load_dataset(path, name, split):
        calls.append((path, name, split))
        label = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
        return datasets.Dataset.from_dict(
            {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0], "idx": [0, 1]},
            features=datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                        "label": label, "idx": datasets.Value("int32")}),
        )

    return load_dataset


def test_hub_source_renames_columns(monkeypatch, glue_tsv_root, glue_rows):
    calls = []
    monkeypatch.setattr(glue.datasets, "load_dataset", _fake_hub(calls))
    ds = load_glue_split("mnli", "validation_mismatched", None, source="hub")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert ds.column_names == ["sentence1", "sentence2", "label"]
    assert ds[0] == {"sentence1": "p0", "sentence2": "h0", "label": 2}
    # auto: local file present -> no hub call; absent -> hub
    root = glue_tsv_root("mnli", rows={"train.tsv": glue_rows("mnli")})
    assert len(load_glue_split("mnli", "train", root, source="auto")) == 6
    assert len(calls) == 1
    load_glue_split("mnli", "validation_matched", root, source="auto")
    assert calls[-1] == ("nyu-mll/glue", "mnli", "validation_matched")


def test_auto_reports_local_path_when_hub_fails(monkeypatch, glue_tsv_root, glue_rows):
    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable\nmore detail")

    monkeypatch.setattr(glue.datasets, "load_dataset", offline)
    root = glue_tsv_root("rte", rows={"train.tsv": glue_rows("rte")})
    with pytest.raises(FileNotFoundError, match=r"RTE/dev.tsv not found and hub load nyu-mll/glue/rte failed \(hub unreachable[;)]"):
        load_glue_split("rte", "validation", root, source="auto")
    with pytest.raises(ConnectionError):
        load_glue_split("rte", "validation", root, source="hub")


# ---- data module -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


def _module(task, tokenizer, root, cache, **kwargs):
    kwargs = {"source": "local", "train_batch_size": 4, "eval_batch_size": 5, "max_length": 16, **kwargs}
    dm = make_datamodule(GlueDataModule, task, tokenizer, data_root=root, cache_dir=cache, **kwargs)
    dm.setup("fit")
    return dm


def test_datamodule_batches_and_dynamic_padding(glue_tsv_root, tokenizer, tmp_path, glue_rows):
    root = glue_tsv_root("rte")
    dm = _module("rte", tokenizer, root, tmp_path / "cache")
    batch = next(iter(dm.val_dataloader()[0]))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["labels"].dtype == torch.long
    rows = glue_rows("rte", tag="dev")[:5]
    assert batch["labels"].tolist() == [0 if y == "entailment" else 1 for _, _, y in rows]
    lengths = [len(tokenizer(s1, s2, truncation=True, max_length=16)["input_ids"]) for s1, s2, _ in rows]
    assert batch["input_ids"].shape == (5, max(lengths))  # padded to the longest, not to max_length
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert max(lengths) <= 16
    assert len(dm.val_dataloader()) == 1 and dm.eval_names == ("validation",)
    info = dm.data_info()
    assert info["counts"] == {"train": 6, "validation": 6} and info["cache"] == {"train": "miss", "validation": "miss"}
    assert info["files"]["train"] == str((root / "glue" / "RTE" / "train.tsv").resolve())


def test_datamodule_cache_hit_skips_tokenization(glue_tsv_root, tokenizer, tmp_path, monkeypatch):
    root, cache = glue_tsv_root("mrpc"), tmp_path / "cache"
    calls = []
    real = glue._tokenize_batch
    monkeypatch.setattr(glue, "_tokenize_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = _module("mrpc", tokenizer, root, cache)
    assert len(calls) == 2  # one batched call per split

    def forbidden(*args, **kwargs):
        raise AssertionError("tokenized again despite a cache hit")

    monkeypatch.setattr(glue, "_tokenize_batch", forbidden)
    second = _module("mrpc", tokenizer, root, cache)
    assert second.data_info()["cache"] == {"train": "hit", "validation": "hit"}
    assert second.dataset("train")[:] == first.dataset("train")[:]
    # a different max_length, or a changed source file, is a different cache entry
    monkeypatch.setattr(glue, "_tokenize_batch", real)
    assert _module("mrpc", tokenizer, root, cache, max_length=8).data_info()["cache"]["train"] == "miss"
    train_file = root / "glue" / "MRPC" / "train.tsv"
    train_file.write_text(train_file.read_text() + "1\t9\t10\textra row\tanother one\n")
    third = _module("mrpc", tokenizer, root, cache)
    assert third.data_info()["cache"] == {"train": "miss", "validation": "hit"}
    assert third.data_info()["counts"]["train"] == 7


def test_train_limit_and_seeded_shuffle(glue_tsv_root, tokenizer, tmp_path, glue_rows):
    root = glue_tsv_root("qnli", rows={"train.tsv": glue_rows("qnli", n=40), "dev.tsv": glue_rows("qnli", n=10)})
    make = lambda seed: _module("qnli", tokenizer, root, tmp_path / f"cache{seed}", train_limit=12, eval_limit=4, seed=seed)
    a, b, c = make(1), make(1), make(2)
    info = a.data_info()
    assert info["counts"] == {"train": 12, "validation": 4}
    assert info["full_counts"] == {"train": 40, "validation": 10}
    assert info["subset_sha1"]["train"] is not None

    def order(dm):
        return [tuple(x) for batch in dm.train_dataloader() for x in batch["input_ids"].tolist()]

    assert order(a) == order(b)  # same seed: same subset and same shuffle
    first, second = order(a), order(a)
    assert first == second  # a fresh loader of the same epoch repeats the order (no state carried over)
    assert order(a) != order(c)
    # eval subsets ignore the run seed so all runs score the same examples
    assert a.dataset("validation")[:] == c.dataset("validation")[:]


def test_regression_labels_are_float(glue_tsv_root, tokenizer, tmp_path):
    dm = _module("stsb", tokenizer, glue_tsv_root("stsb"), tmp_path / "cache")
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.float32
    assert sorted(dm.dataset("train")["labels"]) == pytest.approx([0.0, 0.0, 2.5, 2.5, 4.75, 4.75])


def test_mnli_two_eval_loaders_and_evaluator(glue_tsv_root, tokenizer, tmp_path):
    dm = _module("mnli", tokenizer, glue_tsv_root("mnli"), tmp_path / "cache")
    loaders = dm.val_dataloader()
    assert len(loaders) == 2 and dm.eval_names == ("validation_matched", "validation_mismatched")
    evaluator = dm.make_evaluator()

    class ConstantModel(torch.nn.Module):  # always predicts "neutral"
        def forward(self, input_ids, attention_mask, token_type_ids):
            return type("Out", (), {"logits": torch.tensor([[0.0, 1.0, 0.0]]).expand(len(input_ids), 3)})()

    for idx, loader in enumerate(loaders):
        for batch in loader:
            evaluator.update(ConstantModel(), batch, idx)
    # 6 rows cycling entailment/neutral/contradiction -> 2 of 6 neutral in each eval set
    assert evaluator.compute() == pytest.approx({"accuracy_m": 100 / 3, "accuracy_mm": 100 / 3})


def test_eval_label_absent_from_train(glue_tsv_root, tokenizer, tmp_path):
    rows = {"train.tsv": [("a", "b", "entailment"), ("c", "d", "entailment")],
            "dev.tsv": [("e", "f", "entailment"), ("g", "h", "not_entailment")]}
    with pytest.raises(ValueError, match=r"validation labels \['not_entailment'\] are labels absent from the train set"):
        _module("rte", tokenizer, glue_tsv_root("rte", rows=rows), tmp_path / "cache")


def test_datamodule_argument_checks(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"data.train_limit=0; expected an integer >= 1 or null"):
        make_datamodule(GlueDataModule, "rte", tokenizer, train_limit=0)
    with pytest.raises(ValueError, match="data.source='web'; expected one of auto, local, hub"):
        make_datamodule(GlueDataModule, "rte", tokenizer, source="web")
    with pytest.raises(ValueError, match="'xsum' is not a GLUE task"):
        make_datamodule(GlueDataModule, "xsum", tokenizer)
    with pytest.raises(RuntimeError, match="call setup"):
        make_datamodule(GlueDataModule, "rte", tokenizer, cache_dir=tmp_path).data_info()


def test_cache_dir_from_env(glue_tsv_root, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("DCFT_LAB_CACHE", str(tmp_path / "envcache"))
    dm = make_datamodule(GlueDataModule, "rte", tokenizer, data_root=glue_tsv_root("rte"), source="local", max_length=16)
    dm.setup()
    assert (tmp_path / "envcache" / "glue" / "rte").is_dir()
    assert all(path.startswith(str(tmp_path / "envcache")) for path in dm.data_info()["cache_paths"].values())


@pytest.mark.slow  # the real data
def test_real_rte_datamodule(shared_data, tokenizer, tmp_path):
    dm = _module("rte", tokenizer, shared_data, tmp_path / "cache", train_limit=32, eval_limit=16, max_length=64)
    info = dm.data_info()
    assert info["full_counts"] == {"train": 2490, "validation": 277}
    assert info["counts"] == {"train": 32, "validation": 16}
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 64
    assert batch["input_ids"][:, 0].eq(tokenizer.cls_token_id).all()


def test_train_holdout_replaces_dev_and_never_reads_it(glue_tsv_root, tokenizer, tmp_path, glue_rows):
    # no dev.tsv at all: a pilot on a held-out training slice must not need (or read) the dev set
    root = glue_tsv_root("qnli", rows={"train.tsv": glue_rows("qnli", n=30)})
    make = lambda seed: _module("qnli", tokenizer, root, tmp_path / "cache", train_holdout=8, seed=seed)
    a, b = make(1), make(2)
    info = a.data_info()
    assert info["counts"] == {"train": 22, "validation": 8}
    assert info["eval_source"] == "train_holdout" and info["train_holdout"]["of_train_count"] == 30

    def rows(dataset):
        return {tuple(ids) for ids in dataset["input_ids"]}

    train, held = rows(a.dataset("train")), rows(a.dataset("validation"))
    assert not train & held and len(train | held) == 30  # disjoint, together the whole train file
    assert rows(b.dataset("validation")) == held  # the held-out slice does not depend on the run seed
    with pytest.raises(ValueError, match=r"data.train_holdout=30 leaves no training data: the train split has 30"):
        _module("qnli", tokenizer, root, tmp_path / "cache", train_holdout=30)
    full = _module("qnli", tokenizer, glue_tsv_root("qnli"), tmp_path / "cache2")
    assert full.data_info()["eval_source"] == "dev" and full.data_info()["train_holdout"] is None


def test_train_subset_seed_fixes_the_subsample_across_run_seeds(glue_tsv_root, tokenizer, tmp_path, glue_rows):
    root = glue_tsv_root("qnli", rows={"train.tsv": glue_rows("qnli", n=40), "dev.tsv": glue_rows("qnli", n=6)})
    make = lambda seed, subset_seed: _module("qnli", tokenizer, root, tmp_path / "cache", train_limit=10, seed=seed,
                                             train_subset_seed=subset_seed)
    fixed = [make(seed, 0) for seed in (1, 2)]
    varied = [make(seed, None) for seed in (1, 2)]
    assert fixed[0].dataset("train")[:] == fixed[1].dataset("train")[:]
    assert varied[0].dataset("train")[:] != varied[1].dataset("train")[:]
    assert fixed[0].data_info()["train_subset_seed"] == 0 and varied[1].data_info()["train_subset_seed"] == 2


def test_limits_select_the_same_rows_as_before(glue_tsv_root, tokenizer, tmp_path, glue_rows):
    # indices the GLUE subset drew before it became data.splits.subset_indices (shared with QA / summarization):
    # 12 of 40 train rows with seed 1, 4 of 10 dev rows with the fixed eval seed 0
    train_rows, dev_rows = glue_rows("qnli", n=40), glue_rows("qnli", n=10, tag="dev")
    root = glue_tsv_root("qnli", rows={"train.tsv": train_rows, "dev.tsv": dev_rows})
    dm = _module("qnli", tokenizer, root, tmp_path / "cache", train_limit=12, eval_limit=4, seed=1)
    expected = {"train": ([1, 4, 9, 11, 13, 15, 16, 23, 28, 30, 33, 34], train_rows),
                "validation": ([2, 4, 5, 7], dev_rows)}
    for split, (indices, rows) in expected.items():
        chosen = [rows[i] for i in indices]
        encoded = tokenizer([r[0] for r in chosen], [r[1] for r in chosen], truncation=True, max_length=16)
        assert dm.dataset(split)["input_ids"] == encoded["input_ids"]
        assert dm.data_info()["subset_sha1"][split] == hashlib.sha1(np.array(indices, dtype=np.int64).tobytes()).hexdigest()
