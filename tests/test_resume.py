"""Kill-and-resume: a run SIGKILLed mid-epoch and started again with the same command ends exactly like an
uninterrupted run (adapter, optimizer, scheduler, data position and dropout RNG all restored)."""

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(300)


def _run(root, run_dir, *extra):
    env = dict(os.environ, DCFT_LAB_DATA=str(root), WANDB_MODE="offline", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "dcft_lab.run", "backbone=tiny-deberta", "task=rte", "method=dcft",
           "method.kernel_size=4", "logger=csv", f"hydra.run.dir={run_dir}", "trainer.max_steps=8",
           "task.train_batch_size=4", "eval_every_n_steps=4", "run.checkpoint_every_n_steps=2",
           "trainer.enable_progress_bar=false", "optim.lr=5e-3", "run.threads=1", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted(tmp_path, glue_tsv_root, glue_rows):
    # 12 training rows, batch 4: 3 batches per epoch, so step 5 is in the middle of the second epoch
    root = glue_tsv_root("rte", rows={"train.tsv": glue_rows("rte", n=12, tag="train"),
                                      "dev.tsv": glue_rows("rte", n=8, tag="dev")})
    straight = _run(root, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = _run(root, tmp_path / "killed", "run.inject_failure=kill:5")
    assert killed.returncode == -signal.SIGKILL
    partial = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert partial["status"] == "running"  # what a hard kill leaves: a complete, readable record
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").exists()

    resumed = _run(root, tmp_path / "killed")  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "straight" / "results.json").read_text())
    b = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert b["status"] == "completed" and b.get("resumed_from", "").endswith("last.ckpt")
    assert [e["step"] for e in b["evaluations"]] == [e["step"] for e in a["evaluations"]] == [4, 8]
    assert b["evaluations"] == a["evaluations"]
    assert b["metrics"] == a["metrics"]


def test_sigterm_saves_a_checkpoint_and_the_rerun_matches_uninterrupted(tmp_path, glue_tsv_root, glue_rows):
    root = glue_tsv_root("rte", rows={"train.tsv": glue_rows("rte", n=12, tag="train"),
                                      "dev.tsv": glue_rows("rte", n=8, tag="dev")})
    straight = _run(root, tmp_path / "straight", "run.checkpoint_every_n_steps=0")
    assert straight.returncode == 0, straight.stderr[-2000:]
    # no periodic checkpoints: SIGTERM during the 5th batch (mid-epoch) writes the checkpoint the rerun resumes from
    stopped = _run(root, tmp_path / "stopped", "run.checkpoint_every_n_steps=0", "run.inject_failure=sigterm:4")
    assert stopped.returncode != 0
    record = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert record["status"] == "failed" and record["failure"]["type"] == "SIGTERMException"
    resumed = _run(root, tmp_path / "stopped", "run.checkpoint_every_n_steps=0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "straight" / "results.json").read_text())
    b = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert b["status"] == "completed" and b["attempts"] == 2
    assert b["evaluations"] == a["evaluations"] and b["metrics"] == a["metrics"]
