"""DCFT's layer: a frozen linear layer plus the update ΔW = (alpha / r) * ConvT(B @ A; C, stride) (a PEFT tuner layer).

Shapes follow the paper, where an adapted weight W is d_in x d_out and acts as ``x @ W`` (``nn.Linear`` stores
its transpose; GPT-2's ``Conv1D`` stores W itself, PEFT's ``fan_in_fan_out``).
With m_in = (d_in - d) / s + 1 and m_out = (d_out - d) / s + 1:
    B: (m_in, k)    A: (k, m_out)    C: (d, d)    F = B @ A: (m_in, m_out)
    ConvT(F; C, s)[s*i + p, s*j + q] += F[i, j] * C[p, q]

``forward`` returns ``base_layer(x) + scale * dropout(x) @ ΔW``; ``kernels.dcft_delta`` computes that product
without building ΔW (for s == d, the paper's setting, ConvT(F; C) == kron(F, C)), tuned for CPUs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tuner_layer import LinearTunerLayer
from .config import DCFT_INITS, DCFTConfig
from .kernels import dcft_delta


def subspace_side(dim: int, kernel_size: int, stride: int) -> int | None:
    """Side m of the subspace so that ConvT output is exactly ``dim`` wide: (dim - d) / s + 1, or None."""
    if dim < kernel_size or dim % stride or (dim - kernel_size) % stride:
        return None
    return (dim - kernel_size) // stride + 1


def conv_transpose_update(B: torch.Tensor, A: torch.Tensor, C: torch.Tensor, stride: int) -> torch.Tensor:
    """The materialized update ConvT(B @ A; C, stride), shape (d_in, d_out): DCFT's definition."""
    if stride == C.shape[0]:
        return torch.kron(B @ A, C)  # non-overlapping patches: the same matrix, cheaper than a convolution
    return F.conv_transpose2d((B @ A)[None, None], C[None, None], stride=stride)[0, 0]


class DCFTLayer(LinearTunerLayer):
    """Adapter state on one ``nn.Linear`` or ``Conv1D``; several named adapters may coexist (PEFT convention).
    Wrapping the base layer and merge / unmerge: ``LinearTunerLayer``."""

    adapter_layer_names = ("dcft_A", "dcft_B", "dcft_C")
    other_param_names = ("dcft_kernel_size", "dcft_stride", "dcft_scaling", "dcft_dropout")
    method_label = "DCFT"

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        LinearTunerLayer.__init__(self, base_layer, **kwargs)
        self.dcft_A = nn.ParameterDict({})
        self.dcft_B = nn.ParameterDict({})
        self.dcft_C = nn.ParameterDict({})
        self.dcft_kernel_size: dict[str, int] = {}
        self.dcft_stride: dict[str, int] = {}
        self.dcft_scaling: dict[str, float] = {}
        self.dcft_dropout = nn.ModuleDict({})

    def update_layer(self, adapter_name: str, config: DCFTConfig, module_name: str = "?") -> None:
        d, s, k = config.kernel_size, config.effective_stride, config.rank
        m_in = subspace_side(self.in_features, d, s)
        m_out = subspace_side(self.out_features, d, s)
        if m_in is None or m_out is None:
            raise ValueError(
                f"DCFT cannot adapt module '{module_name}' of shape (d_in={self.in_features}, "
                f"d_out={self.out_features}) with kernel_size={d}, stride={s}: expected every dimension D to be "
                f">= kernel_size, divisible by the stride, and (D - kernel_size) divisible by the stride"
            )
        self.dcft_kernel_size[adapter_name] = d
        self.dcft_stride[adapter_name] = s
        self.dcft_scaling[adapter_name] = config.alpha / config.r
        self.dcft_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.dcft_B[adapter_name] = nn.Parameter(torch.empty(m_in, k))
        self.dcft_A[adapter_name] = nn.Parameter(torch.empty(k, m_out))
        self.dcft_C[adapter_name] = nn.Parameter(torch.empty(d, d))
        self.reset_dcft_parameters(adapter_name, config.init, config.init_std)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    @torch.no_grad()
    def reset_dcft_parameters(self, adapter_name: str, init: str, std: float) -> None:
        """Initialise B (m_in, k), A (k, m_out) and C (d, d); ``init`` is one of ``DCFT_INITS``.

        Why the variants: the update is a product of three factors, so each factor's gradient is scaled by the
        other two. With all three ~N(0, 0.02) ("official") the first gradients are ~1e-4 of LoRA's and training
        starts slowly; the other variants start from ΔW = 0 with one factor zero and O(1) gradients for it.
        """
        A, B, C = self.dcft_A[adapter_name], self.dcft_B[adapter_name], self.dcft_C[adapter_name]
        if init in ("official", "zero"):
            for param in (A, B, C):
                nn.init.normal_(param, mean=0.0, std=std)
            if init == "zero":  # ΔW = 0 at step 0; A still gets (tiny) gradients since B, C are non-zero
                nn.init.zeros_(A)
        elif init == "lora":
            # LoRA's rule: its down-projection is Kaiming-uniform (a=sqrt(5): U(±1/sqrt(fan_in))) and its
            # up-projection zero. B is DCFT's down-projection over m_in blocks, A its up-projection; C = I makes
            # x @ kron(B A, C) the same block-wise projection, so A's first gradient matches LoRA's B.
            nn.init.kaiming_uniform_(B.T, a=math.sqrt(5))  # B.T is (k, m_in): fan_in = m_in
            nn.init.zeros_(A)
            C.copy_(torch.eye(C.shape[0], dtype=C.dtype, device=C.device))
        elif init == "orthonormal":
            # B and A^T sit where the orthogonality regularizer wants them (G^T G = I_k), the kernel starts at 0:
            # ΔW = 0 and C's first gradient is O(1) (its neighbours are unit-norm, not 0.02-sized).
            nn.init.orthogonal_(B)
            nn.init.orthogonal_(A.T)
            nn.init.zeros_(C)
        else:
            raise ValueError(f"DCFT init={init!r} is unknown; expected one of {DCFT_INITS}")

    def delta_weight_in_out(self, adapter_name: str) -> torch.Tensor:
        """The scaled update in the paper's orientation, (d_in, d_out)."""
        update = conv_transpose_update(
            self.dcft_B[adapter_name], self.dcft_A[adapter_name], self.dcft_C[adapter_name],
            self.dcft_stride[adapter_name],
        )
        return update * self.dcft_scaling[adapter_name]

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The update in the base weight's orientation: (out, in) for nn.Linear, (in, out) for Conv1D."""
        weight = self.get_base_layer().weight
        if self.fan_in_fan_out:
            return self.delta_weight_in_out(adapter_name).to(weight.dtype)
        return self.delta_weight_in_out(adapter_name).t().to(weight.dtype)

    def _dcft_delta(
        self, adapter_name: str, x: torch.Tensor, add_to: torch.Tensor | None = None, base_layer: nn.Module | None = None
    ) -> torch.Tensor:
        """``scale * dropout(x) @ ΔW`` for one adapter (in its dtype), added to ``add_to`` or to ``base_layer(x)``
        if given; ``kernels.dcft_delta`` computes it without building ΔW."""
        return dcft_delta(
            x, self.dcft_B[adapter_name], self.dcft_A[adapter_name], self.dcft_C[adapter_name],
            stride=self.dcft_stride[adapter_name], scaling=self.dcft_scaling[adapter_name],
            dropout=self.dcft_dropout[adapter_name], add_to=add_to, base_layer=base_layer,
        )

    def _check_forward_args(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Refuse ``adapter_names`` where per-row routing is undefined (PEFT's LoRA checks and messages)."""
        adapter_names = kwargs.get("adapter_names", None)
        if adapter_names is None:
            return
        if len(x) != len(adapter_names):
            raise ValueError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(adapter_names)} and {len(x)} respectively."
            )
        if self.merged:
            # a merged update is in every row's weights: no row can be given a different adapter or the base
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."
            )

    def _mixed_batch_forward(
        self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
    ) -> torch.Tensor:
        """Row n of the batch through adapter ``adapter_names[n]``; ``"__base__"`` rows get the base layer alone.

        PEFT's ``adapter_names=`` contract (LoRA's ``_mixed_batch_forward``): the base layer runs once on the whole
        batch and each adapter adds its update to its own rows only. Adapters this layer does not hold add nothing.
        """
        result = self.base_layer(x, *args, **kwargs)
        for name in set(adapter_names):  # every row gets one adapter, so the order of the adapters does not matter
            if name == "__base__" or name not in self.dcft_A:
                continue
            rows = [i for i, row_adapter in enumerate(adapter_names) if row_adapter == name]
            result[rows] += self._dcft_delta(name, x[rows]).to(result.dtype)
        return result


class DCFTLinear(nn.Module, DCFTLayer):
    def __init__(self, base_layer: nn.Module, adapter_name: str, config: DCFTConfig, module_name: str = "?", **kw):
        super().__init__()
        DCFTLayer.__init__(self, base_layer, **kw)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, module_name)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.dcft_A]
        if len(active) == 1 and not args and not kwargs:
            # the usual call: the kernel runs the base layer itself, so that it can fuse it with the update
            return self._dcft_delta(active[0], x, base_layer=self.base_layer)
        result = self.base_layer(x, *args, **kwargs)
        for name in active:
            result = self._dcft_delta(name, x, add_to=result)
        return result

    def __repr__(self) -> str:
        return "dcft." + super().__repr__()
