"""How ``DCFTLinear`` computes ``x @ ΔW`` fast on a CPU, without building ΔW: ``dcft_delta`` is the one entry point.

``layer.py`` defines the update, ΔW = ConvT(B @ A; C, s) (d_in x d_out). Here is how the layer applies it. With
s == d (the paper's setting) the patches do not overlap, ConvT(F; C) == kron(F, C), and

    (x @ kron(B @ A, C))[n, d*j + q] = sum_r A[r, j] * sum_p (sum_i B[i, r] * x[n, d*i + p]) * C[p, q]

is three small contractions: O(n * k * (d_in + d_out + d^2)) work, never the d_in x d_out matrix.
Shapes: x (n, d_in = m_in * d), B (m_in, k), A (k, m_out), C (d, d), output (n, d_out = m_out * d).

Paths, and why each exists (every path computes the same function; tests/test_dcft_adapter.py checks each one
against conv_transpose2d on the materialized ΔW):

1. Fused base + update, ``_KronLinearFunction`` (the training case: one adapter, plain nn.Linear / Conv1D). On a
   CPU one fresh (n, d_out) or (n, d_in) tensor (page faults) costs more than all of the adapter's arithmetic, so
   base GEMM and update are one autograd node that writes bias + update into the output buffer and lets the base
   GEMM accumulate onto it (``addmm_``, beta = 1, as ``F.linear`` adds its bias); backward does the same for the
   input gradient. Inside it, two helpers pick the loop shape by rank k and kernel size d:
     - ``_write_block_product`` (out[n, i, q] = sum_r M[i, r] w[n, r, q]): k > 1 is a batched GEMM; k == 1 is a
       broadcast multiply, done in one pass when d >= 8 (d elements per inner loop) and in one pass per q when
       d < 8 (an inner loop m long instead of d short: ~2.5x faster at d = 2).
     - ``_sum_block_products`` (the gradients of A and B): d <= 4 is one GEMM over all (p, q) pairs keeping the
       p == q diagonal (at most 4x the exact multiply-adds, several times faster than n tiny (m x d) @ (d x k)
       products); d > 4 is a batched GEMM summed over tokens.
2. Kronecker, ``kron_matmul`` (s == d where path 1 does not apply: active dropout, hooks or subclasses of the base
   layer, extra forward arguments, several adapters, mixed dtypes, autocast): the three contractions in autograd;
   the add onto the base output is fused into the last batched product when the dtypes agree.
3. Materialized (s < d, the stride ablation): overlapping patches have no Kronecker factorization, so ΔW is built
   with conv_transpose2d, as the definition reads, and multiplied.

The scalar scaling is folded into the d x d kernel on every path: cheaper than scaling an (n, d_out) tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from transformers.pytorch_utils import Conv1D


def dcft_delta(
    x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, C: torch.Tensor, *, stride: int, scaling: float,
    dropout: nn.Module | None = None, add_to: torch.Tensor | None = None, base_layer: nn.Module | None = None,
) -> torch.Tensor:
    """``add_to + scaling * dropout(x) @ ConvT(B @ A; C, stride)``; x is (..., d_in), the result (..., d_out).

    With ``base_layer`` instead of ``add_to``, ``add_to = base_layer(x)`` is computed here, so that the base layer and
    the update can run as one fused node (path 1). With neither, the update alone, in the adapter's dtype.
    ``add_to`` itself is left unchanged.
    """
    if base_layer is not None:
        if _can_fuse(x, base_layer, B, A, C, stride, dropout):
            # The node takes nn.Linear's (out, in) weight; Conv1D's (in, out) one goes in as a transposed view
            # (no copy), so the base product is the same GEMM and autograd hands back Conv1D's layout.
            weight = base_layer.weight.t() if type(base_layer) is Conv1D else base_layer.weight
            out = _KronLinearFunction.apply(x.reshape(-1, x.shape[-1]), weight, base_layer.bias, B, A, C * scaling)
            return out.reshape(*x.shape[:-1], out.shape[-1])
        add_to = base_layer(x)
    C = C * scaling
    h = (x if dropout is None else dropout(x)).to(A.dtype)
    if stride != C.shape[0]:  # path 3
        delta = h @ F.conv_transpose2d((B @ A)[None, None], C[None, None], stride=stride)[0, 0]
    elif add_to is not None and add_to.dtype == A.dtype:  # path 2, the add fused into the last product
        return kron_matmul(h, B, A, C, add_to=add_to)
    else:  # path 2, then cast
        delta = kron_matmul(h, B, A, C)
    return delta if add_to is None else add_to + delta.to(add_to.dtype)


def _can_fuse(x, base_layer, B, A, C, stride, dropout) -> bool:
    """Path 1 only where it is the same computation as ``base_layer(x) + update``: a plain nn.Linear or Conv1D
    without hooks, s == d, no active dropout, one dtype throughout and no autocast."""
    return (
        type(base_layer) in (nn.Linear, Conv1D) and not base_layer._forward_hooks
        and not base_layer._forward_pre_hooks
        and stride == C.shape[0]
        and (dropout is None or isinstance(dropout, nn.Identity) or not dropout.training or dropout.p == 0)
        and x.dtype == base_layer.weight.dtype == A.dtype == B.dtype == C.dtype
        and not torch.is_autocast_enabled(x.device.type)
    )


def kron_matmul(
    x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, C: torch.Tensor, add_to: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ kron(B @ A, C)`` without building the Kronecker product (path 2).

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


def _write_block_product(out3: torch.Tensor, M: torch.Tensor, w: torch.Tensor, add: torch.Tensor | None) -> None:
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
    else:  # rank 1, small d: one pass per q keeps the inner loop m long instead of d short
        for q in range(d):
            if add3 is None:
                torch.mul(M.view(1, m), w[:, :, q], out=out3[:, :, q])
            else:
                torch.addcmul(add3[:, :, q], M.view(1, m), w[:, :, q], out=out3[:, :, q])


def _sum_block_products(left3: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_{n, q} left3[n, i, q] w[n, r, q] -> (m, k); left3: (n, m, d), w: (n, k, d)."""
    n, m, d = left3.shape
    k = w.shape[1]
    if d <= 4:  # one GEMM over all (p, q) pairs, then the p == q diagonal
        pairs = w.reshape(n, k * d).t() @ left3.reshape(n, m * d)  # [(r, p), (i, q)]
        return pairs.view(k, d, m, d).diagonal(dim1=1, dim2=3).sum(-1).t()
    return torch.bmm(left3, w.transpose(1, 2)).sum(0)


class _KronLinearFunction(torch.autograd.Function):
    """``F.linear(x, W, b) + x @ kron(B @ A, C)`` as one autograd node, for 2-D x and a single dtype (path 1).

    The same three contractions as ``kron_matmul``. Saved for backward: x and W (kept by the base layer anyway) and
    two (n, k, d) projections.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, B, A, C):
        m_in, k = B.shape
        m_out, d = A.shape[1], C.shape[0]
        n = x.shape[0]
        # Explicit bmm against the stride-0 expanded factor: torch.matmul would fold by copying x.
        u = torch.bmm(B.t().expand(n, k, m_in), x.reshape(n, m_in, d))  # (n, k, d)
        v = u @ C  # (n, k, d)
        result = x.new_empty(n, m_out * d)
        _write_block_product(result.view(n, m_out, d), A.t(), v, bias)
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
            grad_A = _sum_block_products(grad3, v).t()
        if need_x or need_B or need_C:
            grad_v = torch.bmm(A.expand(n, k, m_out), grad3)  # (n, k, d): sum_j A[r, j] grad3[n, j, q]
            if need_C:
                grad_C = u.reshape(-1, d).t() @ grad_v.reshape(-1, d)
            grad_u = grad_v @ C.t()
            if need_x:
                grad_x = x.new_empty(n, m_in * d)
                _write_block_product(grad_x.view(n, m_in, d), B, grad_u, None)
                grad_x.addmm_(grad, weight)  # + the base layer's input gradient, accumulated by the GEMM
            if need_B:
                grad_B = _sum_block_products(x.reshape(n, m_in, d), grad_u)
        if need_w:
            grad_w = grad.t() @ x
        if need_b:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, grad_B, grad_A, grad_C
