"""Typed schemas for the run config: an unknown key or a wrong type fails at start-up with a clear message.

Hydra composes ``conf/``; ``validate(cfg)`` merges each section into its dataclass (OmegaConf checks names and
types) and returns plain, typed objects for the rest of the run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .adapters.methods import build_method
from .cluster import register_resolvers

register_resolvers()  # conf/trainer/default.yaml's ${dcft_slurm:...}, for configs composed outside the CLI


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


@dataclass
class TaskConfig:
    name: str = "sst2"
    max_length: int = 128  # classification / QA input length (QA: max_seq_length)
    # the GLOBAL batch of one optimizer step; per device: / (devices x num_nodes x accumulate_grad_batches)
    train_batch_size: int = 32
    eval_batch_size: int = 64  # per forward pass; the same batches whatever the number of devices
    # QA
    doc_stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0
    # seq2seq
    max_source_length: int = 512
    max_target_length: int = 64
    generation: dict = field(default_factory=dict)  # num_beams, max_length, min_length, length_penalty, ...
    # causal LM (decoder-only backbones)
    train_file: str | None = None  # task sft: JSON lines {"prompt": ..., "response": ...}
    eval_file: str | None = None
    prompt_template: str | None = None  # summarization on a decoder: "{document}" -> prompt; None = built-in


@dataclass
class BackboneConfig:
    name: str = "deberta-v3-base"
    weights: str = "pretrained"  # pretrained | random
    path: str | None = None  # a local HF folder to load instead of the hub id
    gradient_checkpointing: bool = False  # recompute activations in backward (LLM memory)
    dtype: str | None = None  # frozen weights: null (checkpoint's dtype) | float32 | bfloat16 | float16


@dataclass
class DataConfig:
    root: str | None = None  # data root laid out like ../shared/data; default $DCFT_LAB_DATA
    source: str = "auto"  # auto | local | hub
    train_limit: int | None = None  # subsample the train split (seeded)
    train_subset_seed: int | None = None  # seed of that subsample; None = the run's seed (a new sample per seed)
    eval_limit: int | None = None
    train_from_eval: int | None = None  # carve a disjoint train slice from the eval file (smoke runs)
    train_holdout: int | None = None  # GLUE: evaluate on N held-out train examples, never the dev set (pilots)
    num_workers: int = 0
    cache_dir: str | None = None


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps == 0
    classifier_dropout: float | None = None
    head_lr: float | None = None  # lr of the head (pooler / classifier); None = lr
    factor_lr_ratio: float = 1.0  # the method's fast factor (LoRA B, DCFT kernel C, LoKr w1) trains at lr * this


@dataclass
class LoggerConfig:
    wandb: bool = True
    project: str = "dcft_lab"
    entity: str | None = None
    group: str | None = None  # default: the sweep name (multirun) or the experiment name
    tags: list = field(default_factory=list)
    mode: str = "auto"  # auto (online if an API key is configured, else offline) | online | offline | disabled
    csv: bool = True


@dataclass
class RunControl:
    overwrite: bool = False  # rerun a completed run in the same folder
    resume: bool = True  # continue from the run folder's last checkpoint when there is one
    checkpoint_every_n_steps: int = 0  # 0: at every evaluation
    save_adapter: bool = True
    threads: int = 0  # torch threads; 0 = torch's default
    deterministic: bool = True
    fail_on_nonfinite_loss: bool = True
    # testing hook: "start" | "train_step:N" (an error) | "nan_loss:N" (NaN loss) | "kill:N" (SIGKILL) |
    # "sigterm:N" (scancel) | "preempt:N" (the scheduler's pre-emption signal; submitit launchers only).
    # Under DDP every process fires it at step N (kill:N: all ranks die there, as on a node failure).
    inject_failure: str | None = None
    verbose: bool = False  # console: false = the run's lines + progress bar; true = library output too (loggers.py)


def _section(cfg: DictConfig, key: str, schema) -> Any:
    node = cfg.get(key)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node if node is not None else {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad '{key}' config: {_describe(err, key, schema)}") from None


def _one_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def _describe(err: OmegaConfBaseException, section: str, schema) -> str:
    """OmegaConf's first line names the value, not the key: say which key, and for a typo which keys exist."""
    key = getattr(err, "full_key", None)
    text = f"{section}.{key}: {_one_line(err)}" if key else _one_line(err)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        text += f"; expected some of {sorted(f.name for f in fields(schema))}"
    return text


def validate_method(node) -> dict:
    """The complete, typed method config: ``build_method`` is the one check (names, types, values), and keys the
    node leaves out take conf/method/<name>.yaml's defaults."""
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    try:
        return build_method(raw).to_dict()
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(_one_line(err)) from None


def validate_trainer(node) -> dict:
    """``trainer.*`` keys pass straight to Lightning's Trainer; unknown names are rejected here."""
    import pytorch_lightning as pl

    raw = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    allowed = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown trainer key(s) {unknown}; expected pytorch_lightning.Trainer arguments")
    return raw


@dataclass
class RunConfig:
    seed: int
    task: TaskConfig
    backbone: BackboneConfig
    method: dict
    data: DataConfig
    optim: OptimConfig
    logger: LoggerConfig
    run: RunControl
    trainer: dict
    experiment: str | None = None
    sweep_name: str | None = None
    eval_every_n_steps: int | None = None
    preset: dict = field(default_factory=dict)


TOP_LEVEL_KEYS = {f.name for f in fields(RunConfig)}


def validate(cfg: DictConfig) -> RunConfig:
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS - {"hydra", "max_parallel_jobs"})
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {unknown}; expected some of {sorted(TOP_LEVEL_KEYS)}")
    seed = cfg.get("seed")
    if not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} is not an integer")
    every = cfg.get("eval_every_n_steps")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ConfigError(f"eval_every_n_steps={every!r}; expected an integer >= 1 or null (once per epoch)")
    optim = _section(cfg, "optim", OptimConfig)
    for key in ("lr", "head_lr", "factor_lr_ratio"):
        value = getattr(optim, key)
        if value is not None and not value > 0:
            raise ConfigError(f"optim.{key}={value!r}; expected a number > 0")
    return RunConfig(
        seed=seed,
        task=_section(cfg, "task", TaskConfig),
        backbone=_section(cfg, "backbone", BackboneConfig),
        method=validate_method(cfg.method),
        data=_section(cfg, "data", DataConfig),
        optim=optim,
        logger=_section(cfg, "logger", LoggerConfig),
        run=_section(cfg, "run", RunControl),
        trainer=validate_trainer(cfg.get("trainer")),
        experiment=cfg.get("experiment"),
        sweep_name=cfg.get("sweep_name"),
        eval_every_n_steps=every,
        preset=dict(cfg.get("preset") or {}),
    )
