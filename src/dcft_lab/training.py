"""One run, start to finish: config -> data + adapted model -> Lightning fit -> evaluations -> run record.

``run.py`` is the thin Hydra entry point around ``execute``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from .config_schema import RunConfig
from .preemption import PreemptionNotice, scheduler_signal
from .records import RESULTS_FILE, environment, new_record, now_iso, read_results, write_json_atomic

log = logging.getLogger("dcft_lab")

TASK_TYPES = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "qa": "QUESTION_ANS", "seq2seq": "SEQ_2_SEQ_LM",
              "causal_lm": "CAUSAL_LM"}


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


INJECT_KINDS = ("train_step", "nan_loss", "kill", "sigterm", "preempt")  # run.inject_failure: "start" | "<kind>:<step>"


def parse_inject(spec: str | None) -> tuple[str, int] | None:
    """``run.inject_failure`` (testing aid) as (kind, step); None when unset or "start"; malformed is an error."""
    if not spec or spec == "start":
        return None
    name, _, step = spec.partition(":")
    if name not in INJECT_KINDS or not step.strip().isdigit():
        raise ValueError(f"run.inject_failure={spec!r}; expected 'start' or one of "
                         f"{', '.join(k + ':<step>' for k in INJECT_KINDS)}")
    return name, int(step)


def execute(rc: RunConfig, resolved_config: dict, run_dir: Path) -> dict:
    """Run (or resume, or skip when already completed) one job; returns its record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_results(run_dir)
    if previous and previous.get("status") == "completed" and not rc.run.overwrite:
        log.info("run in %s already completed; skipping (set run.overwrite=true to rerun)", run_dir)
        previous["skipped"] = True
        return previous
    # overwriting a completed run trains again from scratch: its last checkpoint is the finished run, not a resume point
    fresh_start = bool(previous and previous.get("status") == "completed")
    if fresh_start and is_global_zero():
        # removed before this attempt's record replaces the completed one: a DDP process that reads the new record
        # (Lightning starts ranks > 0 later) then finds no checkpoint either, and starts from scratch too
        (run_dir / "checkpoints" / "last.ckpt").unlink(missing_ok=True)

    from .adapters import build_method
    from .data.tasks import get_task

    spec = get_task(rc.task.name)
    method = build_method(rc.method)
    record = new_record(task=spec.name, method=method.name, method_label=method.label, backbone=rc.backbone.name,
                        seed=rc.seed, main_metric=spec.main_metric, config=resolved_config, run_dir=str(run_dir),
                        experiment=rc.experiment, sweep_group=rc.sweep_name)
    if previous:
        record["attempts"] = int(previous.get("attempts", 1)) + 1
        # how each earlier attempt ended, so a completed record still shows it was interrupted (and where)
        earlier = previous.get("failure") or {"type": "Killed", "reason": f"attempt ended while {previous.get('status')}"
                                             " (no clean-up: SIGKILL, node failure)", "step": None}
        record["previous_failures"] = list(previous.get("previous_failures", [])) + [earlier]
    results_path = run_dir / RESULTS_FILE
    start = time.time()
    state: dict[str, Any] = {"module": None, "trainer": None, "preemption": None}
    try:
        _train(rc, method, spec, record, run_dir, results_path, state, fresh_start)
    except BaseException as err:  # noqa: BLE001 - record every failure, including KeyboardInterrupt
        module, trainer = state["module"], state["trainer"]
        if module is not None:
            _fill_metrics(record, module)
        step = getattr(err, "step", None)
        if step is None and trainer is not None:
            step = int(trainer.global_step)
        failure = {"type": type(err).__name__, "reason": str(err).strip().splitlines()[0] if str(err)
                   else type(err).__name__, "step": step}
        notice = state.get("preemption")
        if notice is not None and notice.forwarded and isinstance(err, SystemExit):
            failure.update(type="Preempted", reason="pre-emption / time-limit signal from the scheduler; the job "
                           "was requeued and resumes from its last checkpoint")
        record.update(status="failed", finished_at=now_iso(), wall_time_s=round(time.time() - start, 3),
                      failure=failure)
        if is_global_zero(trainer):
            write_json_atomic(results_path, record)
        raise
    finally:
        _finish_wandb()
    record.update(status="completed", finished_at=now_iso(), wall_time_s=round(time.time() - start, 3))
    if is_global_zero(state["trainer"]):
        write_json_atomic(results_path, record)
    return record


def is_global_zero(trainer=None) -> bool:
    """Whether this process writes the run's files (results.json, adapter, summary): global rank 0 of a DDP run,
    or the only process. Before a Trainer exists Lightning's rank comes from the environment (LOCAL_RANK of the
    processes it starts, SLURM_PROCID under srun)."""
    if trainer is not None:
        return bool(trainer.is_global_zero)
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def batch_layout(global_batch: int, trainer) -> dict:
    """task.train_batch_size is the global batch of one optimizer step (what the paper's scripts ran on one GPU):
    per device it is global / (devices x nodes x accumulation), so the device count does not change the run's
    batch, steps or schedule."""
    world, accumulate = int(trainer.world_size), int(trainer.accumulate_grad_batches)
    share = world * accumulate
    if global_batch % share:
        raise ValueError(f"task.train_batch_size={global_batch} is the global batch and does not divide over "
                         f"{trainer.num_devices} device(s) x {trainer.num_nodes} node(s) x {accumulate} accumulation "
                         f"step(s) = {share}; expected a multiple of {share}")
    return {"global": global_batch, "per_device": global_batch // share, "accumulate_grad_batches": accumulate}


def _train(rc: RunConfig, method, spec, record: dict, run_dir: Path, results_path: Path, state: dict,
           fresh_start: bool = False) -> None:
    import pytorch_lightning as pl
    import torch

    from .adapters import count_parameters
    from .backbones import build_backbone, get_backbone
    from .data.factory import build_datamodule
    from .module import AdapterModule

    if rc.run.threads:
        torch.set_num_threads(rc.run.threads)
    inject = parse_inject(rc.run.inject_failure)
    if rc.run.inject_failure == "start":
        raise RuntimeError("injected failure at start (run.inject_failure)")
    if rc.data.root is not None and rc.data.source != "hub" and not Path(rc.data.root).is_dir():
        # checked here: with source=auto a missing root would otherwise fall back to the hub and report only that
        raise FileNotFoundError(f"data root {rc.data.root} not found (data.root / $DCFT_LAB_DATA); expected a folder "
                                "laid out like <root>/glue/<Task>/train.tsv")
    pl.seed_everything(rc.seed, workers=True, verbose=False)

    # the task's family, except generation tasks on a decoder-only backbone ("causal_lm"); see BackboneSpec
    family = get_backbone(rc.backbone.name).model_family(spec.family)
    llm_options = {key: value for key, value in (("gradient_checkpointing", rc.backbone.gradient_checkpointing),
                                                 ("dtype", rc.backbone.dtype)) if value}
    model, tokenizer, backbone = build_backbone(
        rc.backbone.name, family, max(spec.num_labels, 1), weights=rc.backbone.weights, path=rc.backbone.path,
        classifier_dropout=rc.optim.classifier_dropout, seed=rc.seed, **llm_options,
    )
    datamodule = build_datamodule(rc.task, rc.data, tokenizer, rc.seed,
                                  **({"model_family": family} if family != spec.family else {}))
    datamodule.setup("fit")
    targets = method.target_modules or backbone.target_modules(method.targets)
    heads = method.modules_to_save or backbone.head_modules(family)
    pl.seed_everything(rc.seed, workers=True, verbose=False)  # adapter init independent of data preparation
    adapted = method.build(model, targets, heads, TASK_TYPES[family])
    if backbone.is_decoder:
        record["model_family"] = family
        record["backbone_options"] = {"gradient_checkpointing": rc.backbone.gradient_checkpointing,
                                      "dtype": rc.backbone.dtype}
    record["params"] = count_parameters(adapted).as_dict()
    record["target_modules"] = list(targets)
    record["head_modules"] = list(heads)
    record["data"] = datamodule.data_info()

    def on_evaluation(evaluation: dict) -> None:  # keep results.json current after every evaluation
        _fill_metrics(record, module)  # the module already holds `evaluation`
        write_json_atomic(results_path, record)

    module = AdapterModule(
        adapted, method, datamodule.make_evaluator(), main_metric=spec.main_metric, eval_names=datamodule.eval_names,
        lr=rc.optim.lr, weight_decay=rc.optim.weight_decay, betas=rc.optim.betas, eps=rc.optim.eps,
        warmup_steps=rc.optim.warmup_steps, warmup_ratio=rc.optim.warmup_ratio,
        fail_on_nonfinite_loss=rc.run.fail_on_nonfinite_loss, on_evaluation=on_evaluation,
        inject=inject, seed=rc.seed, greater_is_better=spec.greater_is_better,
    )
    state["module"] = module
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resume_from = str(ckpt) if rc.run.resume and ckpt.exists() and not fresh_start else None
    resume_step = _checkpoint_step(ckpt) if resume_from else None
    trainer = _make_trainer(rc, run_dir, record["config"], resume_step)
    state["trainer"] = trainer
    batch = batch_layout(rc.task.train_batch_size, trainer)
    datamodule.train_batch_size = batch["per_device"]  # read by train_dataloader() once fit starts
    record.update(world_size=int(trainer.world_size), num_nodes=int(trainer.num_nodes),
                  devices_per_node=int(trainer.num_devices), strategy=type(trainer.strategy).__name__,
                  batch={**batch, "eval": rc.task.eval_batch_size})
    record["env"] = environment(str(trainer.strategy.root_device))
    if trainer.is_global_zero:
        write_json_atomic(results_path, record)

    if resume_from:
        log.info("resuming from %s (step %s)", resume_from, resume_step)
        record["resumed_from"] = resume_from
    signum = scheduler_signal()
    if signum is None and inject is not None and inject[0] == "preempt":
        raise ValueError(f"run.inject_failure={rc.run.inject_failure!r} needs a submitit launcher "
                         "(-m hydra/launcher=local or slurm): only submitit handles the pre-emption signal")
    if signum is not None:
        module.preemption = state["preemption"] = PreemptionNotice(signum).install()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    finally:
        if module.preemption is not None:
            module.preemption.restore()
            module.preemption.forward_pending()  # pre-empted during fit: requeue now that the checkpoint is saved
    if not module.evaluations or module.evaluations[-1]["step"] != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # the final metric is at the last step
    _fill_metrics(record, module)
    record["global_steps"] = int(trainer.global_step)
    if rc.run.save_adapter and trainer.is_global_zero:
        _save_adapter(adapted, run_dir / "adapter")
        record["adapter_dir"] = str(run_dir / "adapter")


def _fill_metrics(record: dict, module) -> None:
    record["evaluations"] = list(module.evaluations)
    best = module.best_evaluation()
    record["metrics"] = {
        "best": dict(best["metrics"]) if best else {},
        "final": dict(module.evaluations[-1]["metrics"]) if module.evaluations else {},
    }
    record["best_step"] = best["step"] if best else None


def _checkpoint_step(ckpt: Path) -> int | None:
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported by trainer.fit itself
        return None


def _make_trainer(rc: RunConfig, run_dir: Path, resolved_config: dict, resume_step: int | None = None):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    from .csv_logger import ContinuedCSVLogger

    loggers = []
    if rc.logger.csv:
        # a resumed run keeps the rows its earlier attempts logged before the checkpoint: one metrics.csv per run
        loggers.append(ContinuedCSVLogger(str(run_dir), name="csv", version="", keep_rows_before_step=resume_step))
    mode = wandb_mode(rc.logger.mode)
    if rc.logger.wandb and mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        cfg = rc.logger
        loggers.append(WandbLogger(
            project=cfg.project, entity=cfg.entity, group=cfg.group or rc.sweep_name or rc.experiment,
            tags=list(cfg.tags), save_dir=str(run_dir), offline=mode == "offline", name=run_dir.name,
            config={k: v for k, v in resolved_config.items() if k != "hydra"},  # the full resolved run config
        ))
    trainer_kwargs = dict(rc.trainer)
    every = rc.eval_every_n_steps
    if every:
        # evaluate every N optimizer steps, across epoch boundaries
        trainer_kwargs.setdefault("val_check_interval", every)
        trainer_kwargs.setdefault("check_val_every_n_epoch", None)
    # enable_version_counter=False: last.ckpt is also written by _CheckpointAfterEvaluation, and Lightning would
    # otherwise save its own "last" beside it as last-v1.ckpt (two resume points, one stale)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                 enable_version_counter=False,
                                 every_n_train_steps=rc.run.checkpoint_every_n_steps or None,
                                 save_on_train_epoch_end=False if every else None)
    callbacks = [checkpoint, _CheckpointAfterEvaluation(run_dir / "checkpoints" / "last.ckpt")]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer_kwargs.setdefault("deterministic", rc.run.deterministic)
    # under DDP the data modules shard their own loaders (data/resumable.py); no-op in a single process
    trainer_kwargs.setdefault("use_distributed_sampler", False)
    return pl.Trainer(default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks, **trainer_kwargs)


def _CheckpointAfterEvaluation(path: Path):
    """Overwrite last.ckpt after every evaluation, so a resumed run also keeps the evaluation it just made."""
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import TrainerFn

    class CheckpointAfterEvaluation(pl.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
                return
            trainer.save_checkpoint(str(path), weights_only=False)  # explicit: Lightning logs a line per save otherwise

    return CheckpointAfterEvaluation()


def _save_adapter(model, folder: Path) -> None:
    import peft

    from .records import make_shareable

    if isinstance(model, peft.PeftModel):
        model.save_pretrained(str(folder))
    else:
        from safetensors.torch import save_file  # head-only: the trained head weights

        folder.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                  str(folder / "head.safetensors"))
    make_shareable(folder)


def _finish_wandb() -> None:
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
