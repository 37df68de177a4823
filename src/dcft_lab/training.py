"""One run, start to finish: config -> data + adapted model -> Lightning fit -> evaluations -> run record.

``run.py`` is the thin Hydra entry point around ``execute``. The parts live next door: the model and data build in
``build.py`` (shared with evaluate / export), checkpoints, resume position and fault injection as Lightning callbacks
in ``callbacks.py``, loggers and console in ``loggers.py``, the record file in ``records.py`` (``RunRecord``).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .build import adapt_model, build_model, check_data_root, hub_fallback_note, run_datamodule
from .config_schema import RunConfig
from .loggers import console, evaluation_line, finish_wandb, make_loggers, sync_command
from .preemption import PreemptionNotice, scheduler_signal
from .records import RunRecord, environment, now_iso, process_rank, read_results
from .saved_run import ADAPTER_DIR, BEST_ADAPTER_DIR  # the final adapter; the best evaluation's

log = logging.getLogger("dcft_lab")


@dataclass
class Attempt:
    """What this attempt has built so far: the failure record reads it (metrics so far, the step it stopped at,
    whether a scheduler pre-empted it)."""
    module: Any = None  # the AdapterModule, once built
    trainer: Any = None  # the Lightning Trainer, once built
    preemption: PreemptionNotice | None = None  # installed while fit runs under a submitit launcher


def execute(rc: RunConfig, resolved_config: dict, run_dir: Path) -> dict:
    """Run (or resume, or skip when already completed) one job; returns its record."""
    from .callbacks import last_checkpoint
    from .data.tasks import get_task

    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_results(run_dir)
    if previous and previous.get("status") == "completed" and not rc.run.overwrite:
        log.info("run in %s already completed; skipping (set run.overwrite=true to rerun)", run_dir)
        previous["skipped"] = True
        return previous
    # overwriting a completed run trains again from scratch: its last checkpoint is the finished run, not a resume point
    fresh_start = bool(previous and previous.get("status") == "completed")
    spec, method = get_task(rc.task.name), rc.method
    # a resumed run adds to its earlier attempts' time; an overwrite (fresh start) is a new run and starts from zero
    record = RunRecord.begin(run_dir, previous, fresh_start, process_rank(), task=spec.name, method=method.name,
                             method_label=method.label, backbone=rc.backbone.name, seed=rc.seed,
                             main_metric=spec.main_metric, config=resolved_config, experiment=rc.experiment,
                             sweep_group=rc.sweep_name)
    if fresh_start and record.rank == 0:
        # removed before this attempt's record replaces the completed one: a DDP process that reads the new record
        # (Lightning starts ranks > 0 later) then finds no checkpoint either, and starts from scratch too
        last_checkpoint(run_dir).unlink(missing_ok=True)
        shutil.rmtree(run_dir / BEST_ADAPTER_DIR, ignore_errors=True)  # the finished run's best
        shutil.rmtree(run_dir / ADAPTER_DIR, ignore_errors=True)  # and its final one (another method may save other files)

    attempt = Attempt()
    try:
        _train(rc, spec, record, run_dir, attempt, fresh_start)
    except BaseException as err:  # noqa: BLE001 - record every failure, including KeyboardInterrupt
        if attempt.module is not None:
            _fill_metrics(record, attempt.module)
        record.update(status="failed", finished_at=now_iso(), failure=_failure(err, attempt))
        record.save()
        raise
    finally:
        finish_wandb()
    record.update(status="completed", finished_at=now_iso())
    record.save()
    return dict(record)


def _failure(err: BaseException, attempt: Attempt) -> dict:
    """The record's ``failure``: the error's type and first line, and the step it happened at."""
    step = getattr(err, "step", None)
    if step is None and attempt.trainer is not None:
        step = int(attempt.trainer.global_step)
    failure = {"type": type(err).__name__, "reason": str(err).strip().splitlines()[0] if str(err)
               else type(err).__name__, "step": step}
    if type(err).__name__ == "SIGTERMException":  # Lightning's graceful stop: not a fault of the run
        failure["reason"] = f"stopped by SIGTERM at step {step}; checkpoint saved, rerun the same command to resume"
    notice = attempt.preemption
    if notice is not None and notice.forwarded and isinstance(err, SystemExit):
        failure.update(type="Preempted", reason="pre-emption / time-limit signal from the scheduler; the job "
                       "was requeued and resumes from its last checkpoint")
    return failure


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


def _train(rc: RunConfig, spec, record: RunRecord, run_dir: Path, attempt: Attempt, fresh_start: bool = False) -> None:
    import pytorch_lightning as pl
    import torch

    from .adapters import count_parameters
    from .backbones import get_backbone
    from .callbacks import fault_injection, last_checkpoint
    from .module import AdapterModule

    if rc.run.threads:
        torch.set_num_threads(rc.run.threads)
    injection = fault_injection(rc.run.inject_failure)  # a testing aid; run.inject_failure=start fails here
    check_data_root(rc.data)
    note = hub_fallback_note(rc.data, rc.task)
    if note and record.rank == 0:
        log.info(note)

    # the model and the data: backbone (+ head), data module, then the adapter on a fresh seed
    method, backbone = rc.method, get_backbone(rc.backbone.name)
    family = backbone.model_family(spec.family)  # the task's, or "causal_lm" for generation on a decoder
    pl.seed_everything(rc.seed, workers=True, verbose=False)
    model, tokenizer = build_model(rc, spec, backbone, family)
    datamodule = run_datamodule(rc, spec, tokenizer, family)
    datamodule.setup("fit")
    pl.seed_everything(rc.seed, workers=True, verbose=False)  # adapter init independent of data preparation
    adapted, targets, heads = adapt_model(model, method, backbone, family)
    if backbone.is_decoder:
        record["model_family"] = family
        record["backbone_options"] = {"gradient_checkpointing": rc.backbone.gradient_checkpointing,
                                      "dtype": rc.backbone.dtype}
    record["params"] = count_parameters(adapted).as_dict()
    record["target_modules"] = list(targets)
    record["head_modules"] = list(heads)
    record["data"] = datamodule.data_info()

    # the training: the module, then a Trainer resuming from the run's last checkpoint when there is one
    def on_evaluation(evaluation: dict) -> None:  # keep results.json current after every evaluation
        _fill_metrics(record, module)  # the module already holds `evaluation`
        if rc.run.save_adapter and rc.run.save_best_adapter and record["best_step"] == evaluation["step"]:
            _save_adapter(adapted, run_dir / BEST_ADAPTER_DIR, method.save_format, atomic=True)  # a new best, beside the final one
            record.update(best_adapter_dir=str(run_dir / BEST_ADAPTER_DIR), best_adapter_step=evaluation["step"])
        record.save()
        console(trainer, evaluation_line(record, evaluation))

    module = attempt.module = AdapterModule(
        adapted, method, datamodule.make_evaluator(), main_metric=spec.main_metric,
        greater_is_better=spec.greater_is_better, eval_names=datamodule.eval_names, optim=rc.optim, seed=rc.seed,
        fail_on_nonfinite_loss=rc.run.fail_on_nonfinite_loss, on_evaluation=on_evaluation)
    ckpt = last_checkpoint(run_dir)
    resume_from = str(ckpt) if rc.run.resume and ckpt.exists() and not fresh_start else None
    resume_step = _checkpoint_step(ckpt) if resume_from else None
    if resume_from is None and record.rank == 0:
        shutil.rmtree(run_dir / BEST_ADAPTER_DIR, ignore_errors=True)  # an earlier attempt's: not of this training
    stopping = early_stopping_callback(rc, spec)
    trainer = attempt.trainer = _make_trainer(rc, run_dir, record["config"], resume_step, injection,
                                              [stopping] if stopping else [])
    record.rank = int(trainer.global_rank)
    batch = batch_layout(rc.task.train_batch_size, trainer)
    datamodule.train_batch_size = batch["per_device"]  # read by train_dataloader() once fit starts
    record.update(world_size=int(trainer.world_size), num_nodes=int(trainer.num_nodes),
                  devices_per_node=int(trainer.num_devices), strategy=type(trainer.strategy).__name__,
                  batch={**batch, "eval": rc.task.eval_batch_size})
    record["env"] = environment(str(trainer.strategy.root_device))
    wandb_info = next((lg.dcft_lab_info for lg in trainer.loggers if hasattr(lg, "dcft_lab_info")), None)
    if wandb_info:  # the W&B run this attempt logs to; offline: the command that uploads it
        record["wandb"] = {**wandb_info, "dir": str(run_dir / "wandb")}
        if wandb_info["mode"] == "offline":
            record["wandb"]["sync"] = sync_command(run_dir)
    record.save()  # carries the earlier attempts' total even if this one dies before evaluating

    if resume_from:
        log.info("resuming from %s (step %s)", resume_from, resume_step)
        record["resumed_from"] = resume_from
    signum = scheduler_signal()
    if injection is not None:
        injection.use_scheduler_signal(signum)  # preempt:N sends it: an error without a submitit launcher
    if signum is not None:
        attempt.preemption = PreemptionNotice(signum).install()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    finally:
        if attempt.preemption is not None:
            attempt.preemption.restore()
            attempt.preemption.forward_pending()  # pre-empted during fit: requeue now that the checkpoint is saved
    if not module.evaluations or module.evaluations[-1]["step"] != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # the final metric is at the last step

    # the results: final metrics, and the trained adapter
    _fill_metrics(record, module)
    record["global_steps"] = int(trainer.global_step)
    if stopping is not None:
        record["early_stopping"] = {"monitor": stopping.monitor, "mode": stopping.mode, "patience": stopping.patience,
                                    "min_delta": rc.early_stopping.min_delta,
                                    "stopped": stopping.wait_count >= stopping.patience,
                                    "step": int(trainer.global_step)}
    if rc.run.save_adapter and trainer.is_global_zero:
        _save_adapter(adapted, run_dir / ADAPTER_DIR, method.save_format)
        record["adapter_dir"] = str(run_dir / ADAPTER_DIR)
        if (run_dir / BEST_ADAPTER_DIR).is_dir():  # saved at the best evaluation (this attempt's or a resumed one's)
            record.update(best_adapter_dir=str(run_dir / BEST_ADAPTER_DIR), best_adapter_step=record["best_step"])


def early_stopping_callback(rc: RunConfig, spec):
    """Lightning's EarlyStopping on ``val/<metric>`` (``early_stopping.metric``, default the task's main metric),
    checked after every evaluation; None unless ``early_stopping.enabled``."""
    cfg = rc.early_stopping
    if not cfg.enabled:
        return None
    from pytorch_lightning.callbacks import EarlyStopping

    metric = cfg.metric or spec.main_metric
    if metric not in spec.metrics:
        raise ValueError(f"early_stopping.metric={metric!r}; expected one of the task's dev metrics "
                         f"{', '.join(spec.metrics)}")
    higher = spec.greater_is_better if metric == spec.main_metric else metric not in ("loss", "perplexity")
    return EarlyStopping(monitor=f"val/{metric}", mode="max" if higher else "min", patience=cfg.patience,
                         min_delta=cfg.min_delta, check_on_train_epoch_end=False, verbose=False)


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


def _make_trainer(rc: RunConfig, run_dir: Path, resolved_config: dict, resume_step: int | None = None,
                  injection=None, extra_callbacks: list | None = None):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor

    from .callbacks import ResumePosition, checkpoint_callbacks

    loggers = make_loggers(rc, run_dir, resolved_config, resume_step)
    trainer_kwargs = dict(rc.trainer)
    every = rc.eval_every_n_steps
    if every:
        # evaluate every N optimizer steps, across epoch boundaries (Lightning counts batches: x accumulation)
        trainer_kwargs.setdefault("val_check_interval", every * int(trainer_kwargs.get("accumulate_grad_batches", 1)))
        trainer_kwargs.setdefault("check_val_every_n_epoch", None)
    callbacks = [*checkpoint_callbacks(run_dir, rc.run.checkpoint_every_n_steps, bool(every)), ResumePosition(),
                 *(extra_callbacks or [])]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if injection is not None:
        callbacks.append(injection)  # last of ours: its step hook runs where training_step would start
    trainer_kwargs.setdefault("deterministic", rc.run.deterministic)
    # under DDP the data modules shard their own loaders (data/resumable.py); no-op in a single process
    trainer_kwargs.setdefault("use_distributed_sampler", False)
    return pl.Trainer(default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks, **trainer_kwargs)


def _save_adapter(model, folder: Path, save_format: str = "head", atomic: bool = False) -> None:
    """What the run needs to be evaluated and exported again (``Method.save_format``): a PEFT adapter folder; the
    trained weights of a head-only (head.safetensors) or BitFit (trained.safetensors) model; or, for full fine-tuning,
    the whole model as a transformers folder (config.json + model.safetensors). ``atomic``: written beside ``folder``
    and renamed into place, so a kill never leaves half an adapter (adapter-best/)."""
    import peft

    from .records import make_shareable
    from .saved_run import FULL_WEIGHTS, SAVED_FILES

    if atomic:
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _save_adapter(model, tmp, save_format)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return

    if isinstance(model, peft.PeftModel):
        model.save_pretrained(str(folder))
    elif save_format == "full":
        # one file whatever the size (saved_run reads model.safetensors), tied weights written once
        model.save_pretrained(str(folder), max_shard_size="1000GB")
        if not (folder / FULL_WEIGHTS).is_file():
            raise RuntimeError(f"save_pretrained wrote no {FULL_WEIGHTS} in {folder}")
    else:
        from safetensors.torch import save_file  # the trained subset of the model's own weights

        folder.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                  str(folder / SAVED_FILES[save_format]))
    make_shareable(folder)
