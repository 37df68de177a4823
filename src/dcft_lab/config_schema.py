"""Typed schemas for the run config: an unknown key, a wrong type or a value out of range fails at start-up with a
one-line message naming the key.

Hydra composes ``conf/``; ``validate(cfg)`` merges each section into its dataclass (OmegaConf checks names and
types), checks the ranges (``RANGES``) and returns plain, typed objects for the rest of the run; the method is built
once here (``RunConfig.method``: the ``adapters.Method`` the run trains with).
``validate(cfg, light=True)`` is the same check without torch / PEFT / Lightning imports (the method keys against
``conf/method/<name>.yaml``, the trainer keys against Lightning's source): ``python -m dcft_lab.run`` runs it on
every job before anything heavy is imported, so a bad override answers in about a second.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .compose import close_names as _close  # importing compose registers the resolvers (${dcft_slurm:...})


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


# ---- one home per default (issue 33) ------------------------------------------------------------------------
# Every default lives in conf/, the YAML that users read (``--cfg job``) and override: conf/config.yaml's blocks for
# data / optim / run / early_stopping / logger and the shared backbone keys, conf/task/<name>.yaml for a task's
# settings (method defaults: conf/method/<name>.yaml). These dataclasses declare the names and types (ranges:
# ``RANGES``) and no values: a default here would be a second copy, free to disagree. A key a config leaves out (an
# old run record, a hand-built node) takes its YAML home's value (``section``), as a method key takes
# conf/method/<name>.yaml's. tests/test_config_defaults.py pins it.
@dataclass
class TaskConfig:
    name: str
    # the GLOBAL batch of one optimizer step; per device: / (devices x num_nodes x accumulate_grad_batches)
    train_batch_size: int
    eval_batch_size: int  # per forward pass; the same batches whatever the number of devices
    # The settings of one task family (the data module's ``task_keys`` name those it reads; its task's YAML sets
    # each of them). None: not a setting of this task -- not a default value.
    max_length: int | None = None  # classification / QA / sft input length (QA: max_seq_length)
    # QA
    doc_stride: int | None = None
    n_best: int | None = None
    max_answer_length: int | None = None
    null_score_diff_threshold: float | None = None  # SQuAD v2
    # seq2seq
    max_source_length: int | None = None
    max_target_length: int | None = None
    generation: dict | None = None  # data.summarization.GenerationSettings: num_beams, max_length, ...
    # causal LM (decoder-only backbones)
    train_file: str | None = None  # task sft: JSON lines {"prompt": ..., "response": ...}
    eval_file: str | None = None
    prompt_template: str | None = None  # summarization on a decoder: "{document}" -> prompt; None = built-in


@dataclass
class BackboneConfig:
    name: str
    weights: str  # pretrained | random
    path: str | None  # a local HF folder to load instead of the hub id
    gradient_checkpointing: bool  # recompute activations in backward (LLM memory)
    dtype: str | None  # frozen weights: null (checkpoint's dtype) | float32 | bfloat16 | float16


@dataclass
class DataConfig:
    root: str | None  # data root laid out like ../shared/data; default $DCFT_LAB_DATA
    source: str  # auto | local | hub
    train_limit: int | None  # subsample the train split (seeded)
    train_subset_seed: int | None  # seed of that subsample; None = the run's seed (a new sample per seed)
    eval_limit: int | None
    train_from_eval: int | None  # carve a disjoint train slice from the eval file (smoke runs)
    train_holdout: int | None  # GLUE: evaluate on N held-out train examples, never the dev set (pilots)
    num_workers: int
    cache_dir: str | None


@dataclass
class OptimConfig:
    lr: float
    weight_decay: float  # not applied to biases and LayerNorm weights
    betas: list
    eps: float
    warmup_steps: int
    warmup_ratio: float  # used when warmup_steps == 0
    classifier_dropout: float | None
    head_lr: float | None  # lr of the head (pooler / classifier); None = lr
    factor_lr_ratio: float  # the method's fast factor (LoRA B, DCFT kernel C, LoKr w1, SoRA B) trains at lr * this


@dataclass
class LoggerConfig:
    wandb: bool  # set by the logger group (conf/logger/wandb.yaml | csv.yaml)
    project: str
    entity: str | None
    group: str | None  # default: the sweep name (multirun) or the experiment name
    tags: list
    mode: str  # auto (online if an API key is configured, else offline) | online | offline | disabled
    csv: bool


@dataclass
class RunControl:
    overwrite: bool  # rerun a completed run in the same folder
    resume: bool  # continue from the run folder's last checkpoint when there is one
    checkpoint_every_n_steps: int  # 0: at every evaluation
    save_adapter: bool
    save_best_adapter: bool  # also keep the adapter of the best evaluation in <run>/adapter-best/
    threads: int  # torch threads; 0 = torch's default
    deterministic: bool
    fail_on_nonfinite_loss: bool
    # testing hook: "start" | "train_step:N" (an error) | "nan_loss:N" (NaN loss) | "kill:N" (SIGKILL) |
    # "sigterm:N" (scancel) | "preempt:N" (the scheduler's pre-emption signal; submitit launchers only).
    # Under DDP every process fires it at step N (kill:N: all ranks die there, as on a node failure).
    inject_failure: str | None
    verbose: bool  # console: false = the run's lines + progress bar; true = library output too (loggers.py)


@dataclass
class EarlyStoppingConfig:
    """Lightning's EarlyStopping on the task's main dev metric, checked at every evaluation."""
    enabled: bool
    patience: int  # evaluations without an improvement of more than min_delta before training stops
    min_delta: float  # in the metric's units (points: accuracy 0..100)
    metric: str | None  # a dev metric of the task (val/<metric>); None = the task's main metric


def yaml_defaults(key: str, node: Any = None) -> dict:
    """The values conf/ gives section ``key`` of a run config: conf/config.yaml's block for it, and for ``task``
    conf/task/<node's name>.yaml on top (what composing ``task=<name>`` gives). Read on each call (no Hydra)."""
    from .paths import conf_dir

    base = _load_yaml(str(conf_dir() / "config.yaml")).get(key)
    values = OmegaConf.to_container(base, resolve=True) if base is not None else {}  # ${oc.env:...}: now
    name = node.get("name") if key == "task" and node is not None else None
    path = conf_dir() / "task" / f"{name}.yaml"
    if isinstance(name, str) and path.is_file():
        values = OmegaConf.to_container(OmegaConf.merge(values, _load_yaml(str(path))), resolve=True)
    return values


@functools.cache
def _load_yaml(path: str) -> DictConfig:
    """A conf/ file, parsed once per process (read-only: callers merge or convert it, never change it)."""
    cfg = OmegaConf.load(path)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def section(key: str, node: Any = None) -> Any:
    """Section ``key`` of a run config as its typed dataclass: ``node`` (a mapping; keys it leaves out take
    ``yaml_defaults``), type-checked and range-checked (``RANGES``); a one-line ConfigError otherwise.
    E.g. ``section("task", {"name": "xsum", "eval_batch_size": 4})``."""
    schema = _SECTIONS[key]
    node = OmegaConf.create(node if node is not None else {}) if not isinstance(node, DictConfig) else node
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), yaml_defaults(key, node), node)
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad '{key}' config: {_describe(err, key, schema)}") from None
    _check_section_ranges(key, typed)
    return typed


def _one_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def _describe(err: OmegaConfBaseException, section: str, schema) -> str:
    """OmegaConf's first line names the value, not the key: say which key, and for a typo which keys exist."""
    key = getattr(err, "full_key", None)
    text = f"{section}.{key}: {_one_line(err)}" if key else _one_line(err)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        text += f"; expected some of {sorted(f.name for f in fields(schema))}"
    return text


def validate_method(node):
    """The run's ``adapters.Method``, complete and typed: ``build_method`` is the one check (names, types, values),
    and keys the node leaves out take conf/method/<name>.yaml's defaults (``Method.to_dict()``: every key)."""
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    from .adapters.methods import build_method  # torch + PEFT: after the light checks

    try:
        return build_method(raw)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(_one_line(err)) from None


def _check_method_keys(raw: dict) -> None:
    """The method name and keys against conf/method/<name>.yaml, which lists every key of the method (no import of
    torch / PEFT; ``build_method`` checks the same names again with the types)."""
    from .paths import conf_dir

    folder = conf_dir() / "method"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    name = raw.get("name")
    if not isinstance(name, str) or name not in names:
        raise ConfigError(f"method.name={name!r}; expected one of {', '.join(names)}{_close(name, names)}")
    known = set(OmegaConf.load(folder / f"{name}.yaml").keys())
    for key in raw:
        if key not in known:
            raise ConfigError(f"method.{key}: unknown key for method '{name}'{_close(key, known)}; expected some of "
                              f"{sorted(known)}")


def validate_trainer(node, light: bool = False) -> dict:
    """``trainer.*`` keys pass straight to Lightning's Trainer; unknown names are rejected here. ``light``: the
    argument names are read from Lightning's source instead of importing it."""
    raw = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    if light:
        allowed = lightning_trainer_arguments()
        if allowed is None:  # Lightning's source not found: the full check (after the imports) does it
            return raw
    else:
        import pytorch_lightning as pl

        allowed = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown trainer key(s) {unknown}{_close(unknown[0], allowed)}; expected "
                          "pytorch_lightning.Trainer arguments")
    return raw


@functools.cache
def lightning_trainer_arguments() -> frozenset[str] | None:
    """The argument names of ``pytorch_lightning.Trainer.__init__``, read from its source file (no import: importing
    Lightning takes seconds); None when the file or the class is not where Lightning 2.x keeps it."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("pytorch_lightning")  # a top-level package: found without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / "trainer" / "trainer.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    return frozenset(a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]) - {"self"}
    return None


@dataclass
class RunConfig:
    seed: int
    task: TaskConfig
    backbone: BackboneConfig
    method: Any  # the adapters.Method, built once by validate(); validate(light=True): the method node as a dict
    data: DataConfig
    optim: OptimConfig
    logger: LoggerConfig
    run: RunControl
    trainer: dict
    early_stopping: EarlyStoppingConfig
    experiment: str | None
    sweep_name: str | None
    eval_every_n_steps: int | None
    preset: dict


TOP_LEVEL_KEYS = {f.name for f in fields(RunConfig)}


def check_task_settings(rc: RunConfig) -> None:
    """Every setting the task's data module reads is set (data.tasks.FAMILY_TASK_KEYS): `task.max_length=null` is
    refused here in a second, not after the model has loaded and a failed run was recorded."""
    from .data.tasks import check_task_keys, get_task  # standard library only

    try:
        spec = get_task(rc.task.name)
        check_task_keys(spec, rc.task, spec.task_keys)
    except (KeyError, ValueError) as err:
        raise ConfigError(_one_line(err)) from None


def check_method_settings(rc: RunConfig) -> None:
    """Settings that mean nothing for the run's method, or would break it, are refused, not silently ignored: a
    factor_lr_ratio without a fast factor; fp16 mixed precision for a method with an after-step update; a
    half-precision backbone when the method trains the backbone's own weights (they would train in bf16 / fp16,
    not as float32 adapters)."""
    method = rc.method
    if rc.optim.factor_lr_ratio != 1 and not method.fast_factors:
        raise ConfigError(f"optim.factor_lr_ratio={rc.optim.factor_lr_ratio:g}, but method '{method.name}' has no "
                          "fast factor; expected 1 (the ratio applies to LoRA / AdaLoRA B, DCFT C, LoKr w1, SoRA B)")
    from .adapters.methods import Method  # (validate_method has imported it already)

    precision = str(rc.trainer.get("precision", ""))
    if precision in ("16", "16-mixed") and type(method).on_step is not Method.on_step:
        # fp16's loss scaler skips steps whose gradients overflowed; the method's after-step update would run anyway
        raise ConfigError(f"trainer.precision={precision} with method '{method.name}', whose update after each "
                          "optimizer step (SoRA's gate threshold, AdaLoRA's rank allocation) would also run on the "
                          "steps fp16 skips; expected 32-true or bf16-mixed")
    if method.save_format in ("full", "trained") and rc.backbone.dtype not in (None, "float32"):
        raise ConfigError(f"backbone.dtype={rc.backbone.dtype} with method '{method.name}', which trains the "
                          "backbone's own weights; expected float32 or null")


def validate(cfg: DictConfig, light: bool = False) -> RunConfig:
    """The typed run config; a ConfigError (one line, naming the key) for any unknown key, wrong type or value out
    of range. ``light=True``: the same checks without importing torch / PEFT / Lightning (see the module docstring);
    the method node is then returned as given, not completed from its defaults."""
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS - {"hydra", "max_parallel_jobs"})
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {unknown}{_close(unknown[0], TOP_LEVEL_KEYS)}; "
                          f"expected some of {sorted(TOP_LEVEL_KEYS)}")
    seed = cfg.get("seed")
    if not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} is not an integer")
    every = cfg.get("eval_every_n_steps")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ConfigError(f"eval_every_n_steps={every!r}; expected an integer >= 1 or null (once per epoch)")
    sections = {key: section(key, cfg.get(key)) for key in _SECTIONS}
    method = cfg.get("method")
    if method is None:
        raise ConfigError("no method config; expected method=<name> (one of conf/method/)")
    _check_method_keys(OmegaConf.to_container(method, resolve=True) if isinstance(method, DictConfig)
                       else dict(method))
    trainer = validate_trainer(cfg.get("trainer"), light=True)  # Lightning's argument names without importing it
    rc = RunConfig(
        seed=seed,
        **sections,
        method=OmegaConf.to_container(method, resolve=True) if isinstance(method, DictConfig) else dict(method),
        trainer=trainer,
        experiment=cfg.get("experiment"),
        sweep_name=cfg.get("sweep_name"),
        eval_every_n_steps=every,
        preset=dict(cfg.get("preset") or {}),
    )
    check_ranges(rc)
    check_task_settings(rc)
    if rc.trainer.get("max_epochs", 3) in (-1, None) and rc.trainer.get("max_steps", -1) in (-1, None):
        raise ConfigError(f"trainer.max_epochs={rc.trainer.get('max_epochs')} and trainer.max_steps="
                          f"{rc.trainer.get('max_steps')}: the run has no end (and its lr schedule no length); "
                          "expected a positive max_epochs or max_steps")
    if not light:
        rc.method = validate_method(rc.method)  # the Method: complete (defaults filled in); DCFT's own value checks
        check_method_settings(rc)
        rc.trainer = validate_trainer(cfg.get("trainer"))
        check_ranges(rc)  # the defaults filled in
    return rc


_SECTIONS = {"task": TaskConfig, "backbone": BackboneConfig, "data": DataConfig, "optim": OptimConfig,
             "logger": LoggerConfig, "run": RunControl, "early_stopping": EarlyStoppingConfig}


# ---- value ranges ------------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    test, text = rule
    return (lambda v: v is None or test(v)), f"{text} or null"


_POSITIVE = ((lambda v: _is_num(v) and v > 0), "a number > 0")
_NON_NEGATIVE = ((lambda v: _is_num(v) and v >= 0), "a number >= 0")
_PROBABILITY = ((lambda v: _is_num(v) and 0 <= v < 1), "a number in [0, 1)")
_FRACTION = ((lambda v: _is_num(v) and 0 <= v <= 1), "a number in [0, 1]")


def _one_of(*options: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), "one of " + ", ".join(str(o) for o in options)


# Every numeric (or closed-set) setting with a meaningful range, by key. Method keys apply to whichever method has
# them; trainer keys only when set. A key the config does not have is skipped (e.g. a method without `alpha`).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "task.max_length": _optional(_int_at_least(1)),  # None: not a setting of this task
    "task.train_batch_size": _int_at_least(1),
    "task.eval_batch_size": _int_at_least(1),
    "task.doc_stride": _optional(_int_at_least(1)),  # None: not a setting of this task
    "task.n_best": _optional(_int_at_least(1)),  # None: not a setting of this task
    "task.max_answer_length": _optional(_int_at_least(1)),  # None: not a setting of this task
    "task.max_source_length": _optional(_int_at_least(1)),  # None: not a setting of this task
    "task.max_target_length": _optional(_int_at_least(1)),  # None: not a setting of this task
    "backbone.weights": _one_of("pretrained", "random"),
    "backbone.dtype": _one_of(None, "float32", "bfloat16", "float16"),
    "data.source": _one_of("auto", "local", "hub"),
    "data.train_limit": _optional(_int_at_least(1)),
    "data.eval_limit": _optional(_int_at_least(1)),
    "data.train_from_eval": _optional(_int_at_least(1)),
    "data.train_holdout": _optional(_int_at_least(1)),
    "data.num_workers": _int_at_least(0),
    "optim.lr": _POSITIVE,
    "optim.head_lr": _optional(_POSITIVE),
    "optim.factor_lr_ratio": _POSITIVE,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.eps": _POSITIVE,
    "optim.betas": ((lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1
                                                                                     for b in v)),
                    "two numbers in [0, 1)"),
    "optim.warmup_steps": _int_at_least(0),
    "optim.warmup_ratio": _FRACTION,
    "optim.classifier_dropout": _optional(_PROBABILITY),
    "logger.mode": _one_of("auto", "online", "offline", "disabled"),
    "run.checkpoint_every_n_steps": _int_at_least(0),
    "run.threads": _int_at_least(0),
    "early_stopping.patience": _int_at_least(1),
    "early_stopping.min_delta": _NON_NEGATIVE,
    "method.alpha": _POSITIVE,
    "method.r": _int_at_least(1),
    "method.rank": _int_at_least(1),
    "method.kernel_size": _int_at_least(1),
    "method.stride": _optional(_int_at_least(1)),
    "method.dropout": _PROBABILITY,
    "method.orth_reg_weight": _NON_NEGATIVE,
    "method.init_r": _int_at_least(1),
    "method.target_r": _int_at_least(1),
    "method.tinit": _NON_NEGATIVE,
    "method.tfinal": _NON_NEGATIVE,
    "method.deltaT": _int_at_least(1),
    "method.beta1": _PROBABILITY,
    "method.beta2": _PROBABILITY,
    "method.decompose_factor": ((lambda v: _is_int(v) and (v == -1 or v >= 1)), "-1 or an integer >= 1"),
    "trainer.max_epochs": ((lambda v: v is None or _is_int(v) and (v == -1 or v >= 1)),
                           "-1 (no limit), null or an integer >= 1"),
    "trainer.max_steps": ((lambda v: _is_int(v) and (v == -1 or v >= 1)), "-1 (no limit) or an integer >= 1"),
    "trainer.min_epochs": _optional(_int_at_least(0)),
    "trainer.min_steps": _optional(_int_at_least(0)),
    "trainer.accumulate_grad_batches": _int_at_least(1),
    "trainer.num_nodes": _int_at_least(1),
    "trainer.gradient_clip_val": _optional(_NON_NEGATIVE),
    "trainer.log_every_n_steps": _int_at_least(1),
    "trainer.check_val_every_n_epoch": _optional(_int_at_least(1)),
    "trainer.val_check_interval": _optional(_POSITIVE),
    "trainer.num_sanity_val_steps": ((lambda v: _is_int(v) and v >= -1), "-1 (all) or an integer >= 0"),
}


def _check_section_ranges(key: str, typed: Any) -> None:
    """The ``RANGES`` of one typed section (``section``)."""
    for full, (test, expected) in RANGES.items():
        prefix, _, name = full.partition(".")
        if prefix == key and hasattr(typed, name) and not test(getattr(typed, name)):
            raise ConfigError(f"{full}={getattr(typed, name)!r}; expected {expected}")


def _lookup(rc: RunConfig, key: str) -> tuple[bool, Any]:
    section, _, name = key.partition(".")
    node = getattr(rc, section)
    if isinstance(node, dict):
        return (name in node), node.get(name)
    return hasattr(node, name), getattr(node, name, None)


def check_ranges(rc: RunConfig) -> None:
    """A ConfigError naming the first key whose value is out of its range (``RANGES``), or a pair of keys that
    contradict each other."""
    for key, (test, expected) in RANGES.items():
        present, value = _lookup(rc, key)
        if present and not test(value):
            raise ConfigError(f"{key}={value!r}; expected {expected}")
    name, init_r, target_r = (_lookup(rc, f"method.{key}")[1] for key in ("name", "init_r", "target_r"))
    if name == "adalora" and _is_int(init_r) and _is_int(target_r) and target_r > init_r:
        raise ConfigError(f"method.target_r={target_r} is larger than method.init_r={init_r}; "
                          "expected target_r <= init_r (AdaLoRA prunes from init_r down to target_r)")
