"""Bottleneck adapters (HAdapter: Houlsby et al., ICML 2019; PAdapter: Pfeiffer et al., EACL 2021) as a PEFT tuner.

An adapter is a small residual MLP on a sub-layer's output h:  h + up(f(down(h))), down: d -> b, up: b -> d (both
with biases), f a nonlinearity; ``up`` starts at (or near) zero, so the adapted model starts at (near) the pretrained
one. It wraps the output projection of a Transformer sub-layer — the attention output dense and / or the FFN's second
dense — so that ``dense(x) + adapter(dense(x))`` is what the block's own dropout, residual add and LayerNorm see: where
both papers put it, on the sub-layer's output before the skip connection and the layer normalization (Houlsby et al.,
Fig. 2), for post-LN BERT / RoBERTa / DeBERTa / BART layers (and before the residual add in pre-LN decoders).

- HAdapter: two adapters per layer, after the attention output projection and after the FFN.
- PAdapter: one adapter per layer, after the FFN only.

Per adapter: 2·d·b + b + d parameters (weights and biases of down and up). On DeBERTaV3-base (12 layers, d = 768):
HAdapter b = 8: 12 · 2 · (2·768·8 + 8 + 768) = 313,536; PAdapter b = 16: 12 · (2·768·16 + 16 + 768) = 304,320.

Where this differs from AdapterHub (``adapters`` 1.3.0, which pins transformers 4.57 and cannot be installed beside
transformers 5): the adapter runs on the dense output before the sub-layer's dropout (AdapterHub: after it), and
PAdapter puts its adapter where HAdapter's FFN adapter sits; AdapterHub's Pfeiffer config (``SeqBnConfig``) instead
applies the pretrained LayerNorm and residual before the adapter too (``original_ln_before``). Parameter counts are
the same. The nonlinearities default to AdapterHub's (Houlsby: swish, Pfeiffer: relu).

Merging is not defined (the adapter is nonlinear): ``merge`` and ``merge_and_unload`` raise; ``unload`` works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from .peft_compat import BOTTLENECK_PEFT_TYPE, finish_config, register

NONLINEARITIES = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
INITS = ("houlsby", "bert", "zero")
PLACEMENTS = ("houlsby", "pfeiffer")

# The output projections of each layer's attention block and FFN block, by transformers model_type (suffix match).
# BART: self-attention only (AdapterHub's default: no adapter after cross-attention).
SITES = {
    "deberta-v2": ("attention.output.dense", "output.dense"),
    "bert": ("attention.output.dense", "output.dense"),
    "roberta": ("attention.output.dense", "output.dense"),
    "bart": ("self_attn.out_proj", "fc2"),
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
}


def bottleneck_sites(model_type: str, placement: str) -> tuple[list[str], list[str] | None]:
    """(target_modules, exclude_modules) of ``placement`` on ``model_type``: HAdapter both output projections,
    PAdapter the FFN's only (excluding an attention site whose name also ends in the FFN's, as
    ``attention.output.dense`` ends in ``output.dense``)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"bottleneck placement {placement!r} is unknown; expected one of {PLACEMENTS}")
    if model_type not in SITES:
        raise ValueError(f"no adapter sites known for model type {model_type!r}; expected one of {sorted(SITES)}, "
                         "or name the modules to wrap with method.target_modules")
    attention, ffn = SITES[model_type]
    if placement == "houlsby":
        return [attention, ffn], None
    return [ffn], ([attention] if attention.endswith("." + ffn) else None)


@dataclass
class BottleneckConfig(PeftConfig):
    """A bottleneck adapter after each target module's output (see the module docstring)."""

    bottleneck: int = field(default=8, metadata={"help": "Bottleneck width b (down: d -> b, up: b -> d)."})
    nonlinearity: str = field(default="swish", metadata={"help": f"One of {sorted(NONLINEARITIES)}."})
    init: str = field(default="houlsby", metadata={
        "help": "houlsby: down and up ~ N(0, 1e-2) truncated at 2 std, biases 0 (Houlsby et al.); "
                "bert: N(0, 0.02), biases 0 (AdapterHub's default); zero: down Kaiming-uniform, up 0 (exact identity)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules whose output gets an adapter (suffix match) or a regex."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules to skip."})
    bias: str = field(default="none", metadata={"help": "Bias type: 'none' only."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules (e.g. the classifier) trained and saved in full."})
    layers_to_transform: list[int] | int | None = field(default=None)
    layers_pattern: list[str] | str | None = field(default=None)

    def __post_init__(self):
        super().__post_init__()
        finish_config(self, BOTTLENECK_PEFT_TYPE)
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ValueError(f"bottleneck={self.bottleneck!r} is invalid; expected a positive integer")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity={self.nonlinearity!r} is unknown; expected one of {sorted(NONLINEARITIES)}")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is unknown; expected one of {INITS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} is invalid; expected a probability in [0, 1)")


class BottleneckLayer(BaseTunerLayer):
    """Bottleneck adapters on the output of one ``nn.Linear`` or GPT-2 ``Conv1D``."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_act", "bottleneck_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_act = nn.ModuleDict({})
        self.bottleneck_dropout = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            self.in_features, self.out_features = base.in_features, base.out_features
        elif isinstance(base, Conv1D):
            self.in_features, self.out_features = base.weight.shape
        else:
            raise TypeError(f"a bottleneck adapter cannot wrap a {type(base).__name__}; expected torch.nn.Linear or "
                            "transformers Conv1D")

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        d, b = self.out_features, config.bottleneck
        self.bottleneck_down[adapter_name] = nn.Linear(d, b)
        self.bottleneck_up[adapter_name] = nn.Linear(b, d)
        self.bottleneck_act[adapter_name] = NONLINEARITIES[config.nonlinearity]()
        self.bottleneck_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_bottleneck_parameters(adapter_name, config.init)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    @torch.no_grad()
    def reset_bottleneck_parameters(self, adapter_name: str, init: str) -> None:
        down, up = self.bottleneck_down[adapter_name], self.bottleneck_up[adapter_name]
        if init == "houlsby":  # Houlsby et al.: zero-mean Gaussian, std 1e-2, truncated at two standard deviations
            for layer in (down, up):
                nn.init.trunc_normal_(layer.weight, mean=0.0, std=1e-2, a=-2e-2, b=2e-2)
                nn.init.zeros_(layer.bias)
        elif init == "bert":
            for layer in (down, up):
                nn.init.normal_(layer.weight, mean=0.0, std=0.02)
                nn.init.zeros_(layer.bias)
        elif init == "zero":  # LoRA's rule: the up-projection starts at zero, so the adapter is exactly the identity
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        else:
            raise ValueError(f"init={init!r} is unknown; expected one of {INITS}")

    def adapter_output(self, adapter_name: str, h: torch.Tensor) -> torch.Tensor:
        """up(f(down(dropout(h)))): what the adapter adds to the sub-layer output h."""
        down, up = self.bottleneck_down[adapter_name], self.bottleneck_up[adapter_name]
        x = self.bottleneck_dropout[adapter_name](h).to(down.weight.dtype)
        return up(self.bottleneck_act[adapter_name](down(x)))

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError("a bottleneck adapter is nonlinear: it cannot be merged into the weights")

    def unmerge(self) -> None:
        return None


class BottleneckLinear(nn.Module, BottleneckLayer):
    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig, **kwargs):
        super().__init__()
        BottleneckLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("bottleneck adapters do not support mixed-adapter batches (adapter_names=...)")
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name in self.bottleneck_down:
                result = result + self.adapter_output(name, result).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


class BottleneckModel(BaseTuner):
    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer

    def _create_and_replace(self, config: BottleneckConfig, adapter_name, target, target_name, parent, current_key,
                            **kw):
        if isinstance(target, BottleneckLinear):
            target.update_layer(adapter_name, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise TypeError(f"bottleneck target '{current_key}' is a {type(base).__name__}; "
                            "expected torch.nn.Linear or transformers Conv1D")
        new_module = BottleneckLinear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self):
        raise ValueError("a bottleneck adapter (HAdapter / PAdapter) is nonlinear: it cannot be merged into the "
                         "weights; use the unmerged adapter")


register(BOTTLENECK_PEFT_TYPE, BottleneckConfig, BottleneckModel)  # as PEFT's own tuners do, on import
