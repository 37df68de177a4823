"""Multi-process and multi-node runs: the SLURM launcher -> Lightning layout and DDP child processes under Hydra.

- ``${dcft_slurm:KEY,DEFAULT}`` (conf/trainer/default.yaml; the resolver is ``compose.slurm_layout``): under
  ``hydra/launcher=slurm`` the launcher's value of KEY (``tasks_per_node`` -> ``trainer.devices``, ``nodes`` ->
  ``trainer.num_nodes``), else DEFAULT. So ``hydra.launcher.nodes=2 hydra.launcher.gpus_per_node=4`` is one SLURM job
  of 2 x 4 tasks in which Lightning runs 8 DDP ranks (it checks devices == --ntasks-per-node and num_nodes == --nodes).
- ``install_ddp_child_command()``: Lightning starts DDP ranks > 0 on one machine by running the command line again;
  inside a Hydra multirun that would be the whole sweep. Each rank > 0 instead runs this job alone, in its folder.
- ``python -m dcft_lab.cluster [-m] OVERRIDES`` is the dry run (``dry_run.py``; also ``python -m dcft_lab.dry_run`` and
  ``DRY_RUN=1 python -m dcft_lab.run ...``): submits and trains nothing; prints each job's process layout and batch
  split and, under ``hydra/launcher=slurm``, the sbatch script submitit would submit.
"""

from __future__ import annotations

import sys


# ---- DDP ranks > 0 of a Hydra job ------------------------------------------------------------------------------------
def hydra_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning runs for DDP rank ``local_rank`` (> 0) of this Hydra job: this job's overrides as a
    single run in this job's folder (Lightning's own choice re-runs sys.argv: under -m, the whole sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    command = [sys.executable, "-m", "dcft_lab.run", *overrides, f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
               f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null"]
    return command, get_original_cwd()


def install_ddp_child_command() -> None:
    """Make Lightning start this Hydra job's DDP ranks > 0 with ``hydra_child_command`` (multirun jobs)."""
    from pytorch_lightning.strategies.launchers import subprocess_script

    if hasattr(subprocess_script, "_hydra_subprocess_cmd"):
        subprocess_script._hydra_subprocess_cmd = hydra_child_command


if __name__ == "__main__":
    from .dry_run import main

    sys.exit(main())
