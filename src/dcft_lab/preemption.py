"""Checkpoint-then-requeue on a cluster's pre-emption / time-limit signal.

Under submitit (Hydra's SLURM and local launchers) the scheduler sends SIGUSR2 ``signal_delay_s`` before a time
limit or on pre-emption; submitit's handler asks the launcher for a resubmission, requeues the job and exits at
once, in the middle of whatever step was running, so the work since the last periodic checkpoint would be lost.
While training runs, this notice instead turns the signal into Lightning's SIGTERM stop: ``callbacks.LastCheckpoint``
saves a checkpoint at the end of the current batch, Lightning logs it and stops, and only then is the signal handed to
submitit, so the requeued job (same command, same run folder) resumes exactly there.
"""

from __future__ import annotations

import os
import signal
from typing import Any


def _handled_by(signum: int, package: str) -> bool:
    handler = signal.getsignal(signum)
    return getattr(handler, "__module__", "").split(".")[0] == package


def scheduler_signal() -> signal.Signals | None:
    """The pre-emption signal when submitit handles one in this process (submitit's own choice), else None."""
    signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    return signum if signum is not None and _handled_by(signum, "submitit") else None


class PreemptionNotice:
    def __init__(self, signum: signal.Signals):
        self.signum = signum
        self.pending: tuple[int, Any] | None = None
        self.forwarded = False  # the signal reached submitit: the job is being requeued
        self._original: Any = None
        self._installed = False

    def install(self) -> PreemptionNotice:
        self._original = signal.getsignal(self.signum)
        signal.signal(self.signum, self._on_signal)
        self._installed = True
        return self

    def restore(self) -> None:
        if self._installed:
            signal.signal(self.signum, self._original)
            self._installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.pending = (signum, frame)
        if _handled_by(signal.SIGTERM, "pytorch_lightning") or _handled_by(signal.SIGTERM, "lightning"):
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's graceful stop; forward_pending() follows trainer.fit
        else:
            self.forward_pending()  # not inside a fit: nothing to save first

    def forward_pending(self) -> None:
        """Hand a received signal to submitit, which requeues the job and exits (SystemExit)."""
        if self.pending is None:
            return
        signum, frame = self.pending
        self.pending = None
        self.restore()
        self.forwarded = True
        if callable(self._original):
            self._original(signum, frame)
