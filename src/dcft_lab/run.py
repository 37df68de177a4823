"""``python -m dcft_lab.run [-m] key=value ...``: compose the config, run the job, leave a record.

Thin on purpose: composition is Hydra's (conf/), the work is ``training.execute``.
"""

from __future__ import annotations

import re
import secrets
import sys
from datetime import datetime
from hashlib import sha1
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .cluster import register_resolvers as _cluster_resolvers
from .paths import conf_dir

CONF_DIR = str(conf_dir())


def _dirname(override_dirname: str) -> str:
    """A run folder name from the command-line overrides: the same command -> the same folder (resume / skip)."""
    if not override_dirname:
        return "defaults"
    safe = re.sub(r"[^A-Za-z0-9=,._+-]", "_", override_dirname)
    if len(safe) > 120:  # keep paths short but still unique
        safe = safe[:100] + "__" + sha1(safe.encode()).hexdigest()[:10]
    return safe


OmegaConf.register_new_resolver("dcft_dirname", _dirname, replace=True)
_cluster_resolvers()  # ${dcft_slurm:...} (conf/trainer/default.yaml)


def compose_config(overrides: list[str], *, hydra_config: bool = False) -> DictConfig:
    """The composed (unvalidated) run config, exactly as ``python -m dcft_lab.run <overrides>`` builds it.

    ``hydra_config=True`` also composes the ``hydra`` node and makes it the current HydraConfig, so that
    ``${hydra:...}`` and ``${dcft_slurm:...}`` resolve as they would inside the job (the SLURM planner needs that).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=hydra_config)
    if hydra_config:
        HydraConfig.instance().set_config(cfg)
    return cfg


def _ensure_sweep_name(argv: list[str]) -> list[str]:
    """Give a multirun one explicit name, fixed before any job starts: its folder and its W&B group.

    Set here (not from the clock inside each job) so every job of the sweep agrees, and with a random suffix so two
    sweeps started in the same second never share a folder. Pass ``sweep_name=NAME`` to resume a sweep.
    """
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if multirun and not any(a.startswith(("sweep_name=", "+sweep_name=")) for a in argv):
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        # next to the other overrides: argparse wants the positional overrides in one run
        at = next((i for i, a in enumerate(argv[1:], 1) if "=" in a and not a.startswith("-")), 1)
        argv = [*argv[:at], f"sweep_name={stamp}_{secrets.token_hex(3)}", *argv[at:]]
    return argv


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from .config_schema import validate
    from .loggers import quiet_libraries
    from .training import execute

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:
        from .cluster import install_ddp_child_command

        install_ddp_child_command()  # DDP ranks > 0 of this job run this job, not the whole sweep again
    try:
        rc = validate(cfg)
        quiet_libraries(rc.run.verbose)  # the console: the run's own lines and the progress bar (run.verbose=false)
        if _global_rank() == 0:
            print(f"run folder: {run_dir}", flush=True)
        record = execute(rc, OmegaConf.to_container(cfg, resolve=True), run_dir)
    except Exception as err:  # noqa: BLE001 - bad config / data, or a failure execute() recorded; other sweep jobs go on
        return _fail(err, run_dir, multirun)
    except SystemExit as err:
        if not isinstance(err, SIGTERMException):
            raise  # e.g. submitit requeueing a pre-empted job: its exit code tells the scheduler what to do
        # Lightning's SIGTERMException: recorded, checkpoint saved; exit as killed by SIGTERM
        print(f"error: stopped by SIGTERM ({type(err).__name__}); rerun the same command to resume "
              f"[record: {run_dir / 'results.json'}]", file=sys.stderr)
        sys.exit(143)
    if _global_rank() == 0:  # DDP: one summary, from the process that wrote the record
        _print_summary(record, run_dir)


def _global_rank() -> int:
    """This process's global rank (Lightning's; set once a Trainer exists, from the environment before)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _fail(err: Exception, run_dir: Path, multirun: bool) -> None:
    from .records import RESULTS_FILE, SCHEMA_VERSION, read_results, write_json_atomic

    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    rank = _global_rank()
    if rank == 0 and read_results(run_dir) is None:  # failed before the run record existed (bad config, bad data)
        write_json_atomic(run_dir / RESULTS_FILE, {"schema_version": SCHEMA_VERSION, "status": "failed", "run_dir": str(run_dir),
                                                   "failure": {"type": type(err).__name__, "reason": message,
                                                               "step": None}})
    where = f"[rank {rank}] " if rank else ""
    print(f"error: {where}{message}  [{type(err).__name__}; record: {run_dir / RESULTS_FILE}]", file=sys.stderr)
    if not multirun:
        sys.exit(2 if isinstance(err, ValueError | FileNotFoundError) else 1)


def _print_summary(record: dict, run_dir: Path) -> None:
    if record.get("skipped"):
        print(f"already completed (run.overwrite=true to rerun): {run_dir / 'results.json'}")
    metric = record.get("main_metric")
    best, final = record["metrics"].get("best", {}), record["metrics"].get("final", {})
    print(f"{record['task']} | {record['method_label']} | {record['backbone']} | seed {record['seed']}")
    where = "held-out train" if (record.get("data") or {}).get("eval_source") == "train_holdout" else "dev"
    others = ", ".join(f"{name} {value:.2f}" for name, value in final.items() if name != metric)
    print(f"  {where} {metric}: best {best.get(metric, float('nan')):.2f} (step {record.get('best_step')}), "
          f"final {final.get(metric, float('nan')):.2f}" + (f" (final {others})" if others else ""))
    print(f"  adapter params {record['params']['adapter']:,}  trainable {record['params']['trainable']:,}  "
          f"wall {record.get('wall_time_total_s', record['wall_time_s']):.0f}s"  # records before the total
          + (f" over {record['attempts']} attempts" if record.get("attempts", 1) > 1 else ""))
    print(f"  results: {run_dir / 'results.json'}")


def cli() -> None:
    from .cluster import dry_run_requested, preview

    if dry_run_requested():  # DRY_RUN=1: print the resolved submission / process layout, run nothing
        sys.exit(preview(sys.argv[1:]))
    sys.argv = _ensure_sweep_name(sys.argv)
    main()


if __name__ == "__main__":
    cli()
