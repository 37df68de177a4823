"""``python -m dcft_lab.run [-m] key=value ...``: compose the config, run the job, leave a record.

Thin on purpose: composition is Hydra's (conf/), the work is ``training.execute``. Before Hydra starts, ``cli``
composes and checks every job of the command line (``check_jobs``: the config check without torch, about a
second), so a bad override is one ``error:`` line and exit code 2 before anything is imported, launched or written;
after a multirun it prints "N of M jobs failed" with each failed job's folder and exits 1.
"""

from __future__ import annotations

import re
import secrets
import sys
from datetime import datetime
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .compose import CONF_DIR, compose_config, describe_hydra_error, group_options  # noqa: F401 - re-exported
from .records import process_rank


def _ensure_sweep_name(argv: list[str]) -> list[str]:
    """Give a multirun one explicit name, fixed before any job starts: its folder and its W&B group.

    Set here (not from the clock inside each job) so every job of the sweep agrees, and with a random suffix so two
    sweeps started in the same second never share a folder. Pass ``sweep_name=NAME`` to resume a sweep.
    """
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if multirun and not any(a.startswith(("sweep_name=", "+sweep_name=")) for a in argv):
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        label = sweep_label([a for a in argv[1:] if not a.startswith("-")])
        # next to the other overrides: argparse wants the positional overrides in one run
        at = next((i for i, a in enumerate(argv[1:], 1) if "=" in a and not a.startswith("-")), 1)
        argv = [*argv[:at], f"sweep_name={label + '_' if label else ''}{stamp}_{secrets.token_hex(3)}", *argv[at:]]
    return argv


_LABEL_GROUPS = ("experiment", "task", "method", "backbone")  # fixed choices that name a sweep, in this order


def sweep_label(overrides: list[str]) -> str:
    """A readable start for a sweep's name (its folder under multirun/ and its W&B group): the fixed experiment /
    task / method / backbone, then ``by-`` the swept keys -- ``-m experiment=glue/mnli method.kernel_size=2,8
    method.rank=1,2`` gives ``glue-mnli_by-kernel_size-rank``. '' when nothing names it or the overrides do not
    parse (the composition check reports that)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - check_jobs says what is wrong with them
        return ""
    fixed, swept = {}, []
    for override in parsed:
        key = override.key_or_group
        if key.startswith(("hydra.", "hydra/")) or key == "sweep_name":
            continue
        if override.is_sweep_override():
            swept.append(key.rsplit(".", 1)[-1])
        elif key in _LABEL_GROUPS:
            fixed[key] = str(override.value())
    parts = [fixed[k] for k in _LABEL_GROUPS if k in fixed]
    if swept:
        parts.append("by-" + "-".join(dict.fromkeys(swept)))
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-_")
    return label[:60].rstrip("-_")


# ---- before Hydra: every job composed and checked ---------------------------------------------------------------
_EXPLICIT_SWEEP = ("sweep_name=", "+sweep_name=")


def _is_multirun(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv)


def _overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if a not in ("-m", "--multirun")]


def check_jobs(argv: list[str]) -> list[Path]:
    """Compose every job of ``python -m dcft_lab.run argv`` (a multirun expanded as Hydra's basic sweeper does) and
    check it (``validate(light=True)``: no torch, PEFT or Lightning import); returns each job's run folder.
    Raises ConfigError, one line naming the job's bad key or value (Hydra's composition errors rewritten to one
    line, with close names for a typo)."""
    from .config_schema import ConfigError, validate
    from .dry_run import _job_overrides

    multirun = _is_multirun(argv)
    overrides = _overrides(argv)
    try:
        jobs = _job_overrides(overrides) if multirun else [overrides]
    except Exception as err:  # noqa: BLE001 - Hydra's override parser: one line
        raise ConfigError(describe_hydra_error(err, overrides)) from None
    folders = []
    for job in jobs:
        try:
            cfg = compose_config(job, hydra_config=True)
            folder = (Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)) if multirun else Path(cfg.hydra.run.dir)
        except Exception as err:  # noqa: BLE001 - composition errors (Hydra's or OmegaConf's): one line
            raise ConfigError(describe_hydra_error(err, job)) from None
        finally:
            _forget_hydra_config()
        try:
            validate(cfg, light=True)
        except ConfigError as err:
            prefix = f"job {' '.join(o for o in job if not o.startswith(_EXPLICIT_SWEEP))}: " if len(jobs) > 1 else ""
            raise ConfigError(f"{prefix}{err}") from None
        folders.append(folder)
    return folders


def _forget_hydra_config() -> None:
    """compose_config(hydra_config=True) made its config the current HydraConfig; Hydra's own run sets its own."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None


def _sweep_summary(folders: list[Path]) -> int:
    """After a multirun: "N of M jobs failed" and each failed job's folder and reason; 1 if any failed, else 0."""
    from .records import read_results

    failed = []
    for folder in folders:
        record = read_results(folder)
        if record is None:
            failed.append((folder, "no results.json (the job did not start, or was killed before writing it)"))
        elif record.get("status") != "completed":
            failure = record.get("failure") or {}
            reason = f"{failure.get('type', record.get('status'))}: {failure.get('reason', '?')}" if failure \
                else f"status '{record.get('status')}' (killed: no clean-up)"
            failed.append((folder, reason))
    sweep = folders[0].parent if folders else Path(".")
    if failed:
        print(f"{len(failed)} of {len(folders)} jobs failed (rerun the same command, with sweep_name={sweep.name}, "
              "to retry only those):", file=sys.stderr)
        for folder, reason in failed:
            print(f"  {folder}: {reason}", file=sys.stderr)
    else:
        print(f"{len(folders)} of {len(folders)} jobs completed: {sweep}")
    offline = sorted(sweep.glob("*/wandb/offline-run-*"))
    if offline:
        print(f"W&B offline runs: wandb sync {sweep}/*/wandb/offline-run-*")
    return 1 if failed else 0


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
        if process_rank() == 0:
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
    if process_rank() == 0:  # DDP: one summary, from the process that wrote the record
        _print_summary(record, run_dir)


def _fail(err: Exception, run_dir: Path, multirun: bool) -> None:
    from .records import RESULTS_FILE, SCHEMA_VERSION, read_results, write_json_atomic

    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    rank = process_rank()
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
    wandb = record.get("wandb") or {}
    if wandb.get("sync"):  # offline: W&B's own epilogue (with this command) is muted
        print(f"  W&B offline (run id {wandb.get('id')}): {wandb['sync']}")


HELP = """usage: python -m dcft_lab.run [-m] [key=value ...]

Train one run (-m: a sweep, one job per combination of comma-separated values) and write its record,
outputs/<task>/<backbone>/<overrides>/results.json (a sweep: multirun/<sweep_name>/<overrides>/). The same command
again resumes an interrupted run and skips a completed one. Every job's config is checked before anything starts.

  python -m dcft_lab.run experiment=quickstart                       # the README's quickstart (CPU, a few minutes)
  python -m dcft_lab.run experiment=glue/mnli trainer=gpu            # the paper's setting for a GLUE task
  python -m dcft_lab.run -m experiment=glue/rte method.kernel_size=2,4,8 hydra/launcher=slurm
  DRY_RUN=1 python -m dcft_lab.run -m ...   # check every job (config, data root, adapter shapes), print the layout

Config groups (group=option):
{groups}

Any value: key=value (optim.lr=1e-3, method.rank=2, trainer.max_epochs=3, early_stopping.enabled=true, ...).
The composed config: python -m dcft_lab.run --cfg job --resolve [overrides]; Hydra's own help: --hydra-help.
After training: python -m dcft_lab.evaluate --help, python -m dcft_lab.export --help,
python -m dcft_lab.report --help; parameter counts: python -m dcft_lab.params --help. Details: README.md."""
_HYDRA_LAUNCHERS = ("basic", "submitit_local", "submitit_slurm")  # Hydra's own options beside conf/hydra/launcher/


def _help() -> str:
    """The run's --help, from conf/ alone (no composition: instant)."""
    groups = sorted({p.parent.relative_to(CONF_DIR).parts[0] for p in Path(CONF_DIR).glob("*/*.yaml")} - {"hydra"})
    lines = [f"  {group}: {', '.join(sorted(group_options(group)))}" for group in groups]
    lines.append(f"  hydra/launcher: {', '.join(sorted({*group_options('hydra/launcher'), *_HYDRA_LAUNCHERS}))}")
    return HELP.format(groups="\n".join(lines))


def cli() -> None:
    from .dry_run import dry_run_requested, preview

    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        main()  # Hydra's own flags (--help, --cfg job, --info, -cp, ...): Hydra as usual
        return
    if dry_run_requested():  # DRY_RUN=1: check every job, print the submission / process layout, run nothing
        sys.exit(preview(argv))
    sys.argv = _ensure_sweep_name(sys.argv)
    from .config_schema import ConfigError

    try:
        folders = check_jobs(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
    if _is_multirun(argv):
        sys.exit(_sweep_summary(folders))


if __name__ == "__main__":
    cli()
