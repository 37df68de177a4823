"""The run record: results.json at the top of each run folder, always written atomically (write, then rename)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
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


CODE_PATHS = ("src", "conf", "experiments", "scripts", "pyproject.toml")  # what makes a run's numbers


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """HEAD of the dcft_lab checkout, with '+dirty' when its code (src/, conf/, experiments/, scripts/, the project
    file) has uncommitted changes or new files; results written into the checkout do not count. None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD", "--show-toplevel"], cwd=cwd, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        sha, top = head.stdout.splitlines()[:2]
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS], cwd=top,
                               capture_output=True, text=True, timeout=5)
        return sha + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict:
    import torch

    return {
        "packages": package_versions(),
        "git_commit": git_commit(),
        "source": str(Path(__file__).resolve().parent),  # which checkout ran (a pinned worktree, an installed copy)
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


class RunRecord(dict):
    """results.json of one attempt of a run, as training fills it in: the record's fields (this dict, in the order
    ``new_record`` gives them) plus where it is written (``path``), this attempt's clock and the process's global
    rank. ``save()`` is the one write: it stamps the wall time, then writes atomically from rank 0 only."""

    def __init__(self, fields: dict, path: str | os.PathLike, *, earlier_wall_s: float = 0.0, rank: int = 0):
        super().__init__(fields)
        self.path = Path(path)
        self.earlier_wall_s = earlier_wall_s  # the run's earlier attempts (resumes), as their records left it
        self.rank = rank  # global rank of this process (a DDP run's ranks > 0 write nothing)
        self.start = time.time()

    @classmethod
    def begin(cls, run_dir: str | os.PathLike, previous: dict | None, fresh_start: bool, rank: int,
              **fields: Any) -> RunRecord:
        """A new attempt's record (``new_record(**fields)``). After an earlier attempt (``previous``, its record) it
        counts the attempts, keeps how each earlier one ended and, unless ``fresh_start`` (an overwritten completed
        run: a new run), carries their wall time."""
        record = new_record(**fields, run_dir=str(run_dir))
        if previous:
            record["attempts"] = int(previous.get("attempts", 1)) + 1
            # how each earlier attempt ended, so a completed record still shows it was interrupted (and where)
            killed = f"attempt ended while {previous.get('status')} (no clean-up: SIGKILL, node failure)"
            ended = previous.get("failure") or {"type": "Killed", "reason": killed, "step": None}
            record["previous_failures"] = list(previous.get("previous_failures", [])) + [ended]
            # which code and versions each earlier attempt ran (this attempt's are in ``env``): a resume under
            # another commit shows here
            env = previous.get("env") or {}
            record["previous_attempts"] = list(previous.get("previous_attempts", [])) + [
                {"started_at": previous.get("started_at"), "git_commit": env.get("git_commit"),
                 "packages": env.get("packages")}]
        earlier = previous.get("wall_time_total_s", previous.get("wall_time_s")) if previous and not fresh_start \
            else None
        return cls(record, Path(run_dir) / RESULTS_FILE, earlier_wall_s=float(earlier or 0.0), rank=rank)

    def save(self) -> None:
        """Stamp this attempt's wall time and the run's total over all attempts (at every write, so a killed attempt
        leaves its time up to its last save for the resumed attempt to add on), then write the record (rank 0)."""
        now = time.time() - self.start
        self.update(wall_time_s=round(now, 3), wall_time_total_s=round(self.earlier_wall_s + now, 3))
        if self.rank == 0:
            write_json_atomic(self.path, self)


def process_rank() -> int:
    """This process's global rank (rank 0 writes the run's files: results.json, adapter, summary): Lightning's, set
    once a Trainer exists, before that from the environment (LOCAL_RANK of the processes it starts, SLURM_PROCID)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)
