"""Where a run reports: its Lightning loggers (one CSV log across resumes, W&B) and the console.

By default (``run.verbose=false``) the console shows the run's own lines -- its folder, one line per evaluation,
the final summary -- and Lightning's training progress bar; ``quiet_libraries`` silences the rest: transformers'
load reports and progress bars, datasets' progress bars (tokenization, caching), Lightning's info lines and W&B's
console output (start-up lines and the end-of-run epilogue; warnings and errors still show) and the libraries'
deprecation warnings. ``run.verbose=true`` leaves every library at its own default.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

log = logging.getLogger("dcft_lab")

_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric")
# wandb reads these when it first sets up in a process (its settings quiet / show_info)
_WANDB_QUIET_ENV = {"WANDB_QUIET": "true", "WANDB_SHOW_INFO": "false"}


# ---------------------------------------------------------------------------------------------------- console
class _LibraryInfoFilter(logging.Filter):
    """Drops Lightning's records below WARNING (a console handler's filter; the log file keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(_LIGHTNING_LOGGERS)


_LIBRARY_INFO = _LibraryInfoFilter()


def quiet_libraries(verbose: bool) -> None:
    """Quiet the console output of the libraries a run uses, process-wide, unless ``verbose`` (then: no change)."""
    import datasets
    import pytorch_lightning  # noqa: F401 - sets its loggers' levels on import: set ours afterwards
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as hf_logging

    if verbose:
        return
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # e.g. the LOAD REPORT of a pretrained backbone's newly initialized head
    # Lightning's info lines leave the console but stay in the run folder's run.log (Hydra's file handler)
    consoles = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    for name in _LIGHTNING_LOGGERS:  # Lightning's own handler, set up when it was imported before Hydra's logging
        consoles += logging.getLogger(name).handlers
    for handler in consoles:
        if _LIBRARY_INFO not in handler.filters:
            handler.addFilter(_LIBRARY_INFO)
    for key, value in _WANDB_QUIET_ENV.items():
        os.environ.setdefault(key, value)  # an explicit WANDB_QUIET / WANDB_SHOW_INFO wins
    # the libraries' deprecation notices (e.g. transformers' is_gradient_checkpointing) are for their callers' authors
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)


def console(trainer, line: str) -> None:
    """Print one line of the run's own output, above Lightning's progress bar when one is showing."""
    bar = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None
    if bar is not None and bar.is_enabled:
        bar.print(line)
    else:
        print(line, flush=True)


def evaluation_line(record: dict, evaluation: dict) -> str:
    """One evaluation, for the console: ``step 50: dev accuracy 69.38 (best 69.38 at step 50)``."""
    metric, metrics = record.get("main_metric"), evaluation["metrics"]
    where = "held-out train" if (record.get("data") or {}).get("eval_source") == "train_holdout" else "dev"
    best = (record.get("metrics") or {}).get("best") or {}
    line = f"step {evaluation['step']}: {where} {metric} {metrics.get(metric, float('nan')):.2f}"
    if metric in best:
        line += f" (best {best[metric]:.2f} at step {record.get('best_step')})"
    others = ", ".join(f"{name} {value:.2f}" for name, value in metrics.items() if name != metric)
    return line + (f"; {others}" if others else "")


# ---------------------------------------------------------------------------------------------------- loggers
def wandb_mode(requested: str) -> str:
    """auto: the WANDB_MODE environment variable if set, else online with an API key, else offline."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


WANDB_ID_FILE = "wandb_run_id.txt"  # in the run folder: the W&B run id, reused when the run resumes
# the numbers that tell one run of a method from another, as automatic W&B tags (the full config is the run config)
_METHOD_TAG_KEYS = {"dcft": ("kernel_size", "stride", "rank"), "lora": ("r",), "adalora": ("init_r", "target_r"),
                    "lokr": ("r", "decompose_factor")}
_MAX_TAG = 64  # W&B's limit on a tag's length


def auto_tags(rc) -> list[str]:
    """method, task, backbone, the method's key numbers (DCFT: kernel_size / stride / rank; LoRA: r; AdaLoRA:
    init_r / target_r; LoKr: r / decompose_factor) and the experiment, then ``logger.tags``; no duplicates."""
    method = rc.method
    tags = [method.name, rc.task.name, rc.backbone.name]
    for key in _METHOD_TAG_KEYS.get(method.name, ()):
        value = getattr(method, key, None)
        if key == "stride" and value is None:
            value = method.kernel_size  # DCFT's default stride is the kernel size
        tags.append(f"{key}={value}")
    if rc.experiment:
        tags.append(f"experiment={rc.experiment}")
    tags += [str(t) for t in rc.logger.tags]
    return list(dict.fromkeys(t[:_MAX_TAG] for t in tags))


def wandb_run_id(run_dir: Path, resuming: bool, write: bool = True) -> str:
    """The W&B run id of this run: the one in ``<run>/wandb_run_id.txt`` when the run resumes from its checkpoint
    (so its curves continue in the same W&B run), else a new one, written there (``write``: the process that owns
    the run folder, global rank 0)."""
    import secrets

    path = Path(run_dir) / WANDB_ID_FILE
    if resuming and path.is_file():
        previous = path.read_text(encoding="utf-8").strip()
        if previous:
            return previous
    run_id = secrets.token_hex(4)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n", encoding="utf-8")
    return run_id


def sync_command(run_dir: Path) -> str:
    """The command that uploads a run's offline W&B data (every attempt of a resumed run goes to the same run)."""
    return f"wandb sync {Path(run_dir) / 'wandb'}/offline-run-*"


def make_loggers(rc, run_dir: Path, resolved_config: dict, resume_step: int | None = None) -> list:
    """The run's Lightning loggers: ``<run>/csv/metrics.csv`` (logger.csv) and W&B (logger.wandb, mode per
    ``wandb_mode``, the full resolved config as the W&B run config, ``auto_tags``, the sweep as the group, and the
    run id of ``wandb_run_id``: a resumed run continues its W&B run). The W&B logger carries ``dcft_lab_info``
    (id, mode, project, group, tags) for the run record."""
    from .csv_logger import ContinuedCSVLogger

    loggers = []
    if rc.logger.csv:
        # a resumed run keeps the rows its earlier attempts logged before the checkpoint: one metrics.csv per run
        loggers.append(ContinuedCSVLogger(str(run_dir), name="csv", version="", keep_rows_before_step=resume_step))
    mode = wandb_mode(rc.logger.mode)
    if rc.logger.wandb and mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        cfg = rc.logger
        run_id = wandb_run_id(run_dir, resuming=resume_step is not None,
                              write=int(getattr(rank_zero_only, "rank", 0) or 0) == 0)
        group, tags = cfg.group or rc.sweep_name or rc.experiment, auto_tags(rc)
        wandb_logger = WandbLogger(
            project=cfg.project, entity=cfg.entity, group=group, tags=tags, save_dir=str(run_dir),
            offline=mode == "offline", name=run_dir.name, id=run_id, resume="allow",
            config={k: v for k, v in resolved_config.items() if k != "hydra"},  # the full resolved run config
        )
        if not rc.run.verbose:
            # Lightning always passes anonymous=None, which wandb warns about on every run ("has no effect")
            getattr(wandb_logger, "_wandb_init", {}).pop("anonymous", None)
        wandb_logger.dcft_lab_info = {"id": run_id, "mode": mode, "project": cfg.project, "entity": cfg.entity,
                                      "group": group, "tags": tags, "resumed": resume_step is not None}
        loggers.append(wandb_logger)
    return loggers


def finish_wandb() -> None:
    """Close the W&B run of this process, if one was started (its files are complete only after this)."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
