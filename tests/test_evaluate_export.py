"""After training: ``python -m dcft_lab.evaluate`` and ``python -m dcft_lab.export`` on runs of the tiny backbones.

- evaluate on the dev set reproduces the run record's final evaluation exactly (GLUE for every method, MNLI's two
  dev sets, SQuAD, XSum), and writes eval-<split>.json without touching results.json;
- split=test on GLUE-layout test files writes the leaderboard's TSVs; SQuAD / XSum inputs write {id: answer} JSON and
  {id, summary} lines;
- export merge=true gives a plain transformers folder that transformers' Auto classes load and that scores like the
  adapter (1e-5), also for DCFT with stride < kernel; in a fresh process without dcft_lab or peft too (slow tests);
  merge=false ships the adapter with a model card;
- bad input is a one-line error with exit code 2;
- decoder-only backbones (tiny-gpt2 / tiny-llama): the same, with the run's model family and backbone options (GLUE
  through the score head, sft perplexity, XSum as prompt -> summary), merged exports loaded by plain transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import default_glue_rows, write_glue_tsv_root
from helpers import one_line_error, restored_globals, run_inprocess

REPO = Path(__file__).resolve().parents[1]
METHODS = ["dcft", "lora", "adalora", "lokr", "none"]


def evaluate(*args: str) -> dict:
    from dcft_lab import evaluate as command

    with restored_globals():  # evaluation sets torch threads / deterministic algorithms like a run
        return command.main(list(args))


def export(*args: str) -> dict:
    from dcft_lab import export as command

    with restored_globals():
        return command.main(list(args))


def expect_exit_2(capsys, main, *args: str) -> str:
    """The command fails with exit code 2 and exactly one 'error: ...' line, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc, restored_globals():
        main(list(args))
    assert exc.value.code == 2
    return one_line_error(capsys.readouterr().err)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- GLUE runs shared by several tests (trained once per module) -----------------------------------------
@pytest.fixture(scope="module")
def rte_runs(tmp_path_factory) -> dict:
    """RTE on 6-row TSVs, 3 steps: one completed run per method (+ DCFT with stride 4 < kernel 8)."""
    base = tmp_path_factory.mktemp("rte")
    root = write_glue_tsv_root(base, "rte")
    variants = {m: [f"method={m}"] for m in METHODS}
    variants["dcft_s4"] = ["method=dcft", "method.kernel_size=8", "method.stride=4"]
    runs = {name: base / name for name in variants}
    for name, overrides in variants.items():
        run_inprocess(["task=rte", *overrides], runs[name], root)
    return {"root": root, **runs}


# ---- evaluate: the dev set again -------------------------------------------------------------------------
# AdaLoRA with a schedule short enough to finish its budget: the adapter is saved with a rank_pattern and PEFT
# shrinks the loaded matrices to it (another load path than the full-rank one).
ADALORA_FINAL_BUDGET = ["method.tinit=1", "method.tfinal=1", "method.deltaT=1", "method.init_r=6", "method.target_r=2"]


@pytest.mark.parametrize("task, method, extra", [("stsb", m, []) for m in METHODS] + [
    ("stsb", "adalora", ADALORA_FINAL_BUDGET), ("mnli", "dcft", [])])
def test_evaluate_reproduces_the_recorded_final_evaluation(task, method, extra, glue_tsv_root, tmp_path):
    # STS-B: Pearson / Spearman are continuous, so "equal" means bit-identical predictions, not a lucky accuracy
    root = glue_tsv_root(task)
    run_dir = tmp_path / "run"
    record = run_inprocess([f"task={task}", f"method={method}", *extra], run_dir, root)
    if extra:
        assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
    results_before = (run_dir / "results.json").read_bytes()

    payload = evaluate(f"run={run_dir}")

    from dcft_lab.evaluate import ROUNDING_POINTS

    recorded = record["metrics"]["final"]
    if extra:  # the saved adapter holds only the pruned ranks: the same function, summed over another length
        assert payload["agreement_recorded_final"] in ("exact", "rounding")
        assert payload["metrics"].keys() == recorded.keys()
        assert all(abs(payload["metrics"][k] - recorded[k]) <= ROUNDING_POINTS for k in recorded)
    else:
        assert payload["metrics"] == recorded  # exactly, every metric
        assert payload["equals_recorded_final"] is True and payload["agreement_recorded_final"] == "exact"
    on_disk = json.loads((run_dir / "eval-validation.json").read_text())
    assert on_disk["metrics"] == payload["metrics"]
    expected_counts = {"validation_matched": 6, "validation_mismatched": 6} if task == "mnli" else {"validation": 6}
    assert on_disk["counts"] == expected_counts and on_disk["labeled"] is True
    weights = run_dir / "adapter" / ("head.safetensors" if method == "none" else "adapter_model.safetensors")
    assert on_disk["adapter"]["sha256"] == sha256(weights)
    assert "commit" in on_disk and on_disk["run_commit"] == record["env"]["git_commit"]
    assert on_disk["predictions"] == [] and not list(run_dir.glob("predictions-*"))
    assert (run_dir / "results.json").read_bytes() == results_before  # the run record is never touched


def test_recorded_agreement_allows_rounding_only_for_pruned_adapters():
    from dcft_lab.evaluate import recorded_agreement

    same, near, far = {"pearson": 2.758641}, {"pearson": 2.758604}, {"pearson": 2.7606}
    assert recorded_agreement(same, dict(same), pruned=False) == "exact"
    assert recorded_agreement(near, same, pruned=True) == "rounding"
    assert recorded_agreement(near, same, pruned=False) == "differs"  # full-rank adapters must be bit-identical
    assert recorded_agreement(far, same, pruned=True) == "differs"    # 2e-3 points is more than rounding
    assert recorded_agreement({"pearson": 2.758604, "spearman": 1.0}, same, pruned=True) == "differs"


def test_evaluate_other_data_folder_limit_and_train_split(rte_runs, tmp_path):
    run_dir = rte_runs["dcft"]
    other = write_glue_tsv_root(tmp_path / "other", "rte",
                                rows={"dev.tsv": default_glue_rows("rte", n=10, tag="other")})
    payload = evaluate(f"run={run_dir}", f"data.root={other}", "data.eval_limit=4", f"out={tmp_path / 'out'}")
    assert payload["counts"] == {"validation": 4} and payload["data"]["full_counts"]["validation"] == 10
    assert payload["files"] == [str((other / "glue" / "RTE" / "dev.tsv").resolve())]
    assert (tmp_path / "out" / "eval-validation.json").is_file()
    assert not (run_dir / "eval-validation.json").exists()  # out= puts it elsewhere
    train = evaluate(f"run={run_dir}", "split=train", f"out={tmp_path / 'out'}")
    assert train["counts"] == {"train": 6} and set(train["metrics"]) == {"accuracy"}


def test_evaluate_a_run_folder_with_only_the_hydra_config(rte_runs, tmp_path):
    """A run folder without results.json (copied by hand, say): the config comes from .hydra/config.yaml."""
    import shutil

    import yaml

    source = rte_runs["lora"]
    record = json.loads((source / "results.json").read_text())
    run_dir = tmp_path / "copy"
    shutil.copytree(source / "adapter", run_dir / "adapter")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(record["config"]))
    payload = evaluate(f"run={run_dir}")
    assert payload["metrics"] == record["metrics"]["final"] and "recorded_final" not in payload


# ---- evaluate split=test: GLUE leaderboard files -----------------------------------------------------------
# Official GLUE test-file headers (download_glue_data.py); rows get indices 100.. to check they are copied.
TEST_HEADERS = {
    "rte": "index\tsentence1\tsentence2",
    "cola": "index\tsentence",
    "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2",
    "qqp": "id\tquestion1\tquestion2",
    "mnli": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2",
}
TEST_FILES = {"rte": {"RTE/test.tsv": "RTE.tsv"}, "cola": {"CoLA/test.tsv": "CoLA.tsv"},
              "stsb": {"STS-B/test.tsv": "STS-B.tsv"}, "qqp": {"QQP/test.tsv": "QQP.tsv"},
              "mnli": {"MNLI/test_matched.tsv": "MNLI-m.tsv", "MNLI/test_mismatched.tsv": "MNLI-mm.tsv"}}
PREDICTION = {"rte": r"entailment|not_entailment", "cola": r"[01]", "qqp": r"[01]", "stsb": r"-?\d+\.\d{3}",
              "mnli": r"entailment|neutral|contradiction"}


def _test_row(task: str, i: int) -> str:
    s1, s2 = f'test {i} premise with a " quote', f"test {i} hypothesis"
    return {
        "rte": f"{100 + i}\t{s1}\t{s2}", "cola": f"{100 + i}\t{s1}", "qqp": f"{100 + i}\t{s1}\t{s2}",
        "stsb": f"{100 + i}\tmain-forums\tdeft-forum\t2014\t{i:04d}\tnone\tnone\t{s1}\t{s2}",
        "mnli": f"{100 + i}\t{i}\t{i}n\tfiction\t( {s1} )\t( {s2} )\t(ROOT {s1})\t(ROOT {s2})\t{s1}\t{s2}",
    }[task]


@pytest.mark.parametrize("task", ["rte", "cola", "stsb", "qqp", "mnli"])
def test_test_split_writes_glue_leaderboard_tsv(task, glue_tsv_root, tmp_path):
    root = glue_tsv_root(task)
    run_dir = tmp_path / "run"
    run_inprocess([f"task={task}", "method=dcft"], run_dir, root)
    for relative in TEST_FILES[task]:
        (root / "glue" / relative).write_text(
            "\n".join([TEST_HEADERS[task]] + [_test_row(task, i) for i in range(5)]) + "\n", encoding="utf-8")

    payload = evaluate(f"run={run_dir}", "split=test")

    assert payload["labeled"] is False and payload["metrics"] == {}
    names = list(TEST_FILES[task].values())
    assert payload["predictions"] == [str(run_dir / "predictions-test" / name) for name in names]
    for name in names:
        lines = (run_dir / "predictions-test" / name).read_text().splitlines()
        assert lines[0] == "index\tprediction"
        rows = [line.split("\t") for line in lines[1:]]
        assert [r[0] for r in rows] == [str(100 + i) for i in range(5)]
        assert all(re.fullmatch(PREDICTION[task], r[1]) for r in rows), rows
    assert json.loads((run_dir / "eval-test.json").read_text())["counts"] == {n[:-4]: 5 for n in names}


# ---- export ---------------------------------------------------------------------------------------------
FRESH_PROCESS = r"""
import json, sys
import torch, transformers
out = {}
for name, folder, s1, s2 in json.loads(sys.argv[1]):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(s1, s2, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        out[name] = model(**batch).logits.tolist()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("dcft_lab", "peft"))
print(json.dumps({"logits": out, "leaked": leaked}))
"""
# Where the plain-transformers scripts run: in this process (fast: the exported folders load with transformers' Auto
# classes and give the adapter's numbers), or in a fresh one (slow: and neither dcft_lab nor peft is needed for it).
PROCESS = pytest.mark.parametrize("fresh", [False, pytest.param(True, marks=pytest.mark.slow)],
                                  ids=["this-process", "fresh-process"])


def plain_transformers(script: str, jobs: list, cwd: Path, fresh: bool) -> dict:
    """The JSON that ``script`` (FRESH_PROCESS / FRESH_DECODERS) prints for ``jobs``, run as ``python -c`` in a fresh
    process without PYTHONPATH (then asserting that it imported neither dcft_lab nor peft), or in this process."""
    if fresh:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True, text=True,
                              timeout=600, cwd=str(cwd), env={**env, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["leaked"] == []  # plain transformers: neither dcft_lab nor peft was imported
        return result
    printed, argv = io.StringIO(), sys.argv
    sys.argv = ["-c", json.dumps(jobs)]
    try:
        with contextlib.redirect_stdout(printed), restored_globals():
            exec(compile(script, "<plain transformers>", "exec"), {"__name__": "__main__"})
    finally:
        sys.argv = argv
    return json.loads(printed.getvalue().strip().splitlines()[-1])


def _adapter_logits(run_dir: Path, s1: list[str], s2: list[str]):
    import torch

    from dcft_lab.saved_run import load_adapted_model, open_run

    with restored_globals():
        model, tokenizer, _ = load_adapted_model(open_run(run_dir))
        batch = tokenizer(s1, s2, padding=True, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            return model(**batch).logits


@PROCESS
def test_export_merged_loads_with_plain_transformers_and_scores_identically(rte_runs, tmp_path, fresh):
    import torch

    dev = default_glue_rows("rte", tag="dev")
    s1, s2 = [r[0] for r in dev], [r[1] for r in dev]
    labels = torch.tensor([("entailment", "not_entailment").index(r[2]) for r in dev])
    jobs, expected = [], {}
    for name in [*METHODS, "dcft_s4"]:
        manifest = export(f"run={rte_runs[name]}", f"out={tmp_path / name}", "merge=true")
        assert manifest["max_abs_diff"] <= 1e-5
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(manifest["files"])
        assert not (tmp_path / name / "adapter_config.json").exists()
        jobs.append([name, str(tmp_path / name), s1, s2])
        expected[name] = _adapter_logits(rte_runs[name], s1, s2)

    result = plain_transformers(FRESH_PROCESS, jobs, tmp_path, fresh)
    for name, logits in result["logits"].items():
        logits = torch.tensor(logits)
        assert torch.allclose(logits, expected[name], atol=1e-5, rtol=0), (name, logits, expected[name])
        record = json.loads((rte_runs[name] / "results.json").read_text())
        accuracy = 100.0 * float((logits.argmax(-1) == labels).float().mean())
        assert math.isclose(accuracy, record["metrics"]["final"]["accuracy"], abs_tol=1e-9), name
    config = json.loads((tmp_path / "dcft" / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}


def test_export_adapter_with_model_card(rte_runs, tmp_path):
    import peft
    import torch

    from dcft_lab.saved_run import load_adapted_model, open_run

    run_dir = rte_runs["dcft"]
    record = json.loads((run_dir / "results.json").read_text())
    manifest = export(f"run={run_dir}", f"out={tmp_path / 'adapter'}")
    out = tmp_path / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (run_dir / "adapter" / name).read_bytes()
    card = (out / "README.md").read_text()
    for fragment in ("DCFT d=8 s=8 k=1", "kernel_size 8", "rank 1", "adapter 936", "accuracy", "rte",
                     "peft.PeftModel.from_pretrained", "import dcft_lab.adapters"):
        assert fragment in card, fragment
    assert manifest["adapter"]["sha256"] == sha256(run_dir / "adapter" / "adapter_model.safetensors")
    assert f"{record['metrics']['final']['accuracy']:.2f}" in card

    # the copy is a working PEFT adapter: loaded onto the rebuilt backbone it gives the run's model
    with restored_globals():
        saved = open_run(run_dir)
        reference, tokenizer, _ = load_adapted_model(saved)
        from dcft_lab.backbones import build_backbone

        base, _, _ = build_backbone("tiny-deberta", "classification", 2, seed=saved.rc.seed)
        loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
        batch = tokenizer(["a b c", "d e"], ["f g", "h"], padding=True, return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(loaded(**batch).logits, reference(**batch).logits)

    head = export(f"run={rte_runs['none']}", f"out={tmp_path / 'head'}")
    assert "head.safetensors" in head["files"] and "Head only" in (tmp_path / "head" / "README.md").read_text()


def test_a_merge_that_changes_the_outputs_is_refused_and_writes_nothing(rte_runs, tmp_path, monkeypatch, capsys):
    import torch
    from peft.tuners.tuners_utils import BaseTuner

    from dcft_lab.export import main as export_main

    real = BaseTuner.merge_and_unload  # what PeftModel.merge_and_unload reaches (LoRA's tuner inherits it)

    def broken(self, *args, **kwargs):  # e.g. a merge that forgot the update's scale
        plain = real(self, *args, **kwargs)
        with torch.no_grad():
            [m for m in plain.modules() if isinstance(m, torch.nn.Linear)][-1].weight.add_(0.5)  # the classifier
        return plain

    monkeypatch.setattr(BaseTuner, "merge_and_unload", broken)
    line = expect_exit_2(capsys, export_main, f"run={rte_runs['lora']}", f"out={tmp_path / 'merged'}", "merge=true")
    assert re.search(r"the merged model's outputs differ from the adapter's by \S+ on the probe; expected at most "
                     r"\S+ \(a merge is exact up to rounding\): nothing was written$", line), line
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".*tmp-export"))


# ---- SQuAD and XSum (hand-made files in the real layout, conftest.write_text_data_root) -------------------------
QUIET = ["logger=csv", "trainer=cpu", "trainer.max_steps=2", "trainer.enable_progress_bar=false", "run.threads=1"]
# 12 dev questions: enough for a non-zero F1 from the tiny random model, so "equal" compares real numbers
SQUAD_SMALL = ["task=squad_v1", "backbone=tiny-deberta", "task.max_length=128", "task.doc_stride=32",
               "task.train_batch_size=8", "data.train_from_eval=8", "data.eval_limit=12"]
XSUM_SMALL = ["task=xsum", "backbone=tiny-bart", "task.max_source_length=128", "task.train_batch_size=4",
              "task.generation={num_beams: 2, max_length: 12, min_length: 0}", "data.train_from_eval=8",
              "data.eval_limit=4"]


def _train_compose(run_dir: Path, overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from dcft_lab import training
    from dcft_lab.config_schema import validate
    from helpers import compose_config

    cfg = compose_config(overrides)
    with restored_globals():
        return training.execute(validate(cfg), OmegaConf.to_container(cfg, resolve=True), run_dir)


@pytest.fixture
def text_env(text_data_root, monkeypatch):
    monkeypatch.setenv("DCFT_LAB_DATA", str(text_data_root))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return text_data_root


def test_squad_evaluate_predict_and_merge(text_env, tmp_path):
    import torch
    import transformers

    run_dir = tmp_path / "run"
    record = _train_compose(run_dir, [*SQUAD_SMALL, *QUIET, "method=dcft"])
    payload = evaluate(f"run={run_dir}")
    assert payload["metrics"] == record["metrics"]["final"]
    assert payload["counts"]["examples"] == 12

    # an unlabeled SQuAD-format file (questions without answers): the official {id: answer} prediction JSON
    dev = json.loads((text_env / "squad_v1.1" / "dev-v1.1.json").read_text())
    article = dev["data"][0]
    article["paragraphs"] = article["paragraphs"][:1]
    ids = [qa["id"] for qa in article["paragraphs"][0]["qas"]]
    for qa in article["paragraphs"][0]["qas"]:
        del qa["answers"]
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps({"version": "1.1", "data": [article]}))
    predicted = evaluate(f"run={run_dir}", f"file={questions}")
    assert predicted["labeled"] is False and predicted["metrics"] == {}
    answers = json.loads((run_dir / "predictions-file-questions.json").read_text())
    assert list(answers) == ids and all(isinstance(a, str) for a in answers.values())
    context = article["paragraphs"][0]["context"]
    assert all(a in context for a in answers.values())

    manifest = export(f"run={run_dir}", f"out={tmp_path / 'merged'}", "merge=true")
    assert manifest["max_abs_diff"] <= 1e-5
    plain = transformers.AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "merged")).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    batch = tokenizer(["Who won?"], [context[:300]], return_tensors="pt")
    from dcft_lab.saved_run import load_adapted_model, open_run

    with restored_globals(), torch.no_grad():
        adapter, _, _ = load_adapted_model(open_run(run_dir))
        assert torch.allclose(plain(**batch).start_logits, adapter(**batch).start_logits, atol=1e-5, rtol=0)


def test_xsum_evaluate_test_split_and_merge(text_env, tmp_path):
    import transformers

    run_dir = tmp_path / "run"
    record = _train_compose(run_dir, [*XSUM_SMALL, *QUIET, "method=lora"])
    payload = evaluate(f"run={run_dir}")
    assert payload["metrics"] == record["metrics"]["final"]

    # split=test: the local XSum test sample (labeled), 3 documents: ROUGE and {id, summary} lines
    test = evaluate(f"run={run_dir}", "split=test", "data.eval_limit=3")
    assert test["labeled"] is True and set(test["metrics"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert "note" in test  # the run carved its training rows out of this same file
    rows = [json.loads(line) for line in (run_dir / "predictions-test.jsonl").read_text().splitlines()]
    sample = [json.loads(line) for line in
              (text_env / "xsum_test_sample" / "xsum_test_1000.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["id"] for r in rows} <= {str(s["id"]) for s in sample}
    assert all(set(r) == {"id", "summary"} and isinstance(r["summary"], str) for r in rows)

    manifest = export(f"run={run_dir}", f"out={tmp_path / 'merged'}", "merge=true")
    assert manifest["max_abs_diff"] <= 1e-5
    plain = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "merged")).eval()
    assert plain.generation_config.num_beams == 2 and plain.generation_config.max_length == 12


def test_decoder_only_causal_lm_run(tmp_path):
    """A generation run on a decoder-only backbone (model family causal_lm): its dev loss / perplexity again, and a
    merged AutoModelForCausalLM."""
    data = REPO / "tests" / "data"
    run_dir = tmp_path / "run"
    record = run_inprocess(["task=sft", "backbone=tiny-gpt2", "method=lora", "task.max_length=64",
                            f"task.train_file={data / 'sft_tiny_train.jsonl'}",
                            f"task.eval_file={data / 'sft_tiny_dev.jsonl'}"], run_dir)
    assert evaluate(f"run={run_dir}")["metrics"] == record["metrics"]["final"]
    manifest = export(f"run={run_dir}", f"out={tmp_path / 'merged'}", "merge=true")
    assert manifest["auto_class"] == "AutoModelForCausalLM" and manifest["max_abs_diff"] <= 1e-5


# ---- decoder-only backbones ------------------------------------------------------------------------------------
SFT_TRAIN, SFT_DEV = REPO / "tests" / "data" / "sft_tiny_train.jsonl", REPO / "tests" / "data" / "sft_tiny_dev.jsonl"
SFT = ["task=sft", f"task.train_file={SFT_TRAIN}", f"task.eval_file={SFT_DEV}", "task.max_length=64"]
# an update large enough that merged-vs-adapter and reload checks are not vacuous (as in test_decoder_llm.py)
STRONG_DCFT = ["method=dcft", "method.init=lora", "optim.lr=3e-2", "trainer.max_steps=4"]
XSUM_DECODER = ["task=xsum", "backbone=tiny-llama", "task.max_source_length=64", "task.train_batch_size=4",
                "task.eval_batch_size=4", "task.generation={num_beams: 2, max_length: 8, min_length: 0}",
                "data.train_from_eval=8", "data.eval_limit=4"]

# Plain transformers in a fresh process: per job, AutoTokenizer + AutoModelFor<...> from the exported folder, the
# logits on given input ids, the ids of given texts, and generate() with the folder's own generation defaults.
FRESH_DECODERS = r"""
import json, sys
import torch, transformers
out = {}
for job in json.loads(sys.argv[1]):
    tokenizer = transformers.AutoTokenizer.from_pretrained(job["folder"])
    model = getattr(transformers, job["auto_class"]).from_pretrained(job["folder"]).eval()
    ids, mask = torch.tensor(job["input_ids"]), torch.tensor(job["attention_mask"])
    result = {"dtype": str(model.dtype), "pad_token_id": tokenizer.pad_token_id,
              "ids": [tokenizer(*texts)["input_ids"] for texts in job["texts"]]}
    with torch.no_grad():
        result["logits"] = model(input_ids=ids, attention_mask=mask).logits.float().tolist()
        if job.get("generate"):
            result["generated"] = tokenizer.batch_decode(model.generate(input_ids=ids, attention_mask=mask)[
                :, ids.shape[1]:], skip_special_tokens=True)
    out[job["name"]] = result
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("dcft_lab", "peft"))
print(json.dumps({"results": out, "leaked": leaked}))
"""


def _plain_decoders(jobs: list[dict], cwd: Path, fresh: bool) -> dict:
    return plain_transformers(FRESH_DECODERS, jobs, cwd, fresh)["results"]


def _adapter_outputs(run_dir: Path, texts: list[list[str]] = (), batch: dict | None = None):
    """(logits, batch, ids of each text) of the run's adapter model as evaluate builds it; the batch is ``texts``
    padded by the run's tokenizer unless given."""
    import torch

    from dcft_lab.saved_run import load_adapted_model, open_run

    with restored_globals(), torch.no_grad():
        model, tokenizer, _ = load_adapted_model(open_run(run_dir))
        batch = batch or tokenizer(*zip(*texts), padding=True, return_tensors="pt")
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits = model(**inputs).logits
        with model.disable_adapter():  # the adapter moves the logits: the equalities checked are not vacuous
            assert (logits - model(**inputs).logits).abs().max() > 1e-3
    return logits.float(), inputs, [tokenizer(*t)["input_ids"] for t in texts]


@pytest.fixture(scope="module")
def decoder_runs(tmp_path_factory) -> dict:
    """RTE on tiny-gpt2 (Conv1D, score head) and sft on tiny-llama (causal LM), both DCFT: one run each."""
    base = tmp_path_factory.mktemp("decoders")
    root = write_glue_tsv_root(base, "rte")
    runs = {"root": root, "rte": base / "rte", "sft": base / "sft"}
    records = {"rte": run_inprocess(["task=rte", "backbone=tiny-gpt2", *STRONG_DCFT], runs["rte"], root),
               "sft": run_inprocess(["backbone=tiny-llama", *SFT, *STRONG_DCFT], runs["sft"])}
    assert records["rte"]["model_family"] == "classification" and records["sft"]["model_family"] == "causal_lm"
    return {**runs, "records": records}


def test_decoder_glue_evaluate_and_leaderboard_predictions(decoder_runs, tmp_path):
    run_dir, root = decoder_runs["rte"], decoder_runs["root"]
    record = decoder_runs["records"]["rte"]
    payload = evaluate(f"run={run_dir}", f"out={tmp_path}")
    assert payload["metrics"] == record["metrics"]["final"] and payload["equals_recorded_final"] is True

    # the dev rows as an unlabeled GLUE test file: the leaderboard TSV, whose predictions score the recorded accuracy
    dev = default_glue_rows("rte", tag="dev")
    (root / "glue" / "RTE" / "test.tsv").write_text("\n".join(
        [TEST_HEADERS["rte"]] + [f"{100 + i}\t{s1}\t{s2}" for i, (s1, s2, _) in enumerate(dev)]) + "\n")
    test = evaluate(f"run={run_dir}", "split=test", f"out={tmp_path}")
    assert test["labeled"] is False and test["counts"] == {"RTE": 6}
    rows = [line.split("\t") for line in (tmp_path / "predictions-test" / "RTE.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == [str(100 + i) for i in range(6)]
    accuracy = 100.0 * sum(r[1] == label for r, (_, _, label) in zip(rows, dev)) / len(dev)
    assert math.isclose(accuracy, record["metrics"]["final"]["accuracy"], abs_tol=1e-4)


def test_decoder_sft_evaluate_train_and_file(decoder_runs, tmp_path, capsys):
    from dcft_lab.evaluate import main as evaluate_main

    run_dir, record = decoder_runs["sft"], decoder_runs["records"]["sft"]
    results_before = (run_dir / "results.json").read_bytes()
    payload = evaluate(f"run={run_dir}", f"out={tmp_path}")
    assert payload["metrics"] == record["metrics"]["final"] and payload["equals_recorded_final"] is True
    assert set(payload["metrics"]) == {"loss", "perplexity"} and payload["predictions"] == []
    assert payload["counts"] == {"examples": 8, "response_tokens": record["data"]["response_tokens"]["eval"]}
    assert payload["files"] == [str(SFT_DEV.resolve())]
    # file=: any prompt/response file; the dev file itself scores exactly as the dev set (same rows, same batches)
    on_file = evaluate(f"run={run_dir}", f"file={SFT_DEV}", f"out={tmp_path}")
    assert on_file["metrics"] == record["metrics"]["final"] and on_file["predictions"] == []
    train = evaluate(f"run={run_dir}", "split=train", "data.eval_limit=5", f"out={tmp_path}")
    assert train["counts"]["examples"] == 5 and train["files"] == [str(SFT_TRAIN.resolve())]
    assert math.isclose(train["metrics"]["perplexity"], math.exp(train["metrics"]["loss"]))
    assert (run_dir / "results.json").read_bytes() == results_before

    # no predictions for sft: the test split and a prompts-only file are one-line errors
    line = expect_exit_2(capsys, evaluate_main, f"run={run_dir}", "split=test")
    assert "no test split" in line and "not supported" in line and "file=" in line
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Question: Why?\\nAnswer:"}\n')
    line = expect_exit_2(capsys, evaluate_main, f"run={run_dir}", f"file={prompts}")
    assert "no 'response'" in line and "not supported" in line


@PROCESS
def test_decoder_merged_exports_load_with_plain_transformers(decoder_runs, tmp_path, fresh):
    """tiny-gpt2 (Conv1D) RTE -> AutoModelForSequenceClassification, tiny-llama sft -> AutoModelForCausalLM: a fresh
    process without dcft_lab or peft gets the adapter's logits on right-padded batches and tokenizes identically."""
    import torch

    dev = default_glue_rows("rte", tag="dev")
    pairs = [[s1, s2] for s1, s2, _ in dev]
    prompts = [[json.loads(line)["prompt"] + json.loads(line)["response"]] for line in SFT_DEV.read_text().splitlines()]
    jobs, expected = [], {}
    for name, auto_class, texts in (("rte", "AutoModelForSequenceClassification", pairs),
                                    ("sft", "AutoModelForCausalLM", prompts[:4])):
        manifest = export(f"run={decoder_runs[name]}", f"out={tmp_path / name}", "merge=true")
        assert manifest["auto_class"] == auto_class and manifest["max_abs_diff"] <= 1e-5
        assert manifest["model_family"] == decoder_runs["records"][name]["model_family"]
        expected[name], batch, expected[name + "_ids"] = _adapter_outputs(decoder_runs[name], texts)
        assert (batch["attention_mask"][:, -1] == 0).any()  # right padding: the score head pools the last real token
        jobs.append({"name": name, "folder": str(tmp_path / name), "auto_class": auto_class, "texts": texts,
                     "input_ids": batch["input_ids"].tolist(), "attention_mask": batch["attention_mask"].tolist()})
    config = json.loads((tmp_path / "rte" / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["pad_token_id"] is not None
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert json.loads((tmp_path / "sft" / "config.json").read_text())["use_cache"] is True

    results = _plain_decoders(jobs, tmp_path, fresh)
    for name in ("rte", "sft"):
        logits = torch.tensor(results[name]["logits"])
        assert torch.allclose(logits, expected[name], atol=1e-5, rtol=0), name
        assert results[name]["ids"] == expected[name + "_ids"], name
    labels = torch.tensor([("entailment", "not_entailment").index(label) for _, _, label in dev])
    accuracy = 100.0 * float((torch.tensor(results["rte"]["logits"]).argmax(-1) == labels).float().mean())
    assert math.isclose(accuracy, decoder_runs["records"]["rte"]["metrics"]["final"]["accuracy"], abs_tol=1e-4)


def test_decoder_backbone_options_from_the_record(tmp_path):
    """bfloat16 frozen weights + gradient checkpointing + bf16-mixed: evaluate rebuilds the model with the record's
    options (float32 weights would score differently) and export merges and saves in bfloat16."""
    import transformers

    from dcft_lab.evaluate import build_eval_set, run_evaluation
    from dcft_lab.saved_run import load_adapted_model, open_run

    run_dir = tmp_path / "run"
    record = run_inprocess(["backbone=tiny-llama", *SFT, "method=lora", "trainer.max_steps=2",
                            "trainer.precision=bf16-mixed", "backbone.gradient_checkpointing=true",
                            "backbone.dtype=bfloat16"], run_dir)
    assert record["backbone_options"] == {"gradient_checkpointing": True, "dtype": "bfloat16"}
    assert evaluate(f"run={run_dir}")["metrics"] == record["metrics"]["final"]
    with restored_globals():
        saved = open_run(run_dir)
        assert saved.family == "causal_lm" and saved.options == record["backbone_options"]
        saved.options = {}  # as if the options were ignored: float32 frozen weights
        model, tokenizer, _ = load_adapted_model(saved)
        metrics, _, _ = run_evaluation(saved, model, build_eval_set(saved, tokenizer, "validation", None, None), False)
    assert metrics["loss"] != record["metrics"]["final"]["loss"]

    manifest = export(f"run={run_dir}", f"out={tmp_path / 'merged'}", "merge=true")
    assert manifest["backbone_options"] == record["backbone_options"]
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "dtype bfloat16" in card and "gradient_checkpointing True" in card
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert str(plain.dtype) == "torch.bfloat16" and not plain.is_gradient_checkpointing


@PROCESS
def test_decoder_summarization_evaluate_predict_and_merge(text_env, tmp_path, fresh):
    """XSum on tiny-llama (prompt -> summary): the dev set again, summaries for other documents through the run's own
    prompts and generate settings, and a merged causal LM whose generate() defaults give the same summary."""
    import torch

    from dcft_lab.evaluate import build_eval_set, run_evaluation
    from dcft_lab.saved_run import load_adapted_model, open_run

    run_dir = tmp_path / "run"
    record = _train_compose(run_dir, [*XSUM_DECODER, *QUIET, "method=lora"])
    assert record["model_family"] == "causal_lm"
    assert evaluate(f"run={run_dir}")["metrics"] == record["metrics"]["final"]

    # the dev documents as a file=: the summaries of the run's own eval set, in its order
    with restored_globals():
        saved = open_run(run_dir)
        model, tokenizer, _ = load_adapted_model(saved)
        dev_set = build_eval_set(saved, tokenizer, "validation", None, None)
        _, dev_summaries, _ = run_evaluation(saved, model, dev_set, True)
        dm = saved.datamodule(tokenizer)
        dm.setup("validate")
        examples = dm.eval_examples
    assert len(dev_summaries) == 4 and len(set(dev_summaries)) > 1
    documents = tmp_path / "documents.jsonl"
    documents.write_text("".join(json.dumps({"id": f"d{i}", "document": d, "summary": s}) + "\n"
                                 for i, (d, s) in enumerate(zip(examples["document"], examples["summary"]))))
    on_file = evaluate(f"run={run_dir}", f"file={documents}")
    assert on_file["metrics"] == record["metrics"]["final"]
    rows = [json.loads(line) for line in (run_dir / "predictions-file-documents.jsonl").read_text().splitlines()]
    assert rows == [{"id": f"d{i}", "summary": s} for i, s in enumerate(dev_summaries)]

    test = evaluate(f"run={run_dir}", "split=test", "data.eval_limit=2")
    assert test["labeled"] is True and len((run_dir / "predictions-test.jsonl").read_text().splitlines()) == 2

    manifest = export(f"run={run_dir}", f"out={tmp_path / 'merged'}", "merge=true")
    assert manifest["auto_class"] == "AutoModelForCausalLM" and manifest["max_abs_diff"] <= 1e-5
    assert manifest["prompt_template"] == "{document}\nTL;DR:"
    assert manifest["generate_kwargs"]["max_new_tokens"] == 8 and manifest["generate_kwargs"]["num_beams"] == 2
    # one document, no padding: the merged model's own generate() defaults continue the prompt as evaluate did
    prompt = dm._features(examples.select([0]), train=False)
    batch = {"input_ids": torch.tensor(prompt["input_ids"]), "attention_mask": torch.tensor(prompt["attention_mask"])}
    single = tmp_path / "single.jsonl"
    single.write_text(json.dumps({"document": examples["document"][0]}) + "\n")
    evaluate(f"run={run_dir}", f"file={single}")
    alone = json.loads((run_dir / "predictions-file-single.jsonl").read_text())["summary"]
    results = _plain_decoders([{"name": "xsum", "folder": str(tmp_path / "merged"), "auto_class": "AutoModelForCausalLM",
                               "texts": [], "generate": True, **{k: v.tolist() for k, v in batch.items()}}], tmp_path, fresh)
    assert [text.strip() for text in results["xsum"]["generated"]] == [alone]  # the evaluator strips summaries
    expected, _, _ = _adapter_outputs(run_dir, batch=batch)
    assert torch.allclose(torch.tensor(results["xsum"]["logits"]), expected, atol=1e-4, rtol=0)


# ---- bad input ---------------------------------------------------------------------------------------------
def test_bad_input_is_a_one_line_error(rte_runs, glue_tsv_root, tmp_path, capsys):
    from dcft_lab.evaluate import main as evaluate_main
    from dcft_lab.export import main as export_main

    root = glue_tsv_root("rte")
    no_adapter = tmp_path / "no_adapter"
    run_inprocess(["task=rte", "method=dcft", "run.save_adapter=false"], no_adapter, root)
    for main, extra in ((evaluate_main, []), (export_main, [f"out={tmp_path / 'x'}"])):
        line = expect_exit_2(capsys, main, f"run={no_adapter}", *extra)
        assert "no saved adapter" in line and "adapter_config.json" in line and "run.save_adapter=true" in line
    # a run that did save its adapter, seen from a clone (adapters are git-ignored): say that, not the flag
    cloned = tmp_path / "cloned"
    shutil.copytree(rte_runs["dcft"], cloned, ignore=shutil.ignore_patterns("adapter", "adapter-best"))
    for choice in ("final", "best"):
        line = expect_exit_2(capsys, evaluate_main, f"run={cloned}", f"adapter={choice}")
        assert "the run saved it, but the folder is not here (adapters are not committed to git" in line, line

    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError):
        run_inprocess(["task=rte", "method=dcft", "run.inject_failure=start"], failed, root)
    line = expect_exit_2(capsys, evaluate_main, f"run={failed}")
    assert "failed" in line and "injected failure" in line and "expected a completed run" in line

    line = expect_exit_2(capsys, evaluate_main, f"run={rte_runs['dcft']}", "split=test")
    assert "has no test split" in line and "RTE/test.tsv" in line and "expected" in line

    # a data folder whose labels are not RTE's (0/1 instead of entailment / not_entailment)
    wrong = write_glue_tsv_root(tmp_path / "wrong", "sst2")
    (wrong / "glue" / "RTE").mkdir()
    (wrong / "glue" / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta b\tc d\t1\n")
    line = expect_exit_2(capsys, evaluate_main, f"run={rte_runs['dcft']}", f"data.root={wrong}")
    assert "rte" in line and "label '1'" in line and "entailment" in line

    assert "not found" in expect_exit_2(capsys, evaluate_main, f"run={tmp_path / 'missing'}")
    assert "split='dev'" in expect_exit_2(capsys, evaluate_main, f"run={rte_runs['dcft']}", "split=dev")
    assert "cannot override 'method.r'" in expect_exit_2(capsys, evaluate_main, f"run={rte_runs['dcft']}",
                                                        "method.r=4")
    assert "not empty" in expect_exit_2(capsys, export_main, f"run={rte_runs['dcft']}", f"out={root}")


@pytest.mark.slow  # two entry points in subprocesses
def test_cli(rte_runs, tmp_path):
    """The real entry points in subprocesses: a success and a bad-input failure (exit 2, no traceback)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    run_dir = rte_runs["lora"]
    record = json.loads((run_dir / "results.json").read_text())
    ok = subprocess.run([sys.executable, "-m", "dcft_lab.evaluate", f"run={run_dir}", f"out={tmp_path}"],
                        capture_output=True, text=True, timeout=600, cwd=str(REPO), env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "equals the run record's final evaluation" in ok.stdout
    assert json.loads((tmp_path / "eval-validation.json").read_text())["metrics"] == record["metrics"]["final"]
    bad = subprocess.run([sys.executable, "-m", "dcft_lab.export", f"run={tmp_path / 'nope'}", "out=x"],
                         capture_output=True, text=True, timeout=600, cwd=str(REPO), env=env)
    assert bad.returncode == 2
    assert "run folder" in one_line_error(bad.stderr)


def test_input_files_file_or_test_split_one_line_errors(tmp_path, monkeypatch):
    """The one lookup behind split=test / file= for GLUE, SQuAD and summarization: file= wins, else the task's test
    file(s) under the data root; each missing piece is a one-line RunInputError saying what was expected."""
    from types import SimpleNamespace

    from dcft_lab.evaluate import _input_files
    from dcft_lab.saved_run import RunInputError

    monkeypatch.delenv("DCFT_LAB_DATA", raising=False)

    def saved(root):
        return SimpleNamespace(rc=SimpleNamespace(data=SimpleNamespace(root=root)), spec=SimpleNamespace(name="xsum"))

    given = tmp_path / "mine.jsonl"
    given.write_text("{}\n")
    test_files = lambda root: [root / "xsum" / "test.jsonl"]
    assert _input_files(saved(None), str(given), "JSON lines", test_files, "<data_root>/xsum/test.jsonl") == [given]
    (tmp_path / "xsum").mkdir()
    (tmp_path / "xsum" / "test.jsonl").write_text("{}\n")
    assert _input_files(saved(str(tmp_path)), None, "JSON lines", test_files, "<x>") == [tmp_path / "xsum" / "test.jsonl"]

    cases = [
        (saved(str(tmp_path)), str(tmp_path / "absent.jsonl"), test_files, r"^file: .*absent.jsonl not found; expected JSON lines$"),
        (saved(None), None, test_files, r"^no data root \(data.root / \$DCFT_LAB_DATA\) to find the test split of task 'xsum' in; expected <x>$"),
        (saved(str(tmp_path)), None, lambda root: [root / "xsum" / "test.jsonl", root / "other.jsonl"],
         r"^data folder .* has no test split for task 'xsum' \(hint\): .*other.jsonl not found; expected <x>$"),
    ]
    for saved_run, file, files, message in cases:
        with pytest.raises(RunInputError, match=message) as caught:
            _input_files(saved_run, file, "JSON lines", files, "<x>", hint=" (hint)")
        assert "\n" not in str(caught.value)
