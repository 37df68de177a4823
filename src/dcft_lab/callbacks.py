"""The run's Lightning callbacks: its checkpoints, the data position a resumed run starts from, and the
fault-injection testing hook.

- ``checkpoint_callbacks``: one resume point per run, ``last_checkpoint(run_dir)`` (``<run>/checkpoints/last.ckpt``),
  written by Lightning's ModelCheckpoint (every ``run.checkpoint_every_n_steps`` steps or at each evaluation) and by
  ``LastCheckpoint`` (after every evaluation, and at the end of the batch during which SIGTERM arrived),
- ``ResumePosition``: a resumed run's data module skips the batches of the interrupted epoch already trained,
- ``FaultInjection``: ``run.inject_failure`` fails a run the ways real runs fail, at a chosen optimizer step.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The run's resume point: ``<run>/checkpoints/last.ckpt``."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_callbacks(run_dir: str | os.PathLike, every_n_steps: int, evaluates_every_n_steps: bool
                         ) -> list[pl.Callback]:
    """Lightning's ModelCheckpoint keeping only ``last_checkpoint(run_dir)`` (every ``every_n_steps`` optimizer
    steps, or 0: at each evaluation), plus ``LastCheckpoint``, which rewrites the same file after every evaluation
    and on SIGTERM."""
    path = last_checkpoint(run_dir)
    # enable_version_counter=False: LastCheckpoint writes last.ckpt too, and Lightning would otherwise save its own
    # "last" beside it as last-v1.ckpt (two resume points, one stale)
    lightning = ModelCheckpoint(dirpath=path.parent, save_last=True, save_top_k=0, enable_version_counter=False,
                                every_n_train_steps=every_n_steps or None,
                                save_on_train_epoch_end=False if evaluates_every_n_steps else None)
    lightning.CHECKPOINT_NAME_LAST = path.name.removesuffix(lightning.FILE_EXTENSION)  # "last": last.ckpt
    return [lightning, LastCheckpoint(path)]


class LastCheckpoint(pl.Callback):
    """Overwrites the run's last checkpoint after every evaluation, so a resumed run also keeps the evaluation it just
    made, and at the end of the batch during which SIGTERM arrived (scancel; a scheduler's pre-emption signal is
    turned into SIGTERM too, see preemption.py), so the rerun (or the requeued job) resumes there."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        trainer.save_checkpoint(str(self.path), weights_only=False)  # explicit: Lightning logs a line per save otherwise

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # SIGTERM: Lightning stops after this batch (SIGTERMException). When an evaluation follows the batch, Lightning
        # aborts it, and a run resumed from a checkpoint saved here would skip it for good; keep the checkpoint of the
        # last evaluation instead: the rerun repeats the steps since (exactly) and makes this evaluation.
        if trainer.received_sigterm and not _evaluates_after_this_batch(trainer):
            trainer.save_checkpoint(str(self.path))


def _evaluates_after_this_batch(trainer: pl.Trainer) -> bool:
    loop = trainer.fit_loop.epoch_loop  # Lightning's own rule (private API; pinned by tests/test_resume.py)
    return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))


# ------------------------------------------------------------------------------------------- resume position
class ResumePosition(pl.Callback):
    """When fit resumes from a checkpoint, tells the data module (``resume_position``: epoch, batches done) where
    the interrupted epoch stood, so its train loader skips the batches already trained (data/resumable.py)."""

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        epoch = loops.get("epoch_progress", {}).get("current", {}).get("processed")
        # "processed" counts the batch whose on_train_batch_end saved the checkpoint (SIGTERM); "completed" lags by one
        done = loops.get("epoch_loop.batch_progress", {}).get("current", {}).get("processed")
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and epoch is not None and done is not None:
            datamodule.resume_position = (int(epoch), int(done))


# ------------------------------------------------------------------------------------------- fault injection
INJECT_KINDS = ("train_step", "nan_loss", "nan_loss_last_rank", "kill", "sigterm", "preempt")  # run.inject_failure: "start" | "<kind>:<step>"


def parse_inject(spec: str | None) -> tuple[str, int] | None:
    """``run.inject_failure`` (testing aid) as (kind, step); None when unset or "start"; malformed is an error."""
    if not spec or spec == "start":
        return None
    name, _, step = spec.partition(":")
    if name not in INJECT_KINDS or not step.strip().isdigit():
        raise ValueError(f"run.inject_failure={spec!r}; expected 'start' or one of "
                         f"{', '.join(k + ':<step>' for k in INJECT_KINDS)}")
    return name, int(step)


def fault_injection(spec: str | None) -> FaultInjection | None:
    """The callback for ``run.inject_failure``, None when unset; "start" fails right here, before anything is built."""
    parsed = parse_inject(spec)
    if spec == "start":
        raise RuntimeError("injected failure at start (run.inject_failure)")
    return FaultInjection(*parsed, spec=spec) if parsed else None


class FaultInjection(pl.Callback):
    """``run.inject_failure=<kind>:<step>``, a testing aid. Just before the training step of optimizer step ``step``
    (every later one too for train_step, kill and nan_loss):

    - train_step: an error, recorded as the run's failure,
    - kill: SIGKILL, no clean-up (a pre-empted node),
    - sigterm: SIGTERM (scancel), so the run checkpoints and stops,
    - preempt: the scheduler's pre-emption signal (``use_scheduler_signal``; submitit launchers only),
    - nan_loss: the model's loss becomes NaN; nan_loss_last_rank: on the last DDP rank only.

    Under DDP every process fires it at the same step (kill: all ranks die there, as on a node failure).
    """

    def __init__(self, kind: str, step: int, spec: str | None = None):
        if kind not in INJECT_KINDS:
            raise ValueError(f"unknown fault injection {kind!r}; expected one of {', '.join(INJECT_KINDS)}")
        self.kind, self.step = kind, step
        self.spec = spec or f"{kind}:{step}"  # as configured, for messages
        self.signum: int | None = None  # preempt: the signal the scheduler sends (use_scheduler_signal)
        self._nan_next_loss = False
        self._hook = None

    def use_scheduler_signal(self, signum: int | None) -> None:
        """The pre-emption signal submitit handles in this process (preemption.scheduler_signal); preempt:N needs it."""
        if self.kind == "preempt" and signum is None:
            raise ValueError(f"run.inject_failure={self.spec!r} needs a submitit launcher "
                             "(-m hydra/launcher=local or slurm): only submitit handles the pre-emption signal")
        self.signum = signum

    def _fires(self, trainer: pl.Trainer, kind: str, from_step_on: bool = False) -> bool:
        if self.kind != kind:
            return False
        return trainer.global_step >= self.step if from_step_on else trainer.global_step == self.step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._fires(trainer, "train_step", from_step_on=True):
            raise RuntimeError(f"injected failure at step {trainer.global_step} (run.inject_failure)")
        if self._fires(trainer, "kill", from_step_on=True):
            os.kill(os.getpid(), signal.SIGKILL)  # die like a pre-empted node, no clean-up
        if self._fires(trainer, "sigterm"):
            os.kill(os.getpid(), signal.SIGTERM)  # scancel / pre-emption notice
        if self._fires(trainer, "preempt"):
            os.kill(os.getpid(), self.signum)  # SLURM's time-limit / pre-emption signal
        self._nan_next_loss = self._fires(trainer, "nan_loss", from_step_on=True) or (
            self._fires(trainer, "nan_loss_last_rank", from_step_on=True)
            and trainer.global_rank == trainer.world_size - 1)

    # nan_loss: a forward hook on the module's model adds NaN to the loss of the training step's forward pass
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.kind.startswith("nan_loss") and stage == "fit" and self._hook is None:
            self._hook = pl_module.model.register_forward_hook(self._poison_loss)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _poison_loss(self, model: Any, args: Any, output: Any) -> Any:
        if self._nan_next_loss:
            self._nan_next_loss = False
            output.loss = output.loss + float("nan")
        return output
