"""Helpers shared by the end-to-end tests: compose a run config, run it in-process or through the CLI, read its logs."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dcft_lab.compose import CONF_DIR, compose_config  # noqa: F401 - re-exported: the tests compose through them

REPO = Path(__file__).resolve().parents[1]

# A tiny, fast run: 3 optimizer steps of batch 4 on 6-row TSVs, one thread, CSV log only.
TINY_RUN = [
    "backbone=tiny-deberta", "logger=csv", "trainer.max_steps=3", "task.train_batch_size=4",
    "task.eval_batch_size=8", "task.max_length=32", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1", "run.threads=1",
]


class TwoLinear(nn.Module):
    """The smallest model with two adaptable matrices of different shapes (proj: d_in x d_hidden, out)."""

    def __init__(self, d_in: int = 16, d_hidden: int = 24, d_out: int = 8):
        super().__init__()
        self.proj = nn.Linear(d_in, d_hidden)
        self.out = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.out(torch.tanh(self.proj(x)))


def reference_update(B, A, C, stride):
    """DCFT's ΔW (d_in x d_out) as the paper defines it, independent of the adapter's code: a transposed
    convolution of F = B @ A with kernel C."""
    return F.conv_transpose2d((B @ A)[None, None], C[None, None], stride=stride)[0, 0]


@contextlib.contextmanager
def restored_globals():
    """A run sets process-wide state (torch threads, deterministic algorithms, seed env vars): put it back."""
    import torch

    threads, deterministic, environ = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), dict(os.environ)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        os.environ.clear()
        os.environ.update(environ)


def run_inprocess(overrides: list[str], run_dir: Path, data_root: Path | None = None) -> dict:
    """compose -> validate -> execute in this process; returns the run record (raises what execute raises)."""
    from omegaconf import OmegaConf

    from dcft_lab.config_schema import validate
    from dcft_lab.training import execute

    data = [f"data.root={data_root}", f"data.cache_dir={run_dir.parent / 'cache'}"] if data_root else []
    cfg = compose_config([*TINY_RUN, *data, *overrides])
    with restored_globals():
        return execute(validate(cfg), OmegaConf.to_container(cfg, resolve=True), Path(run_dir))


def run_cli(args: list[str], run_dir: Path, data_root: Path | None, timeout: int = 300,
            **env: str) -> subprocess.CompletedProcess:
    """``python -m dcft_lab.run TINY_RUN args`` in a subprocess, offline, writing into run_dir."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "DCFT_LAB_CACHE": str(run_dir.parent / "cache"), "HYDRA_FULL_ERROR": "0", **env}
    full_env.pop("DCFT_LAB_DATA", None)
    if data_root is not None:
        full_env["DCFT_LAB_DATA"] = str(data_root)
    cmd = [sys.executable, "-m", "dcft_lab.run", *TINY_RUN, *args, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))


def one_line_error(stderr: str) -> str:
    """The user-facing error line our CLI prints ("error: ..."), after checking that no traceback was printed."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def read_csv_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def logged_values(rows: list[dict], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r.get(column) not in (None, "")]


# data-module constructor arguments that are not config keys (the factory / a test passes them)
_DATAMODULE_EXTRAS = ("split_seed", "eval_split", "fallback_train_cap", "fallback_eval_limit")


def task_and_data(task: str, **settings):
    """(TaskSpec, TaskConfig, DataConfig) of ``task`` as a run composes them (conf/task/<task>.yaml and
    conf/config.yaml's data block), with ``settings`` applied: each key goes to the section that has it
    (``data_root`` is ``data.root``; paths become strings)."""
    from dataclasses import fields

    from dcft_lab.config_schema import TaskConfig, section
    from dcft_lab.data.tasks import get_task

    task_fields = {f.name for f in fields(TaskConfig)}
    task_node: dict = {"name": task}
    data_node: dict = {}
    for key, value in settings.items():
        key = "root" if key == "data_root" else key
        value = str(value) if isinstance(value, os.PathLike) else value
        (task_node if key in task_fields else data_node)[key] = value
    return get_task(task), section("task", task_node), section("data", data_node)


def make_datamodule(cls, task: str, tokenizer, seed: int = 0, **settings):
    """``cls`` built for ``task`` the way a run builds it (``task_and_data``), plus the constructor's non-config
    arguments (split_seed, eval_split, fallback_train_cap, fallback_eval_limit) when given."""
    extras = {k: settings.pop(k) for k in _DATAMODULE_EXTRAS if k in settings}
    spec, task_cfg, data_cfg = task_and_data(task, **settings)
    return cls(spec, task_cfg, data_cfg, tokenizer, seed, **extras)
