"""One small interface for every fine-tuning method, so the training loop treats them alike.

    method = build_method({"name": "dcft", "kernel_size": 8, ...})
    model = method.build(model, target_modules=[...], modules_to_save=[...], task_type="SEQ_CLS", total_steps=N)
    loss = task_loss + method.regularizer(model)      # a 0-dim tensor (0. when the method has none); a model from
                                                      # build() never adds a regularizer to its own outputs.loss
    ... optimizer.step(); method.on_step(model, global_step); optimizer.zero_grad()

LoRA, AdaLoRA and LoKr come from PEFT; DCFT is ours (registered with PEFT on import); ``none`` trains the
head only (the "head-only" baseline).

Defaults: every hyper-parameter default of a method is written once, in ``conf/method/<name>.yaml`` (the Hydra
group the runs compose). The dataclasses below declare names and types only; ``build_method`` fills the keys a
mapping leaves out from that file (``method_defaults``), so ``build_method({"name": "adalora"})`` gets exactly
what ``python -m dcft_lab.run method=adalora`` gets. ``DCFTConfig`` keeps its own defaults, because it is a PEFT
config that library users build without ``conf/``; tests/test_methods.py pins them to ``conf/method/dcft.yaml``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import peft
import torch
from torch import nn

from .dcft import DCFTConfig, DCFTModel
from .dcft.config import effective_stride

METHOD_NAMES = ("dcft", "lora", "adalora", "lokr", "none")
TARGET_SET_LABELS = {"qk": "Q,K", "qv": "Q,V", "qkv": "Q,K,V", "qkvo": "Q,K,V,O", "all": "ALL"}


def _unwrap(model: nn.Module) -> nn.Module:
    """PeftModel -> its tuner (LoraModel, DCFTModel, ...)."""
    return model.base_model if isinstance(model, peft.PeftModel) else model


@dataclass(kw_only=True)
class Method:
    """Base: build the adapted model; no regularizer; no per-step hook.

    Fields have no defaults on purpose (see the module docstring): build one with ``build_method``."""

    # Parameter-name parts of the method's "fast" factor, which trains at optim.lr * optim.factor_lr_ratio
    # (module.build_optimizer): LoRA's B (as in LoRA+), DCFT's kernel C, LoKr's w1 (the kernel's place in kron).
    fast_factors: ClassVar[tuple[str, ...]] = ()

    name: str
    targets: str  # named target set of the backbone: all | qkvo | qkv | qv | qk (paper Table 6)
    target_modules: list[str] | None  # explicit module names; overrides ``targets``
    modules_to_save: list[str] | None  # None -> the backbone's head modules

    def to_dict(self) -> dict[str, Any]:
        """The complete, typed config (every field), e.g. for ``RunConfig.method``."""
        return asdict(self)

    def peft_config(self, target_modules, modules_to_save, task_type, total_steps) -> peft.PeftConfig | None:
        return None

    def build(self, model: nn.Module, target_modules=None, modules_to_save=None, task_type=None, total_steps=None):
        targets = list(self.target_modules or target_modules or [])
        heads = list(self.modules_to_save or modules_to_save or [])
        config = self.peft_config(targets, heads, task_type, total_steps)
        if config is None:  # head only: no adapter, the backbone stays frozen
            return _head_only_model(model, heads)
        _check_targets_exist(model, targets)
        adapted = peft.get_peft_model(model, config)
        for cfg in adapted.peft_config.values():  # PEFT appends its task defaults ("classifier") once more
            if cfg.modules_to_save:
                cfg.modules_to_save = list(dict.fromkeys(cfg.modules_to_save))
        return adapted

    def regularizer(self, model: nn.Module) -> torch.Tensor:
        param = next(model.parameters())
        return torch.zeros((), device=param.device, dtype=torch.float32)

    def on_step(self, model: nn.Module, global_step: int) -> None:
        """Called after ``optimizer.step()`` and before ``zero_grad()``."""

    def set_total_steps(self, model: nn.Module, total_steps: int) -> None:
        """Told the trainer's estimate of optimizer steps once it is known."""

    def diagnostics(self, model: nn.Module) -> dict[str, float]:
        """Recorded at every evaluation: ``norm/<factor>`` (Frobenius norm of each adapter factor over all layers)
        and ``delta_rel_mean`` / ``delta_rel_max`` (||ΔW||_F / ||W||_F over the adapted layers); {} for head-only."""
        return adapter_diagnostics(model)

    @property
    def label(self) -> str:
        return "Head only"

    def _targets_suffix(self) -> str:
        if self.target_modules:
            return " [" + ",".join(self.target_modules) + "]"
        return "" if self.targets == "all" else f" [{TARGET_SET_LABELS.get(self.targets, self.targets)}]"


@dataclass(kw_only=True)
class DCFTMethod(Method):
    fast_factors: ClassVar[tuple[str, ...]] = ("dcft_C",)
    # The DCFTConfig fields of the same names (meaning: see DCFTConfig), passed through unchanged.
    kernel_size: int
    stride: int | None
    rank: int
    alpha: float
    r: int
    dropout: float
    init: str
    orth_reg: str
    orth_reg_weight: float

    def __post_init__(self):
        self.peft_config(["_"], [], None, None)  # DCFTConfig checks the values now, not at the first layer

    def peft_config(self, target_modules, modules_to_save, task_type, total_steps):
        hyper = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _BASE_FIELDS}
        return DCFTConfig(**hyper, target_modules=target_modules, modules_to_save=modules_to_save or None,
                          task_type=task_type)

    # Who adds the regularizer. The DCFT model adds it to outputs.loss itself in training (as PEFT's AdaLoRA does),
    # so transformers.Trainer and plain loops train the full objective. A model from this build() has that switched
    # off (DCFTModel.add_orth_reg_to_loss, a runtime flag: adapter_config.json keeps the true orth_reg_weight) and
    # regularizer() returns the same term, DCFTModel.loss_regularizer(), for the loop to add: the Method contract
    # (``task_loss + method.regularizer(model)``, as for AdaLoRA) lets module.py log task loss and regularizer apart
    # with no subtraction, and the objective is the one the model would have built (tests/test_dcft_in_loss.py).
    def build(self, model, target_modules=None, modules_to_save=None, task_type=None, total_steps=None):
        adapted = super().build(model, target_modules, modules_to_save, task_type, total_steps)
        tuner = _unwrap(adapted)
        if isinstance(tuner, DCFTModel):
            tuner.add_orth_reg_to_loss = False
        return adapted

    def regularizer(self, model):
        tuner = _unwrap(model)
        if not isinstance(tuner, DCFTModel):
            return super().regularizer(model)
        if tuner.add_orth_reg_to_loss:
            raise RuntimeError(
                "this DCFT model adds its regularizer to outputs.loss itself (add_orth_reg_to_loss=True), so "
                "method.regularizer(model) would count it twice; build the model with method.build(...) or set "
                "model.base_model.add_orth_reg_to_loss = False"
            )
        reg = tuner.loss_regularizer()
        return super().regularizer(model) if reg is None else reg

    @property
    def label(self) -> str:
        stride = effective_stride(self.kernel_size, self.stride)
        init = "" if self.init == "official" else f" init={self.init}"
        return f"DCFT d={self.kernel_size} s={stride} k={self.rank}{init}" + self._targets_suffix()


@dataclass(kw_only=True)
class LoRAMethod(Method):
    fast_factors: ClassVar[tuple[str, ...]] = ("lora_B",)
    r: int
    alpha: float
    dropout: float

    def peft_config(self, target_modules, modules_to_save, task_type, total_steps):
        return peft.LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=target_modules,
            modules_to_save=modules_to_save or None, task_type=task_type,
        )

    @property
    def label(self) -> str:
        return f"LoRA r={self.r}" + self._targets_suffix()


@dataclass(kw_only=True)
class AdaLoRAMethod(Method):
    fast_factors: ClassVar[tuple[str, ...]] = ("lora_B",)
    init_r: int
    target_r: int
    alpha: float
    dropout: float
    tinit: float  # steps, or a fraction of total steps when < 1
    tfinal: float  # likewise
    deltaT: int
    beta1: float
    beta2: float
    orth_reg_weight: float
    budget_label: str | None  # e.g. "0.32M", for tables

    def _schedule(self, total_steps: int) -> tuple[int, int]:
        tinit = int(self.tinit * total_steps) if 0 < self.tinit < 1 else int(self.tinit)
        tfinal = int(self.tfinal * total_steps) if 0 < self.tfinal < 1 else int(self.tfinal)
        if tinit + tfinal >= total_steps:
            raise ValueError(
                f"AdaLoRA tinit={tinit} + tfinal={tfinal} must be < total steps={total_steps}; "
                "lower them or train longer"
            )
        return tinit, tfinal

    def peft_config(self, target_modules, modules_to_save, task_type, total_steps):
        total_steps = int(total_steps or 10**6)  # refined by set_total_steps once the trainer knows
        tinit, tfinal = self._schedule(total_steps)
        return peft.AdaLoraConfig(
            init_r=self.init_r, target_r=self.target_r, lora_alpha=self.alpha, lora_dropout=self.dropout,
            tinit=tinit, tfinal=tfinal, deltaT=self.deltaT, beta1=self.beta1, beta2=self.beta2,
            total_step=total_steps, target_modules=target_modules, modules_to_save=modules_to_save or None,
            task_type=task_type,
            # AdaLoRA adds its regularizer inside outputs.loss; we add the same term ourselves (regularizer())
            # so it is logged separately and not lost when a loss is computed outside the model.
            orth_reg_weight=0.0,
        )

    def set_total_steps(self, model, total_steps):
        tuner = _unwrap(model)
        config = tuner.peft_config[tuner.trainable_adapter_name]
        config.tinit, config.tfinal = self._schedule(int(total_steps))
        tuner.rankallocator.set_total_step(int(total_steps))
        config.total_step = int(total_steps)

    def regularizer(self, model):
        # Identical to peft.tuners.adalora.AdaLoraModel.forward: mean_p ||P P^T - I||_F over lora_A / lora_B.
        terms = []
        for n, p in model.named_parameters():
            if p.requires_grad and ("lora_A" in n or "lora_B" in n):
                cov = p @ p.T if "lora_A" in n else p.T @ p
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=p.dtype, device=p.device)))
        if not terms:
            return super().regularizer(model)
        return self.orth_reg_weight * torch.stack(terms).mean()

    def on_step(self, model, global_step):
        _unwrap(model).update_and_allocate(global_step)

    @property
    def label(self) -> str:
        base = f"AdaLoRA {self.budget_label}" if self.budget_label else f"AdaLoRA r={self.init_r}->{self.target_r}"
        return base + self._targets_suffix()


@dataclass(kw_only=True)
class LoKrMethod(Method):
    fast_factors: ClassVar[tuple[str, ...]] = ("lokr_w1",)
    r: int
    alpha: float
    decompose_factor: int
    decompose_both: bool
    dropout: float

    def peft_config(self, target_modules, modules_to_save, task_type, total_steps):
        return peft.LoKrConfig(
            r=self.r, alpha=self.alpha, decompose_factor=self.decompose_factor, decompose_both=self.decompose_both,
            rank_dropout=self.dropout, target_modules=target_modules, modules_to_save=modules_to_save or None,
            task_type=task_type,
        )

    @property
    def label(self) -> str:
        return f"LoKr r={self.r} f={self.decompose_factor}" + self._targets_suffix()


METHODS: Mapping[str, type[Method]] = MappingProxyType({
    "dcft": DCFTMethod, "lora": LoRAMethod, "adalora": AdaLoRAMethod, "lokr": LoKrMethod, "none": Method,
})
_BASE_FIELDS = frozenset(f.name for f in fields(Method))


def method_class(name) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of: {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def method_fields(name: str) -> tuple[str, ...]:
    """The config keys of method ``name``, in declaration order (``name``, the target keys, its hyper-parameters)."""
    return tuple(f.name for f in fields(method_class(name)))


def method_defaults(name: str) -> dict[str, Any]:
    """The defaults of method ``name``: ``conf/method/<name>.yaml`` resolved without a task preset (each
    ``${oc.select:preset.X,default}`` gives its default)."""
    method_class(name)
    from ..paths import conf_dir  # here, not at the top: `import dcft_lab.adapters` loads nothing outside adapters/

    return copy.deepcopy(_load_defaults(str(conf_dir() / "method" / f"{name}.yaml")))


@functools.cache
def _load_defaults(path: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise FileNotFoundError(f"method defaults {path} not found; expected the repository's conf/ folder "
                                f"(or set $DCFT_LAB_CONF)")
    node = OmegaConf.load(path)
    if "defaults" in node:
        raise ValueError(f"{path}: a Hydra defaults list is not supported in a method config")
    return OmegaConf.to_container(OmegaConf.create({"preset": {}, "method": node}).method, resolve=True)


def _typed_config(name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with the keys it leaves out taken from ``method_defaults``, names and types checked (OmegaConf
    converts what it safely can, e.g. 600 -> 600.0 for a float); one-line ValueError naming the key otherwise."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cls = method_class(name)
    known = method_fields(name)
    missing = [k for k in known if k not in cfg]
    full = {**{k: v for k, v in method_defaults(name).items() if k in missing}, **cfg} if missing else dict(cfg)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), full)
        return OmegaConf.to_container(merged, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        first = str(err).strip().splitlines()[0]
        text = f"method.{key}: {first}" if key else first
        if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
            text += f"; expected some of {sorted(known)}"
        raise ValueError(f"bad 'method' config ({name}): {text}") from None


def build_method(cfg: Mapping[str, Any]) -> Method:
    """A Method from a plain mapping (e.g. the Hydra ``method`` node). The one check of a method config: unknown
    method or key, wrong type and (DCFT) invalid value are a one-line ValueError; keys left out take the
    defaults of ``conf/method/<name>.yaml``."""
    cfg = dict(cfg)
    name = cfg.get("name")
    return method_class(name)(**_typed_config(name, cfg))


@torch.no_grad()
def adapter_diagnostics(model: nn.Module) -> dict[str, float]:
    """Factor norms and relative update size of every PEFT tuner layer in ``model`` (see ``Method.diagnostics``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    squares: dict[str, float] = {}
    ratios: list[float] = []
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer) or not hasattr(module, "get_delta_weight"):
            continue
        first = getattr(module, module.adapter_layer_names[0], None)
        adapters = [a for a in module.active_adapters if isinstance(first, (nn.ModuleDict, nn.ParameterDict))
                    and a in first]
        for adapter in adapters:
            for part in module.adapter_layer_names:
                store = getattr(module, part, None)
                param = store[adapter] if isinstance(store, (nn.ModuleDict, nn.ParameterDict)) and adapter in store \
                    else None
                if isinstance(param, nn.Module):  # LoRA keeps its factors as nn.Linear modules
                    param = getattr(param, "weight", None)
                if isinstance(param, torch.Tensor):
                    squares[part] = squares.get(part, 0.0) + float(param.detach().float().pow(2).sum())
            weight = module.get_base_layer().weight.detach().float()
            delta = module.get_delta_weight(adapter).detach().float()
            ratios.append(float(torch.linalg.norm(delta) / torch.linalg.norm(weight)))
    out = {f"norm/{part}": value ** 0.5 for part, value in squares.items()}
    if ratios:
        out.update(delta_rel_mean=sum(ratios) / len(ratios), delta_rel_max=max(ratios))
    return out


def _check_targets_exist(model: nn.Module, targets: list[str]) -> None:
    """A readable error instead of PEFT's when no module of the backbone matches a target name."""
    if not targets:
        raise ValueError("no target modules given for the adapter; expected a list of module names")
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(
            f"target modules {missing} not found in {type(model).__name__}; "
            f"expected names such as {sorted({n.rsplit('.', 1)[-1] for n in names if n})[:12]}"
        )


def _head_only_model(model: nn.Module, heads: list[str]) -> nn.Module:
    """Freeze the backbone, train only the head modules (no adapter)."""
    names = dict(model.named_modules())
    found = [n for n in names if any(n == h or n.endswith("." + h) for h in heads)]
    if not found:
        raise ValueError(f"head modules {heads} not found in {type(model).__name__}; nothing would be trained")
    for p in model.parameters():
        p.requires_grad = False
    for n in found:
        for p in names[n].parameters():
            p.requires_grad = True
    model.dcft_lab_head_modules = found  # lets count_parameters tell head from adapter without PEFT wrappers
    return model
