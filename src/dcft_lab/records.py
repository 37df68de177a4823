"""The run record: results.json at the top of each run folder, always written atomically (write, then rename)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1
_PACKAGES = ("torch", "transformers", "peft", "pytorch-lightning", "hydra-core", "omegaconf", "datasets",
             "torchmetrics", "wandb", "tokenizers", "numpy", "dcft_lab")


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Never leaves a half-written file: a crash mid-write keeps the previous version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600: teammates on a shared cluster could not read it
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=False, default=_jsonable)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give under the current umask (0644 for umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def make_shareable(folder: str | os.PathLike) -> None:
    """Give files that libraries wrote with mode 0600 (safetensors, PEFT's save_pretrained) the umask's mode."""
    mode = default_file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file():
            path.chmod(mode)


def read_results(run_dir: str | os.PathLike) -> dict | None:
    path = Path(run_dir) / RESULTS_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """HEAD of the dcft_lab checkout (with '+dirty' when it has uncommitted changes), or None."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict:
    import torch

    return {
        "packages": package_versions(),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "hostname": platform.node(),
    }


def new_record(*, task: str, method: str, method_label: str, backbone: str, seed: int, main_metric: str,
               config: dict, run_dir: str, experiment: str | None, sweep_group: str | None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "failure": None,
        "task": task,
        "method": method,
        "method_label": method_label,
        "backbone": backbone,
        "seed": seed,
        "experiment": experiment,
        "sweep_group": sweep_group,
        "main_metric": main_metric,
        "params": None,
        "metrics": {"best": {}, "final": {}},
        "best_step": None,
        "evaluations": [],
        "wall_time_s": None,  # this attempt's
        "wall_time_total_s": None,  # over all attempts of the run (resumes add up)
        "data": None,
        "config": config,
        "env": None,
        "run_dir": run_dir,
        "started_at": now_iso(),
        "finished_at": None,
        "attempts": 1,
    }
