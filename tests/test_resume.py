"""Kill-and-resume: a run SIGKILLed or SIGTERMed at any point and started again with the same command ends exactly
like an uninterrupted run (adapter, optimizer, scheduler, data position and dropout RNG all restored).

12 training rows, batch 4: 3 batches per epoch, so global steps 0-2 are epoch 0, 3-5 epoch 1, 6-7 epoch 2. The
cases cover a checkpoint in the middle of an epoch and one taken on the last batch of an epoch (the resumed run
must start the next epoch, not replay or skip one).

Each run killed by a signal, and its rerun, is a process of its own: slow tests (make test-slow). The fast suite
resumes an in-process run that failed with an error (the same checkpoint, record and log logic).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import default_glue_rows, write_glue_tsv_root
from helpers import run_inprocess

# The slowest test (3 runs in 3 processes) takes ~90 s on 2 loaded cores; the default timeout (300 s) applies.


def _run(root, run_dir, *extra, method=("method=dcft", "method.kernel_size=4")):
    env = dict(os.environ, DCFT_LAB_DATA=str(root), WANDB_MODE="offline", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    flags = [a for a in extra if a.startswith("-")]
    cmd = [sys.executable, "-m", "dcft_lab.run", *flags, "backbone=tiny-deberta", "task=rte", *method, "logger=csv",
           f"hydra.run.dir={run_dir}", "trainer.max_steps=8",
           "task.train_batch_size=4", "eval_every_n_steps=4", "trainer.enable_progress_bar=false", "optim.lr=5e-3",
           "run.threads=1", "trainer.log_every_n_steps=1", *[a for a in extra if not a.startswith("-")]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The data root and the record of one uninterrupted run without any checkpointing (the reference)."""
    base = tmp_path_factory.mktemp("resume")
    root = write_glue_tsv_root(base, "rte", rows={"train.tsv": default_glue_rows("rte", n=12, tag="train"),
                                                  "dev.tsv": default_glue_rows("rte", n=8, tag="dev")})
    straight = _run(root, base / "straight", "run.checkpoint_every_n_steps=0")
    assert straight.returncode == 0, straight.stderr[-2000:]
    record = json.loads((base / "straight" / "results.json").read_text())
    assert [e["step"] for e in record["evaluations"]] == [4, 8]
    return root, record


def _csv_rows(run_dir):
    return (run_dir / "csv" / "metrics.csv").read_text().splitlines()


def _assert_same_run(resumed_record, reference):
    assert resumed_record["status"] == "completed"
    assert resumed_record.get("resumed_from", "").endswith("last.ckpt")
    assert [e["step"] for e in resumed_record["evaluations"]] == [4, 8]
    assert [e["epoch"] for e in resumed_record["evaluations"]] == [e["epoch"] for e in reference["evaluations"]]
    assert resumed_record["evaluations"] == reference["evaluations"]
    assert resumed_record["metrics"] == reference["metrics"]
    # one metrics.csv for the whole run: the earlier attempt's rows before the checkpoint, then the resumed ones
    straight_csv, resumed_csv = _csv_rows(Path(reference["run_dir"])), _csv_rows(Path(resumed_record["run_dir"]))
    assert len(straight_csv) > 3 and resumed_csv == straight_csv


@pytest.mark.slow
@pytest.mark.parametrize("kill_step, every", [(5, 2), (7, 3)], ids=["mid-epoch", "checkpoint-at-epoch-end"])
def test_sigkill_then_rerun_matches_uninterrupted(tmp_path, uninterrupted, kill_step, every):
    # (5, 2): last checkpoint after step 4, mid-epoch 1; (7, 3): last checkpoint after step 6 = the end of epoch 1
    root, reference = uninterrupted
    killed = _run(root, tmp_path, f"run.checkpoint_every_n_steps={every}", f"run.inject_failure=kill:{kill_step}")
    assert killed.returncode == -signal.SIGKILL
    partial = json.loads((tmp_path / "results.json").read_text())
    assert partial["status"] == "running"  # what a hard kill leaves: a complete, readable record
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()

    resumed = _run(root, tmp_path, f"run.checkpoint_every_n_steps={every}")  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = json.loads((tmp_path / "results.json").read_text())
    assert [f["type"] for f in final["previous_failures"]] == ["Killed"]
    _assert_same_run(final, reference)
    # the killed attempt's time up to its last evaluation (step 4) stays in the run's total
    assert 0 < partial["wall_time_s"] == partial["wall_time_total_s"]
    assert final["wall_time_total_s"] == pytest.approx(partial["wall_time_total_s"] + final["wall_time_s"], abs=2e-3)


@pytest.mark.slow
def test_an_attempt_killed_before_its_first_evaluation_keeps_the_earlier_attempts_time(tmp_path, uninterrupted):
    root, _ = uninterrupted
    first = _run(root, tmp_path, "run.checkpoint_every_n_steps=2", "run.inject_failure=kill:5")  # after eval at 4
    assert first.returncode == -signal.SIGKILL
    earlier = json.loads((tmp_path / "results.json").read_text())["wall_time_total_s"]
    second = _run(root, tmp_path, "run.checkpoint_every_n_steps=2", "run.inject_failure=kill:5")  # resumes at 4
    assert second.returncode == -signal.SIGKILL
    partial = json.loads((tmp_path / "results.json").read_text())
    assert partial["attempts"] == 2 and partial["status"] == "running"
    assert partial["wall_time_total_s"] == pytest.approx(earlier + partial["wall_time_s"], abs=2e-3)
    assert partial["wall_time_total_s"] > earlier > 0


@pytest.mark.slow
@pytest.mark.parametrize("term_step", [4, 5], ids=["mid-epoch", "last-batch-of-epoch"])
def test_sigterm_saves_a_checkpoint_and_the_rerun_matches_uninterrupted(tmp_path, uninterrupted, term_step):
    root, reference = uninterrupted
    # no periodic checkpoints: the SIGTERM during step `term_step` writes the checkpoint the rerun resumes from
    stopped = _run(root, tmp_path, "run.checkpoint_every_n_steps=0", f"run.inject_failure=sigterm:{term_step}")
    assert stopped.returncode == 143, stopped.stderr[-2000:]  # "killed by SIGTERM", what schedulers expect
    assert "rerun the same command to resume" in stopped.stderr
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "failed" and record["failure"]["type"] == "SIGTERMException"
    step = record["failure"]["step"]  # the report shows the reason: it must say the run is resumable, and where
    # the signal comes just before optimizer step `term_step` (0-based); Lightning stops once that batch is done
    assert step == term_step + 1 and record["failure"]["reason"] == (
        f"stopped by SIGTERM at step {step}; checkpoint saved, rerun the same command to resume")
    resumed = _run(root, tmp_path, "run.checkpoint_every_n_steps=0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = json.loads((tmp_path / "results.json").read_text())
    assert final["attempts"] == 2 and [f["type"] for f in final["previous_failures"]] == ["SIGTERMException"]
    _assert_same_run(final, reference)
    assert final["wall_time_total_s"] == pytest.approx(record["wall_time_total_s"] + final["wall_time_s"], abs=2e-3)
    assert record["wall_time_total_s"] > 0


@pytest.mark.slow
def test_scheduler_preemption_checkpoints_requeues_and_the_requeued_job_matches_uninterrupted(tmp_path, uninterrupted):
    # The real chain under Hydra's submitit launcher (local flavour here, SLURM on a cluster): the pre-emption signal
    # (SIGUSR2) arrives during step 4; the run saves a checkpoint at the end of that batch, submitit requeues the job,
    # the requeued job (same overrides, so the same run folder) resumes from step 5 and completes.
    root, reference = uninterrupted
    sweep = tmp_path / "sweep"
    done = _run(root, tmp_path / "unused", "-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}",
                "run.checkpoint_every_n_steps=0", "run.inject_failure=preempt:4")
    assert done.returncode == 0, done.stderr[-2000:]
    [results] = sweep.glob("*/results.json")
    final = json.loads(results.read_text())
    assert final["attempts"] == 2
    assert [f["type"] for f in final["previous_failures"]] == ["Preempted"]
    _assert_same_run(final, reference)
    logs = "".join(p.read_text(errors="ignore") for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs


ADALORA = ("method=adalora", "method.init_r=4", "method.target_r=2", "method.tinit=1", "method.tfinal=2",
           "method.deltaT=1")


@pytest.mark.slow
def test_adalora_sigkill_then_rerun_matches_uninterrupted(tmp_path, uninterrupted):
    # AdaLoRA prunes ranks from step 1 on from importance scores it accumulates every step (its allocator's state):
    # the resumed run must restore them to prune the same ranks and log the same losses
    root, _ = uninterrupted
    straight = _run(root, tmp_path / "straight", "run.checkpoint_every_n_steps=0", method=ADALORA)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _run(root, tmp_path / "killed", "run.checkpoint_every_n_steps=2", "run.inject_failure=kill:5",
                  method=ADALORA)
    assert killed.returncode == -signal.SIGKILL
    resumed = _run(root, tmp_path / "killed", "run.checkpoint_every_n_steps=2", method=ADALORA)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference = json.loads((tmp_path / "straight" / "results.json").read_text())
    _assert_same_run(json.loads((tmp_path / "killed" / "results.json").read_text()), reference)


def test_preempt_hook_outside_a_scheduler_is_a_clear_error(tmp_path, glue_tsv_root):
    with pytest.raises(ValueError, match="needs a submitit launcher"):
        run_inprocess(["task=rte", "run.inject_failure=preempt:2"], tmp_path / "run", glue_tsv_root("rte"))


def test_a_failed_in_process_run_started_again_resumes_and_matches_uninterrupted(tmp_path):
    """The fast suite's resume check: a run that fails in step 5 (its last checkpoint after step 4, mid-epoch 1),
    started again, resumes from that checkpoint and ends exactly like the uninterrupted run: evaluations, metrics, the
    CSV log, the attempts and the total wall time."""
    root = write_glue_tsv_root(tmp_path, "rte", rows={"train.tsv": default_glue_rows("rte", n=12, tag="train"),
                                                      "dev.tsv": default_glue_rows("rte", n=8, tag="dev")})
    run = ["task=rte", "method=dcft", "method.kernel_size=4", "trainer.max_steps=8", "eval_every_n_steps=4",
           "optim.lr=5e-3"]
    reference = run_inprocess([*run, "run.checkpoint_every_n_steps=0"], tmp_path / "straight", root)
    run_dir = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="injected failure at step 5"):
        run_inprocess([*run, "run.checkpoint_every_n_steps=2", "run.inject_failure=train_step:5"], run_dir, root)
    partial = json.loads((run_dir / "results.json").read_text())
    assert partial["status"] == "failed" and partial["failure"]["step"] == 5
    assert [e["step"] for e in partial["evaluations"]] == [4] and partial["wall_time_total_s"] > 0
    final = run_inprocess([*run, "run.checkpoint_every_n_steps=2"], run_dir, root)
    assert final["attempts"] == 2 and [f["type"] for f in final["previous_failures"]] == ["RuntimeError"]
    _assert_same_run(final, reference)
    assert final["wall_time_total_s"] == pytest.approx(partial["wall_time_total_s"] + final["wall_time_s"], abs=2e-3)


def test_resume_position_callback_tells_the_data_module_where_the_epoch_stood():
    """callbacks.ResumePosition reads the fit loop's progress from the checkpoint (epoch, batches processed)."""
    from types import SimpleNamespace

    from dcft_lab.callbacks import ResumePosition

    loops = {"fit_loop": {"epoch_progress": {"current": {"processed": 1, "completed": 1}},
                          "epoch_loop.batch_progress": {"current": {"processed": 2, "completed": 1}}}}
    datamodule = SimpleNamespace()
    ResumePosition().on_load_checkpoint(SimpleNamespace(datamodule=datamodule), None, {"loops": loops})
    assert datamodule.resume_position == (1, 2)
    untouched = SimpleNamespace()  # a checkpoint without loop progress (weights only) sets nothing
    ResumePosition().on_load_checkpoint(SimpleNamespace(datamodule=untouched), None, {})
    assert not hasattr(untouched, "resume_position")


@pytest.mark.slow
def test_sigterm_in_the_batch_before_an_evaluation_keeps_that_evaluation(tmp_path):
    """SIGTERM during the training batch an evaluation follows: Lightning aborts that evaluation and, resumed from a
    checkpoint saved at the end of the batch, would skip it for good. The rerun must still make every evaluation."""
    root = write_glue_tsv_root(tmp_path, "rte", rows={"train.tsv": default_glue_rows("rte", n=12, tag="train"),
                                                      "dev.tsv": default_glue_rows("rte", n=8, tag="dev")})
    every = ["run.checkpoint_every_n_steps=0", "eval_every_n_steps=2", "task.eval_batch_size=2"]  # 4 eval batches
    straight = _run(root, tmp_path / "straight", *every)
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert [e["step"] for e in reference["evaluations"]] == [2, 4, 6, 8]
    run_dir = tmp_path / "stopped"
    stopped = _run(root, run_dir, *every, "run.inject_failure=sigterm:3")  # the batch from step 3 to 4
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    resumed = _run(root, run_dir, *every)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = json.loads((run_dir / "results.json").read_text())
    assert [e["step"] for e in final["evaluations"]] == [2, 4, 6, 8]
    assert final["evaluations"] == reference["evaluations"] and final["metrics"] == reference["metrics"]
