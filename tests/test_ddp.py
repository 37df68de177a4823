"""Scale-out that keeps the numbers: 2-process DDP runs (Lightning's DDP on CPU with gloo, the code path of multi-GPU)
report exactly what one process would.

- Evaluation: the same trained adapter evaluated by 2 processes and by 1 gives identical metrics, for GLUE with an
  odd dev size (11 rows, eval batches 4/4/3), SQuAD (EM/F1 after answer extraction; 112 features in 23 batches),
  summarization (ROUGE of generated text) and the causal-LM sft task (token-weighted loss / perplexity). The 2-process numbers come from a
  2-process training run; its last checkpoint (trained weights) is then evaluated by a 1-process run.
- One writer: only global rank 0 writes results.json, the adapter, checkpoints, the CSV log and the summary; the
  record states world size, nodes, per-device / global batch and accumulation.
- Kill-and-resume: a SIGKILLed 2-process run, started again, ends exactly like the uninterrupted 2-process run.
- A DDP job of a multirun: rank 1 runs that job in its folder (not the sweep again).
- SLURM multi-node: hydra/launcher=slurm nodes=2 gpus_per_node=4 -> 4 tasks per node, Lightning sees 8 ranks;
  DRY_RUN=1 prints the sbatch script and the layout.
Tiny random backbones, a few steps, one thread per process. The runs (2 processes each) are slow tests
(make test-slow); the batch layout, sampler shares and SLURM layout checks are fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import default_glue_rows, write_glue_tsv_root

# A test's DDP runs take ~25 s on 2 loaded cores: the default per-test timeout (300 s, pyproject.toml) stops a hung
# gloo rendezvous.

REPO = Path(__file__).resolve().parents[1]
QUIET = ["logger=csv", "run.threads=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
# RTE, 16 training rows (global batch 4: 4 steps per epoch, 2 examples per process), 11 dev rows in eval batches of 4
GLUE = ["backbone=tiny-deberta", "task=rte", "method=dcft", "method.kernel_size=4", "optim.lr=5e-3",
        "task.train_batch_size=4", "task.eval_batch_size=4", "trainer.max_steps=6", "eval_every_n_steps=2"]
FAMILIES = {
    "squad": ["task=squad_v1", "backbone=tiny-deberta", "method=dcft", "task.max_length=128", "task.doc_stride=32",
              "task.train_batch_size=8", "task.eval_batch_size=5", "data.train_from_eval=8", "data.eval_limit=12"],
    "xsum": ["task=xsum", "backbone=tiny-bart", "method=dcft", "task.max_source_length=128",
             "task.train_batch_size=4", "task.eval_batch_size=3",
             "task.generation={num_beams: 2, max_length: 16, min_length: 8}", "data.train_from_eval=8",
             "data.eval_limit=15"],
    "sft": ["task=sft", "backbone=tiny-gpt2", "method=dcft", f"task.train_file={REPO / 'tests/data/sft_tiny_train.jsonl'}",
            f"task.eval_file={REPO / 'tests/data/sft_tiny_dev.jsonl'}", "task.max_length=64",
            "task.train_batch_size=4", "task.eval_batch_size=3"],
}
TWO_STEPS = ["trainer.max_steps=2", "eval_every_n_steps=2", "optim.lr=5e-3"]
# a metric of each family that is not 0 for these tiny models (so equal numbers are not trivially equal)
NONZERO = {"squad": "f1", "xsum": "rouge1", "sft": "loss"}

# Loaded into every Python process of a traced run (rank 0 and the rank Lightning starts): logs each file written
# (open for writing, os.replace / rename targets, chmod) under the run folder with the writing process's rank.
_TRACER = '''
import builtins, os
_dir, _log = os.environ["DCFT_TRACE_DIR"], os.environ["DCFT_TRACE_LOG"]
_open, _replace, _rename, _chmod = builtins.open, os.replace, os.rename, os.chmod
def _note(path):
    path = os.path.abspath(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else ""
    if path.startswith(_dir):
        with _open(_log, "a") as fh:
            fh.write(os.environ.get("LOCAL_RANK", "0") + "\\t" + os.path.relpath(path, _dir) + "\\n")
def _traced_open(file, mode="r", *args, **kwargs):
    if any(flag in mode for flag in "wax+"):
        _note(file)
    return _open(file, mode, *args, **kwargs)
def _traced_replace(src, dst, *args, **kwargs):
    _note(dst)
    return _replace(src, dst, *args, **kwargs)
def _traced_rename(src, dst, *args, **kwargs):
    _note(dst)
    return _rename(src, dst, *args, **kwargs)
def _traced_chmod(path, *args, **kwargs):
    _note(path)
    return _chmod(path, *args, **kwargs)
builtins.open, os.replace, os.rename, os.chmod = _traced_open, _traced_replace, _traced_rename, _traced_chmod
'''


def _alive_in_group(pgid: int) -> list[int]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def cli(run_dir: Path, *overrides: str, devices: int = 1, env: dict | None = None,
        wait_for_ranks: bool = True) -> subprocess.CompletedProcess:
    """python -m dcft_lab.run in its own session; with devices > 1 as 2-process DDP on CPU (gloo). Returns once
    every process of the command has exited (wait_for_ranks=False: leftover ranks are killed)."""
    layout = ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={devices}"] if devices > 1 else ["trainer=cpu"]
    cmd = [sys.executable, "-m", "dcft_lab.run", *layout, *QUIET, f"hydra.run.dir={run_dir}", *overrides]
    full_env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                    PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out, err = proc.communicate(timeout=600)
    deadline = time.time() + (120 if wait_for_ranks else 0)
    while _alive_in_group(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    if _alive_in_group(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)  # only processes this command started (its own session)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def record_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def evaluate_with_one_process(trained: Path, run_dir: Path, *overrides: str, env: dict | None = None) -> dict:
    """The evaluation one process makes of a run's last checkpoint: the checkpoint without its evaluation history,
    resumed at its final step by a 1-process run, which then only validates."""
    import torch

    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ckpt["dcft_lab"]["evaluations"] = []
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run_dir / "checkpoints" / "last.ckpt")
    single = cli(run_dir, *overrides, devices=1, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    record = record_of(run_dir)
    assert record["world_size"] == 1 and record["resumed_from"].endswith("last.ckpt")
    return record


@pytest.fixture(scope="module")
def glue_data(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ddp_glue")
    return write_glue_tsv_root(base, "rte", rows={"train.tsv": default_glue_rows("rte", n=16, tag="train"),
                                                  "dev.tsv": default_glue_rows("rte", n=11, tag="dev")})


@pytest.fixture(scope="module")
def glue_ddp(glue_data, tmp_path_factory):
    """An uninterrupted 2-process RTE run, every file write traced with the writing rank."""
    base = tmp_path_factory.mktemp("ddp_glue_run")
    run_dir, trace = base / "run", base / "writes.tsv"
    (base / "tracer").mkdir()
    (base / "tracer" / "sitecustomize.py").write_text(_TRACER)
    env = {"DCFT_LAB_DATA": str(glue_data), "DCFT_TRACE_DIR": str(run_dir), "DCFT_TRACE_LOG": str(trace),
           "PYTHONPATH": os.pathsep.join([str(base / "tracer"), os.environ.get("PYTHONPATH", "")])}
    run = cli(run_dir, *GLUE, devices=2, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    writes = [tuple(line.split("\t")) for line in trace.read_text().splitlines()]
    return SimpleNamespace(data=glue_data, run_dir=run_dir, record=record_of(run_dir), stdout=run.stdout,
                           writes=writes)


# ---- exact distributed evaluation --------------------------------------------------------------------------------
@pytest.mark.slow
def test_glue_odd_dev_size_two_processes_equal_one_process(glue_ddp, tmp_path):
    two = glue_ddp.record
    assert two["data"]["counts"]["validation"] == 11
    assert [e["step"] for e in two["evaluations"]] == [2, 4, 6]
    for evaluation in two["evaluations"]:  # k / 11: every dev example counted once (padding would give k / 12)
        correct = evaluation["metrics"]["accuracy"] * 11 / 100
        assert abs(correct - round(correct)) < 1e-4, evaluation
    one = evaluate_with_one_process(glue_ddp.run_dir, tmp_path / "one", *GLUE,
                                    env={"DCFT_LAB_DATA": str(glue_ddp.data)})
    assert [e["step"] for e in one["evaluations"]] == [6]
    assert one["evaluations"][0]["metrics"] == two["evaluations"][-1]["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_process_evaluation_equals_one_process(family, shared_data, tmp_path):
    overrides = [*FAMILIES[family], *TWO_STEPS]
    env = {"DCFT_LAB_DATA": str(shared_data)}
    two_dir = tmp_path / "two"
    run = cli(two_dir, *overrides, devices=2, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    two = record_of(two_dir)
    assert two["world_size"] == 2 and [e["step"] for e in two["evaluations"]] == [2]
    one = evaluate_with_one_process(two_dir, tmp_path / "one", *overrides, env=env)
    assert two["evaluations"][0]["metrics"][NONZERO[family]] > 0
    assert one["evaluations"][0]["metrics"] == two["evaluations"][0]["metrics"]  # floats, bit for bit
    assert one["data"] == {**two["data"], **{k: one["data"][k] for k in one["data"] if "cache" in k}}


# ---- one writer, and the record's process layout -----------------------------------------------------------------
@pytest.mark.slow
def test_only_rank_zero_writes_and_the_record_states_the_layout(glue_ddp):
    record = glue_ddp.record
    assert record["status"] == "completed"
    assert (record["world_size"], record["num_nodes"], record["devices_per_node"]) == (2, 1, 2)
    assert record["strategy"] == "DDPStrategy"
    assert record["batch"] == {"global": 4, "per_device": 2, "accumulate_grad_batches": 1, "eval": 4}
    assert record["config"]["trainer"]["devices"] == 2 and record["config"]["trainer"]["strategy"] == "ddp"
    # one summary line set, printed once
    assert glue_ddp.stdout.count("results: ") == 1 and glue_ddp.stdout.count("| seed 6") == 1
    by_rank = {}
    for rank, path in glue_ddp.writes:
        by_rank.setdefault(rank, set()).add(path)
    ours = lambda paths: {p for p in paths if not p.endswith(".log")}  # noqa: E731 - Hydra's per-process job logs
    assert "results.json" in by_rank["0"] and "adapter/adapter_config.json" in by_rank["0"]
    assert any(p.startswith("checkpoints/") for p in by_rank["0"]) and "csv/metrics.csv" in by_rank["0"]
    assert any(p.endswith(".log") for p in by_rank["1"])  # the tracer did run in rank 1 (its Hydra job log)
    assert ours(by_rank["1"]) == set(), by_rank["1"]


@pytest.mark.slow
def test_ddp_job_of_a_multirun_starts_its_ranks_as_that_job_alone(glue_data, tmp_path):
    # Lightning starts rank 1 by re-running the command line: under -m that would be the whole sweep again
    cmd = [sys.executable, "-m", "dcft_lab.run", "-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           *QUIET, *GLUE, "trainer.max_steps=2", f"hydra.sweep.dir={tmp_path}"]
    env = dict(os.environ, DCFT_LAB_DATA=str(glue_data), WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert len(jobs) == 1 and (jobs[0] / "train_ddp_process_1.log").exists()  # rank 1 ran in the job's folder
    record = record_of(jobs[0])
    assert record["status"] == "completed" and record["world_size"] == 2 and record["global_steps"] == 2


def test_a_multirun_jobs_ddp_ranks_are_started_as_that_job_alone(monkeypatch, tmp_path):
    """The in-process half of the test above: the command Lightning runs for rank 1 of a multirun job is that job's
    overrides as a single run in the job's folder, and install_ddp_child_command() puts it where Lightning looks."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict
    from pytorch_lightning.strategies.launchers import subprocess_script

    from dcft_lab.cluster import hydra_child_command, install_ddp_child_command

    overrides = ["trainer=ddp", "trainer.devices=2", "task=rte", "seed=3"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        job = compose("config", overrides=overrides, return_hydra_config=True)
    job_dir = tmp_path / "sweep" / "seed=3"
    with open_dict(job):
        job.hydra.overrides.task = [*overrides, f"hydra.run.dir={tmp_path / 'elsewhere'}"]
        job.hydra.runtime.output_dir, job.hydra.runtime.cwd = str(job_dir), str(tmp_path)
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job)
    try:
        command, cwd = hydra_child_command(1)
    finally:
        HydraConfig.instance().cfg = previous
    assert command == [sys.executable, "-m", "dcft_lab.run", *overrides, f'hydra.run.dir="{job_dir}"',
                       "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    assert cwd == str(tmp_path)
    # Lightning's hook: a rename in a Lightning release would leave rank 1 re-running the whole sweep
    assert callable(getattr(subprocess_script, "_hydra_subprocess_cmd", None))
    monkeypatch.setattr(subprocess_script, "_hydra_subprocess_cmd", subprocess_script._hydra_subprocess_cmd)
    install_ddp_child_command()
    assert subprocess_script._hydra_subprocess_cmd is hydra_child_command


def test_global_batch_must_divide_over_devices_and_accumulation():
    from dcft_lab.training import batch_layout

    trainer = SimpleNamespace(world_size=8, num_devices=4, num_nodes=2, accumulate_grad_batches=2)
    assert batch_layout(32, trainer) == {"global": 32, "per_device": 2, "accumulate_grad_batches": 2}
    with pytest.raises(ValueError, match=r"train_batch_size=24 is the global batch .* expected a multiple of 16$"):
        batch_layout(24, trainer)


def test_process_layout_keys_override_without_plus():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import dcft_lab.run  # noqa: F401 - registers the resolvers
    from dcft_lab.config_schema import validate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                           "trainer.num_nodes=2", "trainer.strategy=ddp_spawn",
                                           "trainer.accumulate_grad_batches=4"])
        default = compose("config", overrides=[])
    trainer = validate(cfg).trainer
    assert (trainer["devices"], trainer["num_nodes"], trainer["strategy"], trainer["accumulate_grad_batches"],
            trainer["accelerator"]) == (2, 2, "ddp_spawn", 4, "cpu")
    plain = OmegaConf.to_container(default.trainer, resolve=True)
    assert (plain["devices"], plain["num_nodes"], plain["strategy"]) == (1, 1, "auto")


# ---- kill-and-resume under DDP -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_of_a_two_process_run_then_rerun_matches_uninterrupted(glue_ddp, tmp_path):
    # checkpoints after the evaluation at step 2 and at step 3 (periodic); every rank SIGKILLs itself at step 4:
    # the rerun resumes from step 3, in the middle of epoch 0 (4 steps per epoch), and crosses into epoch 1
    env = {"DCFT_LAB_DATA": str(glue_ddp.data)}
    killed = cli(tmp_path, *GLUE, "run.checkpoint_every_n_steps=3", "run.inject_failure=kill:4", devices=2, env=env,
                 wait_for_ranks=False)
    assert killed.returncode == -signal.SIGKILL
    assert record_of(tmp_path)["status"] == "running"
    resumed = cli(tmp_path, *GLUE, "run.checkpoint_every_n_steps=3", devices=2, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final, reference = record_of(tmp_path), glue_ddp.record
    assert final["status"] == "completed" and final["resumed_from"].endswith("last.ckpt")
    assert [f["type"] for f in final["previous_failures"]] == ["Killed"]
    assert final["evaluations"] == reference["evaluations"] and final["metrics"] == reference["metrics"]
    rows = lambda run_dir: (run_dir / "csv" / "metrics.csv").read_text().splitlines()  # noqa: E731
    assert len(rows(tmp_path)) > 6 and rows(tmp_path) == rows(glue_ddp.run_dir)


def test_a_nan_loss_on_one_rank_stops_every_rank_at_that_step(glue_ddp, tmp_path):
    # without the all-reduce, rank 1 would raise alone and rank 0 would wait in the next gradient all-reduce
    # until the process-group timeout
    started = time.time()
    failed = cli(tmp_path, *GLUE, "run.inject_failure=nan_loss_last_rank:2", devices=2,
                 env={"DCFT_LAB_DATA": str(glue_ddp.data)})
    assert failed.returncode != 0 and time.time() - started < 240
    record = record_of(tmp_path)
    assert record["status"] == "failed" and record["failure"]["type"] == "NonFiniteLossError"
    assert record["failure"]["step"] == 2 and "on another process" in record["failure"]["reason"]  # rank 0 writes


# ---- the samplers behind it (no processes) -----------------------------------------------------------------------
@pytest.mark.parametrize("n, batch", [(16, 2), (11, 2), (3, 2), (7, 3)])
def test_ddp_train_shares_are_the_global_batches_split(n, batch):
    from dcft_lab.data.resumable import EpochShuffleSampler

    single = list(EpochShuffleSampler(n, seed=6, batch_size=batch * 2))
    shares = [list(EpochShuffleSampler(n, seed=6, batch_size=batch, rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == -(-n // 2)
    steps = [shares[0][i:i + batch] + shares[1][i:i + batch] for i in range(0, len(shares[0]), batch)]
    padded = single + single[: len(shares[0]) * 2 - n]  # odd n: one example repeated (wrapping around)
    assert [i for step in steps for i in step] == padded  # each optimizer step sees the single-process batch
    for done in range(len(steps) + 1):  # resumed after `done` batches: the rest of the epoch, or the next epoch
        resumed = EpochShuffleSampler(n, seed=6, batch_size=batch, rank=1, world_size=2)
        resumed.resume_at(0, done)
        if done < len(steps):
            assert resumed.epoch == 0 and list(resumed) == shares[1][done * batch:]
        else:
            following = EpochShuffleSampler(n, seed=6, batch_size=batch, rank=1, world_size=2)
            following.set_epoch(1)
            assert resumed.epoch == 1 and list(resumed) == list(following)


@pytest.mark.parametrize("n, batch, world", [(11, 4, 2), (5, 2, 3), (3, 4, 2), (8, 2, 4)])
def test_eval_batches_are_the_single_process_batches_each_once(n, batch, world):
    from dcft_lab.data.resumable import EvalBatches

    single = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    seen = {}
    for rank in range(world):
        sampler = EvalBatches(n, batch, rank, world)
        assert len(sampler) >= 1  # every process runs the same collectives, even without a batch of its own
        for local, rows in enumerate(sampler):
            index = sampler.global_index(local)
            if index is not None:
                assert index not in seen and rows == single[index]
                seen[index] = rows
    assert sorted(seen) == list(range(len(single)))


# ---- SLURM, several nodes ----------------------------------------------------------------------------------------
def test_slurm_two_nodes_of_four_gpus_is_one_job_of_eight_ranks(monkeypatch):
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from lightning_fabric.plugins.environments import SLURMEnvironment
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    import dcft_lab.run  # noqa: F401 - registers the resolvers
    from dcft_lab.config_schema import validate

    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2",
                 "hydra.launcher.gpus_per_node=4", "sweep_name=t"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        full = compose("config", overrides=overrides, return_hydra_config=True)
    launcher = full.hydra.launcher
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(full)  # as inside the submitted job
    try:
        trainer_cfg = validate(full).trainer
    finally:
        HydraConfig.instance().cfg = previous
    assert (trainer_cfg["devices"], trainer_cfg["num_nodes"]) == (4, 2)

    # what one of the 8 SLURM tasks sees (rank 5 = node 1, local rank 1); CPU stands in for the GPUs here
    slurm = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2", "SLURM_PROCID": "5",
             "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NAME": "dcft", "SLURM_JOB_ID": "42",
             "SLURM_NODELIST": "node[1-2]"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    rank = rank_zero_only.rank
    try:
        trainer = pl.Trainer(**{**trainer_cfg, "accelerator": "cpu", "logger": False, "enable_checkpointing": False})
        assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
        assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (8, 5, 1, 1)
        trainer.strategy.cluster_environment.validate_settings(num_devices=4, num_nodes=2)  # Lightning's own check
    finally:
        rank_zero_only.rank = rank


def test_dry_run_prints_the_sbatch_script_and_the_layout(tmp_path):
    env = dict(os.environ, DRY_RUN="1")
    out = subprocess.run([sys.executable, "-m", "dcft_lab.run", "-m", "hydra/launcher=slurm",
                          "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4", "task=rte,mrpc",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --array=0-1%2", "#SBATCH --signal=USR2@120"):
        assert line in text, text
    assert text.count("devices=4 num_nodes=2 -> 8 process(es)") == 2
    assert "batch: global 32 = 4 per device x 8 process(es)" in text
    assert not (tmp_path / "sweep").exists()  # nothing submitted
