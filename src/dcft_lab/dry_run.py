"""The dry run: ``python -m dcft_lab.dry_run [-m] OVERRIDES`` (the same as ``python -m dcft_lab.cluster ...`` and
``DRY_RUN=1 python -m dcft_lab.run ...``) submits and trains nothing. It prints what the run would launch -- each job's
process layout and batch split and, under ``hydra/launcher=slurm``, the sbatch script submitit would submit -- and
checks every job as far as can be done without training: the full config check, the data root, and the adapter on a
meta-device model (no weights, no memory). Exit 0 when every job passes, 1 when a job has an error (an ``ERROR:`` line
under it), 2 when the command line does not compose (one ``error:`` line).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .compose import SLURM_LAUNCHER


def dry_run_requested() -> bool:
    return os.environ.get("DRY_RUN", "").strip() not in ("", "0", "false", "False")


def _job_overrides(overrides: list[str]) -> list[list[str]]:
    """Every job of a (possibly sweeping) override list, as Hydra's basic sweeper would expand it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(job) for batch in batches for job in batch]


def _layout_line(trainer: dict, gpus_per_node: int | None) -> tuple[str, int | None]:
    devices, nodes = trainer.get("devices", 1), int(trainer.get("num_nodes", 1) or 1)
    per_node = devices if isinstance(devices, int) and devices > 0 else None
    if per_node is None and devices in (-1, "-1", "auto") and trainer.get("accelerator") == "gpu" and gpus_per_node:
        per_node = gpus_per_node  # every visible GPU of the node
    world = per_node * nodes if per_node else None
    text = (f"strategy={trainer.get('strategy', 'auto')} accelerator={trainer.get('accelerator', 'auto')} "
            f"devices={devices} num_nodes={nodes} -> "
            + (f"{world} process(es) (DDP ranks)" if world else "as many processes as devices found"))
    return text, world


def _batch_line(task: dict, trainer: dict, world: int | None) -> str:
    global_batch, accumulate = int(task["train_batch_size"]), int(trainer.get("accumulate_grad_batches", 1) or 1)
    if not world:
        return f"batch: global {global_batch}, accumulate_grad_batches {accumulate} (per device: set devices to see)"
    share = world * accumulate
    if global_batch % share:
        return (f"batch: ERROR task.train_batch_size={global_batch} is the global batch and does not divide over "
                f"{world} process(es) x {accumulate} accumulation step(s) = {share}")
    return (f"batch: global {global_batch} = {global_batch // share} per device x {world} process(es) x "
            f"{accumulate} accumulation step(s); eval batches of {task['eval_batch_size']} per forward pass")


def _import_submitit_quietly():
    """``import submitit`` without its logging set-up: on first import submitit runs ``logging.config.dictConfig``,
    which shuts down every existing handler of the process -- and where the streams are redirected (a notebook,
    pytest's capsys) some handlers close the stream they write to (absl's, via rouge-score). A dry run needs none of
    submitit's log lines."""
    if "submitit" in sys.modules:
        return sys.modules["submitit"]
    previous = os.environ.get("SUBMITIT_LOG_LEVEL")
    os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
    try:
        import submitit
    finally:
        if previous is None:
            os.environ.pop("SUBMITIT_LOG_LEVEL", None)
        else:
            os.environ["SUBMITIT_LOG_LEVEL"] = previous
    return submitit


def _sbatch(launcher: dict, n_jobs: int) -> str:
    """The sbatch script Hydra's submitit SLURM launcher would submit (its own parameter mapping)."""
    submitit = _import_submitit_quietly()
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    params = {k: v for k, v in launcher.items() if k != "_target_"}
    affinity = SlurmExecutor.__dict__["affinity"]
    SlurmExecutor.affinity = classmethod(lambda cls: 2)  # build the script off the cluster too (no srun here)
    try:
        executor = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"],
                                         slurm_max_num_timeout=params["max_num_timeout"])
    finally:
        SlurmExecutor.affinity = affinity
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("max_num_timeout", "submitit_folder")})
    slurm = executor._executor
    if n_jobs > 1:
        slurm.parameters["map_count"] = n_jobs  # an array job, as executor.map_array submits it
    folder = Path(str(params["submitit_folder"]))
    return slurm._make_submission_file_text(
        f"{sys.executable} -u -m submitit.core._submit {folder}", "dry_run")


def preview(argv: Sequence[str]) -> int:
    """Print what ``python -m dcft_lab.run [-m] argv`` would launch and check every job as far as can be done
    without training: the full config check, the data root, and the adapter on a meta-device model (no weights,
    no memory) so a kernel that does not fit a matrix shows up here. Submits and trains nothing. Returns 0 when every
    job passes, 1 when a job has an error, 2 when the command line itself does not compose; one line per error, no
    tracebacks."""
    from hydra.core.hydra_config import HydraConfig

    previous = HydraConfig.instance().cfg
    try:
        return _preview(list(argv))
    except Exception as err:  # noqa: BLE001 - a dry run answers in lines, never a traceback
        from .compose import describe_hydra_error

        print(f"error: {describe_hydra_error(err, [a for a in argv if a not in ('-m', '--multirun')])}",
              file=sys.stderr)
        return 2
    finally:
        HydraConfig.instance().cfg = previous  # compose_config(hydra_config=True) sets it to resolve the jobs' configs


def _preview(argv: list[str]) -> int:
    import warnings

    from omegaconf import OmegaConf

    from .compose import compose_config
    from .config_schema import ConfigError, validate

    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    if not any(o.startswith(("sweep_name=", "+sweep_name=")) for o in overrides):
        overrides.append("sweep_name=DRY_RUN")
    jobs = _job_overrides(overrides)
    for category in (DeprecationWarning, FutureWarning):  # the libraries' notices while building the meta models
        warnings.filterwarnings("ignore", category=category)
    configs = [compose_config(job, hydra_config=True) for job in jobs]  # every job composes, or one line (exit 2)
    first = configs[0]
    _use_hydra_config(first)
    launcher = OmegaConf.to_container(first.hydra.launcher, resolve=True)
    target = str(launcher.get("_target_", "basic"))
    slurm = target.endswith(SLURM_LAUNCHER)
    print(f"# dry run: nothing submitted, nothing trained. launcher: {target.rsplit('.', 1)[-1]}; {len(jobs)} job(s)")
    if slurm:
        keys = ("partition", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min",
                "array_parallelism", "max_num_timeout", "signal_delay_s")
        print("# SLURM: " + " ".join(f"{k}={launcher.get(k)}" for k in keys))
        print(_sbatch(launcher, len(jobs)).rstrip())
    gpus = launcher.get("gpus_per_node") if slurm else None
    failed = 0
    shapes = _ShapeCheck()
    for i, (job, cfg) in enumerate(zip(jobs, configs)):
        _use_hydra_config(cfg)
        print(f"job {i}: {' '.join(job)}")
        errors, failed_batch = [], False
        try:
            trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
            task = OmegaConf.to_container(cfg.task, resolve=True)
            layout, world = _layout_line(trainer, gpus)
            print(f"  trainer: {layout}")
            batch = _batch_line(task, trainer, world)
            print(f"  {batch}")
            failed_batch = batch.startswith("batch: ERROR")
            if slurm and world and world != int(launcher["tasks_per_node"]) * int(launcher["nodes"]):
                errors.append(f"{world} processes but the job has {launcher['tasks_per_node']} task(s) x "
                              f"{launcher['nodes']} node(s); Lightning will refuse to start")
            rc = validate(cfg)  # the full check: method values (DCFT, ...), Lightning's Trainer arguments
            from .build import check_data_root

            check_data_root(rc.data)
            shapes.check(rc)
        except (ConfigError, ValueError, FileNotFoundError, OSError, TypeError, KeyError) as err:
            errors.append(_first_line(err))
        for error in errors:
            print(f"  ERROR: {error}")
        failed += bool(errors) or failed_batch
    if failed:
        print(f"dry run: {failed} of {len(jobs)} job(s) would fail (ERROR lines above)", file=sys.stderr)
        return 1
    print(f"# all {len(jobs)} job(s) pass the config, data-root and adapter-shape checks (meta-device model)")
    return 0


def _use_hydra_config(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _ShapeCheck:
    """The method applied to the job's backbone (+ task head) built on the meta device, as ``python -m
    dcft_lab.params`` builds it: a kernel or a target module that does not fit raises what the run would raise."""

    def __init__(self):
        self._models: dict = {}

    def check(self, rc) -> None:
        import copy

        from .backbones import get_backbone
        from .data.tasks import get_task
        from .params import adapt, meta_model

        backbone = get_backbone(rc.backbone.name)
        spec = get_task(rc.task.name)
        family = backbone.model_family(spec.family)
        key = (backbone.name, family, spec.head_size, rc.backbone.path)
        if key not in self._models:
            self._models[key] = meta_model(*key)
        adapt(copy.deepcopy(self._models[key]), backbone.name, family, rc.method)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print("usage: python -m dcft_lab.dry_run [-m] key=value ...  (the same: python -m dcft_lab.cluster ..., "
              "DRY_RUN=1 python -m dcft_lab.run ...)\n")
        print(__doc__.strip())
        return 0
    return preview(argv)


if __name__ == "__main__":
    sys.exit(main())
