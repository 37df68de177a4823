"""DCFT's math: the update ΔW = (alpha / r) * ConvT(B @ A; C, stride) and how a linear layer applies it.

Shapes follow the paper, where an adapted weight W is d_in x d_out and acts as ``x @ W`` (``nn.Linear`` stores
its transpose; GPT-2's ``Conv1D`` stores W itself, PEFT's ``fan_in_fan_out``).
With m_in = (d_in - d) / s + 1 and m_out = (d_out - d) / s + 1:
    B: (m_in, k)    A: (k, m_out)    C: (d, d)    F = B @ A: (m_in, m_out)
    ConvT(F; C, s)[s*i + p, s*j + q] += F[i, j] * C[p, q]

With s == d the patches do not overlap and ConvT(F; C) == kron(F, C), so

    (x @ kron(B @ A, C))[n, d*j + q] = sum_r A[r, j] * sum_p (sum_i B[i, r] * x[n, d*i + p]) * C[p, q]

which three small contractions compute in O(n * k * (d_in + d_out + d^2)) without the d_in x d_out matrix.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.autograd.function import once_differentiable
from transformers.pytorch_utils import Conv1D

from .config import DCFT_INITS, DCFTConfig


def subspace_side(dim: int, kernel_size: int, stride: int) -> int | None:
    """Side m of the subspace so that ConvT output is exactly ``dim`` wide: (dim - d) / s + 1, or None."""
    if dim < kernel_size or dim % stride or (dim - kernel_size) % stride:
        return None
    return (dim - kernel_size) // stride + 1


def kron_matmul(
    x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, C: torch.Tensor, add_to: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ kron(B @ A, C)`` without building the Kronecker product (stride == kernel size).

    With ``add_to`` (shaped like the result) returns ``add_to + x @ kron(B @ A, C)`` from one fused batched
    multiply-add, saving an (n, d_out) temporary; ``add_to`` itself is left unchanged.
    """
    m_in, k = B.shape
    m_out, d = A.shape[1], C.shape[0]
    lead = x.shape[:-1]
    x3 = x.reshape(-1, m_in, d)  # x3[n, i, p] = x[n, d*i + p]; a view for contiguous x
    n = x3.shape[0]
    # Explicit bmm against stride-0 expanded factors: torch.matmul would fold by copying x3.
    u = torch.bmm(B.t().expand(n, k, m_in), x3)  # (n, k, d): sum_i B[i, r] x3[n, i, p]
    v = u @ C  # (n, k, d): sum_p u[n, r, p] C[p, q]
    At = A.t().expand(n, m_out, k)  # the same (m_out, k) matrix for every token
    if add_to is None:
        y = torch.bmm(At, v)  # (n, m_out, d): sum_r A[r, j] v[n, r, q]
    else:
        y = torch.baddbmm(add_to.reshape(n, m_out, d), At, v)
    return y.reshape(*lead, m_out * d)


class _KronLinearFunction(torch.autograd.Function):
    """``F.linear(x, W, b) + x @ kron(B @ A, C)`` as one autograd node, for 2-D x and a single dtype.

    The fast path of ``DCFTLinear.forward``; same three contractions as ``kron_matmul``, so
    O(n * k * (d_in + d_out + d^2)) work and never the d_in x d_out matrix. Why a node of its own: on a CPU one
    fresh (n, d_out) or (n, d_in) tensor (page faults) costs more than all of the adapter's arithmetic. Here the
    adapter's share is written first into the output buffer (with the bias) and the base product is accumulated
    onto it by the GEMM itself (``addmm_``, beta = 1), as ``F.linear`` does with its bias; backward does the same
    for the input gradient. Saved for backward: x and W (kept by the base layer anyway) and two (n, k, d) projections.
    """

    @staticmethod
    def _write_product(out3: torch.Tensor, M: torch.Tensor, w: torch.Tensor, add: torch.Tensor | None) -> None:
        """out3[n, i, q] = sum_r M[i, r] w[n, r, q] (+ add[i * d + q]); M: (m, k), w: (n, k, d)."""
        n, m, d = out3.shape
        add3 = None if add is None else add.view(1, m, d)
        if M.shape[1] > 1:
            if add3 is None:
                torch.bmm(M.expand(n, *M.shape), w, out=out3)
            else:
                torch.baddbmm(add3.expand(n, m, d), M.expand(n, *M.shape), w, out=out3)
        elif d >= 8:  # rank 1: a broadcast multiply, d elements per inner loop
            if add3 is None:
                torch.mul(M.view(1, m, 1), w, out=out3)
            else:
                torch.addcmul(add3, M.view(1, m, 1), w, out=out3)
        else:  # small d: one pass per q keeps the inner loop m long instead of d short (~2.5x faster at d=2)
            for q in range(d):
                if add3 is None:
                    torch.mul(M.view(1, m), w[:, :, q], out=out3[:, :, q])
                else:
                    torch.addcmul(add3[:, :, q], M.view(1, m), w[:, :, q], out=out3[:, :, q])

    @staticmethod
    def _sum_products(left3: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_{n, q} left3[n, i, q] w[n, r, q] -> (m, k); left3: (n, m, d), w: (n, k, d)."""
        n, m, d = left3.shape
        k = w.shape[1]
        if d <= 4:
            # One GEMM over all (p, q) pairs, keeping the p == q diagonal: at most 4x the exact multiply-adds (so
            # still O(n k d_in)), but several times faster than n tiny (m x d) @ (d x k) products with d <= 4.
            pairs = w.reshape(n, k * d).t() @ left3.reshape(n, m * d)  # [(r, p), (i, q)]
            return pairs.view(k, d, m, d).diagonal(dim1=1, dim2=3).sum(-1).t()
        return torch.bmm(left3, w.transpose(1, 2)).sum(0)

    @staticmethod
    def forward(ctx, x, weight, bias, B, A, C):
        m_in, k = B.shape
        m_out, d = A.shape[1], C.shape[0]
        n = x.shape[0]
        # Explicit bmm against the stride-0 expanded factor: torch.matmul would fold by copying x.
        u = torch.bmm(B.t().expand(n, k, m_in), x.reshape(n, m_in, d))  # (n, k, d)
        v = u @ C  # (n, k, d)
        result = x.new_empty(n, m_out * d)
        _KronLinearFunction._write_product(result.view(n, m_out, d), A.t(), v, bias)
        result.addmm_(x, weight.t())
        ctx.save_for_backward(x, weight, B, A, C, u, v)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, B, A, C, u, v = ctx.saved_tensors
        need_x, need_w, need_b, need_B, need_A, need_C = ctx.needs_input_grad
        m_in, k = B.shape
        m_out, d = A.shape[1], C.shape[0]
        n = x.shape[0]
        grad3 = grad.reshape(n, m_out, d)
        grad_x = grad_w = grad_b = grad_B = grad_A = grad_C = None
        if need_A:
            grad_A = _KronLinearFunction._sum_products(grad3, v).t()
        if need_x or need_B or need_C:
            grad_v = torch.bmm(A.expand(n, k, m_out), grad3)  # (n, k, d): sum_j A[r, j] grad3[n, j, q]
            if need_C:
                grad_C = u.reshape(-1, d).t() @ grad_v.reshape(-1, d)
            grad_u = grad_v @ C.t()
            if need_x:
                grad_x = x.new_empty(n, m_in * d)
                _KronLinearFunction._write_product(grad_x.view(n, m_in, d), B, grad_u, None)
                grad_x.addmm_(grad, weight)  # + the base layer's input gradient, accumulated by the GEMM
            if need_B:
                grad_B = _KronLinearFunction._sum_products(x.reshape(n, m_in, d), grad_u)
        if need_w:
            grad_w = grad.t() @ x
        if need_b:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, grad_B, grad_A, grad_C


def conv_transpose_update(B: torch.Tensor, A: torch.Tensor, C: torch.Tensor, stride: int) -> torch.Tensor:
    """The materialized update ConvT(B @ A; C, stride), shape (d_in, d_out)."""
    if stride == C.shape[0]:
        return torch.kron(B @ A, C)  # same thing, cheaper than a convolution
    return F.conv_transpose2d((B @ A)[None, None], C[None, None], stride=stride)[0, 0]


class DCFTLayer(BaseTunerLayer):
    """Adapter state on one ``nn.Linear`` or ``Conv1D``; several named adapters may coexist (PEFT convention)."""

    adapter_layer_names = ("dcft_A", "dcft_B", "dcft_C")
    other_param_names = ("dcft_kernel_size", "dcft_stride", "dcft_scaling", "dcft_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.dcft_A = nn.ParameterDict({})
        self.dcft_B = nn.ParameterDict({})
        self.dcft_C = nn.ParameterDict({})
        self.dcft_kernel_size: dict[str, int] = {}
        self.dcft_stride: dict[str, int] = {}
        self.dcft_scaling: dict[str, float] = {}
        self.dcft_dropout = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        # The paper's W is d_in x d_out; nn.Linear.weight is (out_features, in_features), Conv1D.weight is W itself.
        if isinstance(base, nn.Linear):
            self.fan_in_fan_out = False
            self.in_features, self.out_features = base.in_features, base.out_features
        elif isinstance(base, Conv1D):
            self.fan_in_fan_out = True
            self.in_features, self.out_features = base.weight.shape
        else:
            raise TypeError(
                f"DCFT cannot adapt a {type(base).__name__}; expected torch.nn.Linear or transformers Conv1D"
            )

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
            with torch.no_grad():
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

    def _dcft_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``dropout(x) @ ΔW`` for one adapter, in the adapter's dtype (the unfused per-adapter computation)."""
        A, B = self.dcft_A[adapter_name], self.dcft_B[adapter_name]
        C = self.dcft_C[adapter_name] * self.dcft_scaling[adapter_name]
        h = self.dcft_dropout[adapter_name](x).to(A.dtype)
        if self.dcft_stride[adapter_name] != self.dcft_kernel_size[adapter_name]:
            # overlapping patches (stride ablation): apply the materialized transposed convolution
            return h @ conv_transpose_update(B, A, C, self.dcft_stride[adapter_name])
        return kron_matmul(h, B, A, C)

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

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for name in adapter_names:
            if name not in self.dcft_A:
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
            if name in self.dcft_A:
                base.weight.data -= self.get_delta_weight(name)

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
        base = self.base_layer
        if len(active) == 1 and not args and not kwargs:
            name = active[0]
            A, B, C = self.dcft_A[name], self.dcft_B[name], self.dcft_C[name]
            dropout = self.dcft_dropout[name]
            # Fast path: base + adapter in one node (see _KronLinearFunction). Only where it is the same
            # computation: a plain nn.Linear or Conv1D without hooks, no active dropout, one dtype, no autocast.
            if (
                type(base) in (nn.Linear, Conv1D) and not base._forward_hooks and not base._forward_pre_hooks
                and self.dcft_stride[name] == self.dcft_kernel_size[name]
                and (isinstance(dropout, nn.Identity) or not dropout.training or dropout.p == 0)
                and x.dtype == base.weight.dtype == A.dtype == B.dtype == C.dtype
                and not torch.is_autocast_enabled(x.device.type)
            ):
                # The node takes nn.Linear's (out, in) weight; Conv1D's (in, out) one goes in as a transposed view
                # (no copy), so the base product is the same GEMM and autograd hands back Conv1D's layout.
                weight = base.weight.t() if self.fan_in_fan_out else base.weight
                # The scalar scale goes into the d x d kernel: cheaper than scaling an (n, d_out) tensor.
                out = _KronLinearFunction.apply(
                    x.reshape(-1, self.in_features), weight, base.bias, B, A, C * self.dcft_scaling[name]
                )
                return out.reshape(*x.shape[:-1], self.out_features)
        result = base(x, *args, **kwargs)
        for name in active:
            A, B = self.dcft_A[name], self.dcft_B[name]
            if self.dcft_stride[name] == self.dcft_kernel_size[name] and result.dtype == A.dtype:
                C = self.dcft_C[name] * self.dcft_scaling[name]
                h = self.dcft_dropout[name](x).to(A.dtype)
                result = kron_matmul(h, B, A, C, add_to=result)  # the add fused into the last product
            else:
                result = result + self._dcft_delta(name, x).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "dcft." + super().__repr__()
