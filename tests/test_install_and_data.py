"""A machine other than this one (issue 32): the package accepts the user's CUDA torch (a range, the exact CPU pin only
in make / CI's constraints), and without a local data root the runs load the public datasets from the hub, saying so,
while the Makefile keeps offline only when a local copy exists."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess

import pytest

from helpers import REPO, run_inprocess


# ---- install ---------------------------------------------------------------------------------------------------
def test_package_takes_a_torch_range_and_make_pins_the_cpu_build():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: only this test needs a TOML reader
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if re.match(r"torch\b", d)]
    assert torch == ["torch>=2.4"], torch  # no exact pin: a site / CUDA torch >= 2.4 satisfies it
    pins = [line.strip() for line in (REPO / "constraints-cpu.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins == ["torch==2.13.0"]
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints-cpu.txt" in makefile
    assert "pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'" in makefile


# ---- data without a local copy ---------------------------------------------------------------------------------
def _make_env(repo, **env) -> dict:
    """DCFT_LAB_DATA and HF_HUB_OFFLINE as the Makefile exports them to its commands, in a copy of the repo at `repo`."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("Makefile", "constraints-cpu.txt"):
        shutil.copy(REPO / name, repo / name)
    clean = {k: v for k, v in env.items() if v is not None}
    proc = subprocess.run(["make", "--no-print-directory", "--eval",
                           "show: ; @echo \"DATA=$$DCFT_LAB_DATA OFF=$$HF_HUB_OFFLINE\"", "show"],
                          cwd=str(repo), capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **clean})
    assert proc.returncode == 0, proc.stderr
    data, off = re.match(r"DATA=(.*) OFF=(.*)", proc.stdout.strip()).groups()
    return {"data": data, "offline": off}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_makefile_offline_only_with_a_local_copy(tmp_path):
    # a fresh clone on a machine without ../shared/data: no data root, hub on
    assert _make_env(tmp_path / "a" / "repo") == {"data": "", "offline": ""}
    # a local copy in ./data (or ../shared/data): used, and offline by default (HF_TOKEN: online)
    (tmp_path / "b" / "repo" / "data").mkdir(parents=True)
    assert _make_env(tmp_path / "b" / "repo") == {"data": str(tmp_path / "b" / "repo" / "data"), "offline": "1"}
    (tmp_path / "c" / "shared" / "data").mkdir(parents=True)
    assert _make_env(tmp_path / "c" / "repo") == {"data": str(tmp_path / "c" / "shared" / "data"), "offline": "1"}
    assert _make_env(tmp_path / "c" / "repo", HF_TOKEN="x")["offline"] == "0"
    # an explicit root wins
    assert _make_env(tmp_path / "a" / "repo", DCFT_LAB_DATA="/elsewhere")["data"] == "/elsewhere"


def test_no_local_root_loads_the_hub_dataset_and_says_so(monkeypatch, tmp_path, caplog):
    """No data root: GLUE comes from the hub (here a stand-in for datasets.load_dataset: no network on this
    machine), with one line saying so."""
    import datasets

    import dcft_lab.data.glue as glue

    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        rows = {"sentence": [f"hub sentence {i}" for i in range(6)], "label": [i % 2 for i in range(6)],
                "idx": list(range(6))}
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(glue.datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("DCFT_LAB_DATA", raising=False)
    with caplog.at_level(logging.INFO, logger="dcft_lab"):
        record = run_inprocess(["task=sst2", "data.root=null", f"data.cache_dir={tmp_path / 'cache'}"],
                               tmp_path / "run")
    assert record["status"] == "completed"
    assert calls == [("nyu-mll/glue", "sst2", "train"), ("nyu-mll/glue", "sst2", "validation")]
    assert record["data"]["sources"] == {"train": "hub", "validation": "hub"}
    notes = [r.getMessage() for r in caplog.records if "Hugging Face hub" in r.getMessage()]
    assert notes == ["data: no local data root (data.root / $DCFT_LAB_DATA unset): loading the public sst2 dataset "
                     "from the Hugging Face hub (no token needed)"]


def test_hub_failure_names_the_offline_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("DCFT_LAB_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        run_inprocess(["task=sst2", "data.root=null", f"data.cache_dir={tmp_path / 'cache'}"], tmp_path / "run")
    message = str(info.value)
    assert "(no data root) not found and hub load nyu-mll/glue/sst2 failed" in message
    assert "HF_HUB_OFFLINE=1 is set" in message and "\n" not in message


def test_local_root_gives_no_hub_note():
    from types import SimpleNamespace

    from dcft_lab.build import hub_fallback_note

    task = SimpleNamespace(name="rte", train_file=None)
    assert hub_fallback_note(SimpleNamespace(root="/data", source="auto"), task) is None
    assert hub_fallback_note(SimpleNamespace(root=None, source="local"), task) is None
    assert "rte" in hub_fallback_note(SimpleNamespace(root=None, source="auto"), task)


# ---- the README's GPU path -------------------------------------------------------------------------------------
def test_readme_gpu_table_matches_the_paper_settings():
    """Each `experiment=glue/<task>` row of the README's GPU table states the epochs and batch its config has, and the
    README no longer calls the generic `method=dcft task=mnli` the paper's defaults."""
    from helpers import compose_config

    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `glue/(\w+)` \| ≈ [\d,]+ \((\d+) epochs(?:, batch (\d+))?\) \|", readme, re.MULTILINE)
    assert sorted(task for task, *_ in rows) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]
    for task, epochs, batch in rows:
        cfg = compose_config([f"experiment=glue/{task}"])
        assert cfg.trainer.max_epochs == int(epochs), task
        assert cfg.task.train_batch_size == int(batch or 32), task
    assert not re.search(r"method=dcft task=mnli\s+#.*paper defaults", readme)
    assert "python -m dcft_lab.run experiment=glue/mnli trainer=gpu" in readme
