"""SoRA (Ding et al., EMNLP 2023, "Sparse Low-rank Adaptation of Pre-trained Language Models") as a PEFT tuner.

A LoRA update with a gate vector g between its factors, ΔW x = (alpha / r) · B diag(g) A x, whose entries a proximal
(soft-threshold) step drives to exactly zero during training; the gate's nonzeros are the adapter's effective rank.
The layer and the gate step follow the authors' code (github.com/TsinghuaC3I/SoRA, commit c275ac2):

- ``src/lora.py`` ``LowRankLinear``: A (r x d_in) Kaiming-uniform (a = sqrt(5)), B (d_out x r) zero, gate ~ N(0, 1)
  of r entries, scaling alpha / r, forward ``((dropout(x) @ A.T) * gate) @ B.T * scaling``;
- ``src/trainer.py`` ``SparseTrainer.compute_loss``: ``sparse_lambda * sum |g| / numel(g)`` over all gates is added to
  the task loss (``SoRAModel.l1_penalty``);
- ``src/sparse_optimizer.py`` ``SparseAdamW.step`` (the optimizer ``run_glue.py`` imports): an AdamW step of the gates
  (their own learning rate, default the model's, no weight decay) followed by the threshold step ``gate_threshold_``
  with ``sparse_lambda_2`` (the paper's ξ) — not multiplied by the learning rate (``sparse_optimizer_multiply_lr.py``,
  unused by the scripts, multiplies it);
- ``SparseAdamW._build_lambda_list`` / ``step_lambda``: the sparsifying schedule of ξ (``lambda_values``).

Merging is defined (ΔW = scaling · B diag(g) A is linear in x): ``merge_and_unload`` folds it into W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from .peft_compat import SORA_PEFT_TYPE, finish_config, register
from .tuner_layer import LinearTunerLayer

LAMBDA_SCHEDULES = ("linear", "log_linear", "exp_linear")


@dataclass
class SoRAConfig(PeftConfig):
    """SoRA: LoRA of rank ``r`` (the paper's r_max) with a gate vector between A and B (see the module docstring).

    The sparsity hyper-parameters (``sparse_lambda``, ``sparse_lambda_2`` and the schedule) belong to training, not to
    the adapter: they are keys of ``method=sora`` (``methods.SoRAMethod``), not of this config."""

    r: int = field(default=8, metadata={"help": "Rank r_max of A and B (the gate's length)."})
    alpha: float = field(default=16.0, metadata={"help": "Scaling numerator: the update is scaled by alpha / r."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter input."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names (suffix match) or a regex of modules to adapt."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules to skip."})
    bias: str = field(default="none", metadata={"help": "Bias type: 'none' only."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules (e.g. the classifier) trained and saved in full."})
    layers_to_transform: list[int] | int | None = field(default=None)
    layers_pattern: list[str] | str | None = field(default=None)

    def __post_init__(self):
        super().__post_init__()
        finish_config(self, SORA_PEFT_TYPE)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"SoRA r={self.r!r} is invalid; expected an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SoRA dropout={self.dropout!r} is invalid; expected a probability in [0, 1)")


class SoRALayer(LinearTunerLayer):
    """A (r x d_in), B (d_out x r), gate (r,) on one ``nn.Linear`` or GPT-2 ``Conv1D``. Wrapping the base layer and
    merge / unmerge: ``LinearTunerLayer``."""

    adapter_layer_names = ("sora_A", "sora_B", "sora_gate")
    other_param_names = ("sora_r", "sora_scaling", "sora_dropout")
    method_label = "SoRA"

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        LinearTunerLayer.__init__(self, base_layer, **kwargs)
        self.sora_A = nn.ParameterDict({})
        self.sora_B = nn.ParameterDict({})
        self.sora_gate = nn.ParameterDict({})
        self.sora_r: dict[str, int] = {}
        self.sora_scaling: dict[str, float] = {}
        self.sora_dropout = nn.ModuleDict({})

    def update_layer(self, adapter_name: str, config: SoRAConfig) -> None:
        r = config.r
        self.sora_r[adapter_name] = r
        self.sora_scaling[adapter_name] = config.alpha / r
        self.sora_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.sora_A[adapter_name] = nn.Parameter(torch.empty(r, self.in_features))
        self.sora_B[adapter_name] = nn.Parameter(torch.zeros(self.out_features, r))
        self.sora_gate[adapter_name] = nn.Parameter(torch.empty(r))
        with torch.no_grad():  # src/lora.py: kaiming_uniform_(A, a=sqrt(5)), zeros_(B), gate = randn(1, r)
            nn.init.kaiming_uniform_(self.sora_A[adapter_name], a=math.sqrt(5))
            self.sora_gate[adapter_name].normal_()
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """scaling · B diag(g) A in the base weight's orientation: (out, in) for nn.Linear, (in, out) for Conv1D."""
        B, A, g = self.sora_B[adapter_name], self.sora_A[adapter_name], self.sora_gate[adapter_name]
        delta = (B * g) @ A * self.sora_scaling[adapter_name]
        weight = self.get_base_layer().weight
        return (delta.t() if self.fan_in_fan_out else delta).to(weight.dtype)

    def _sora_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        A, B, g = self.sora_A[adapter_name], self.sora_B[adapter_name], self.sora_gate[adapter_name]
        x = self.sora_dropout[adapter_name](x).to(A.dtype)
        return ((x @ A.t()) * g) @ B.t() * self.sora_scaling[adapter_name]


class SoRALinear(nn.Module, SoRALayer):
    def __init__(self, base_layer: nn.Module, adapter_name: str, config: SoRAConfig, **kwargs):
        super().__init__()
        SoRALayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("SoRA does not support mixed-adapter batches (adapter_names=...)")
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name in self.sora_A:
                result = result + self._sora_delta(name, x).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "sora." + super().__repr__()


class SoRAModel(BaseTuner):
    prefix: str = "sora_"
    tuner_layer_cls = SoRALayer

    def _create_and_replace(self, config: SoRAConfig, adapter_name, target, target_name, parent, current_key, **kw):
        if isinstance(target, SoRALinear):
            target.update_layer(adapter_name, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise TypeError(f"SoRA target '{current_key}' is a {type(base).__name__}; "
                            "expected torch.nn.Linear or transformers Conv1D")
        new_module = SoRALinear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def gates(self, adapter_name: str | None = None) -> list[torch.Tensor]:
        """Every SoRA layer's gate of this adapter, in module order."""
        adapter_name = adapter_name or self.active_adapters[0]
        return [m.sora_gate[adapter_name] for m in self.model.modules()
                if isinstance(m, SoRALayer) and adapter_name in m.sora_gate]


def l1_penalty(gates: list[torch.Tensor]) -> torch.Tensor:
    """sum |g| / numel over all gates (``SparseTrainer.compute_loss``, before its ``sparse_lambda`` factor)."""
    if not gates:
        raise ValueError("no SoRA gates found: is the model adapted with SoRA?")
    return torch.cat([g.reshape(-1) for g in gates]).abs().sum() / sum(g.numel() for g in gates)


@torch.no_grad()
def gate_threshold_(gate: torch.Tensor, threshold: float) -> torch.Tensor:
    """The authors' threshold step on ``gate``, in place (``SparseAdamW.step`` in src/sparse_optimizer.py, verbatim):

        p[p > ξ] -= ξ;  p[p < -ξ] += ξ;  p[|p| < ξ] = 0

    The three assignments run in sequence, so an entry in (ξ, 2ξ) is first shrunk into (0, ξ) and then zeroed: the
    step is the soft-threshold S_ξ(p) = sign(p) max(|p| - ξ, 0) for |p| >= 2ξ and for |p| <= ξ, but zeroes
    ξ < |p| < 2ξ where S_ξ would keep |p| - ξ (an entry exactly at ±ξ stays). We follow the code, not the textbook
    operator. ξ <= 0 leaves the gate unchanged (the code's ``if self.sparse_lambda > 0``)."""
    if threshold > 0:
        gate[gate > threshold] -= threshold
        gate[gate < -threshold] += threshold
        gate[gate.abs() < threshold] = 0.0
    return gate


def lambda_values(start: float, schedule: str | None, max_lambda: float | None,
                  lambda_num: int | None) -> list[float]:
    """The ξ of each stage of the sparsifying schedule (``SparseAdamW._build_lambda_list``): [start] without one;
    ``linear``: linspace(start, max, num); ``log_linear``: log(linspace(e^start, e^max, num)); ``exp_linear``:
    exp(linspace(log start, log max, num))."""
    if schedule is None:
        return [float(start)]
    if schedule not in LAMBDA_SCHEDULES:
        raise ValueError(f"SoRA lambda_schedule={schedule!r} is unknown; expected one of {LAMBDA_SCHEDULES} or null")
    if max_lambda is None or lambda_num is None:
        raise ValueError(f"SoRA lambda_schedule={schedule!r} needs max_lambda and lambda_num")
    if schedule == "linear":
        values = np.linspace(start, max_lambda, lambda_num)
    elif schedule == "log_linear":
        values = np.log(np.linspace(np.exp(start), np.exp(max_lambda), lambda_num))
    else:
        values = np.exp(np.linspace(np.log(start), np.log(max_lambda), lambda_num))
    return [float(v) for v in values]


def stage_value(values: list[float], step: int, total_steps: int) -> float:
    """ξ at optimizer step ``step`` (0-based) of ``total_steps``: the run is cut into len(values) equal stages.

    An in-training variant, not the authors' procedure: their later stages (``run_glue.py``: 15 more epochs per ξ)
    reuse the first run's optimizer and linear schedules, which have already decayed to 0, so they only threshold
    the gates — a pruning sweep after training with an evaluation per ξ. Here the stages share one run's step budget
    and keep training at the live learning rate while ξ rises. The lab's default (no schedule) is the authors'
    no-schedule script, which this does not touch."""
    if len(values) == 1 or total_steps <= 0:
        return values[0]
    return values[min(len(values) - 1, int(step * len(values) // total_steps))]


register(SORA_PEFT_TYPE, SoRAConfig, SoRAModel)  # as PEFT's own tuners do, on import
