"""What the lab's weight-update tuner layers (DCFT, SoRA) share, in the style of PEFT's ``BaseTunerLayer``
subclasses: wrapping one ``nn.Linear`` or GPT-2 ``Conv1D`` (its shape and orientation) and folding
``get_delta_weight`` into the base weight (merge / unmerge). Each method's math stays in its own file: its parameters
(``adapter_layer_names``, the first of which holds every adapter the layer has), ``update_layer``,
``get_delta_weight`` (in the base weight's orientation) and ``forward``.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D


class LinearTunerLayer(BaseTunerLayer):
    """Adapter state on one ``nn.Linear`` or ``Conv1D`` whose update ΔW folds into the base weight."""

    method_label: ClassVar[str]  # "DCFT", "SoRA": in error messages

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        """Call first in the subclass's ``__init__``, before it creates its parameter dicts."""
        self.base_layer = base_layer
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        # nn.Linear.weight is (out_features, in_features); Conv1D.weight is (in, out) (PEFT's fan_in_fan_out).
        if isinstance(base, nn.Linear):
            self.fan_in_fan_out = False
            self.in_features, self.out_features = base.in_features, base.out_features
        elif isinstance(base, Conv1D):
            self.fan_in_fan_out = True
            self.in_features, self.out_features = base.weight.shape
        else:
            raise TypeError(f"{self.method_label} cannot adapt a {type(base).__name__}; expected torch.nn.Linear or "
                            "transformers Conv1D")

    def holds(self, adapter_name: str) -> bool:
        """Whether this layer has the adapter ``adapter_name`` (a model's layers may hold different ones)."""
        return adapter_name in getattr(self, self.adapter_layer_names[0])

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for name in adapter_names:
            if not self.holds(name):
                continue
            merged = base.weight.data + self.get_delta_weight(name)
            if safe_merge and not torch.isfinite(merged).all():
                # word for word LoRA's message: PEFT's tests (and users' code) match on it
                raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
            base.weight.data = merged
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if self.holds(name):
                base.weight.data -= self.get_delta_weight(name)
