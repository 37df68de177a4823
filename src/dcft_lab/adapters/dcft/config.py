"""Configuration of a DCFT adapter (a PEFT ``PeftConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from ..peft_compat import DCFT_PEFT_TYPE, finish_config

DCFT_INITS = ("official", "zero", "lora", "orthonormal")
DCFT_ORTH_REGS = ("official", "paper")


def effective_stride(kernel_size: int, stride: int | None) -> int:
    """The transposed-convolution stride: ``stride``, or ``kernel_size`` when it is None (the Kronecker case)."""
    return kernel_size if stride is None else stride


@dataclass
class DCFTConfig(PeftConfig):
    """DCFT: deconvolution (transposed convolution) in a low-rank subspace.

    For an adapted weight W (d_in x d_out, acting as ``x @ W``) DCFT learns F = B @ A with B: (m_in x k),
    A: (k x m_out) and a d x d kernel C, and adds ``scaling * ConvT(F; C, stride)`` with scaling = alpha / r.
    With stride == kernel_size (the paper's setting) m = D / d and the update is exactly ``kron(F, C)``.

    Args:
        kernel_size: side d of the learnable kernel C.
        stride: transposed-convolution stride s; ``None`` means s = d (Kronecker case). With s < d the
            subspace side is (D - d) / s + 1 so the update is exactly D wide.
        rank: subspace rank k (the paper uses 1).
        alpha, r: the update is scaled by alpha / r. ``r`` changes no shape; it is the official code's
            ``lora_r`` constant (8), kept so its alpha values transfer unchanged.
        dropout: dropout on the adapter's input path.
        init: how B, A and C start (see ``DCFTLayer.reset_dcft_parameters`` for the why of each):
            ``"official"``: A, B, C ~ N(0, init_std) — the official code; ΔW tiny but non-zero at step 0.
            ``"zero"``: as official, then A = 0, so ΔW = 0 at step 0.
            ``"lora"``: A = 0, B Kaiming-uniform over its fan-in (PEFT's rule for LoRA's A), C = identity: ΔW = 0
            and A's first gradient is of LoRA's order.
            ``"orthonormal"``: B and A^T with orthonormal columns (the regularizer is 0 at step 0), C = 0.
        orth_reg: ``"official"`` = mean over factors of ||G^T G - I_k||_F (not squared);
            ``"paper"`` = sum over factors of ||G^T G - I_k||_F^2 (Eq. 4). G is B or A^T.
        orth_reg_weight: the coefficient gamma multiplying the regularizer (0.1; 0.3 for RTE / STS-B).

    The defaults below are the library's (``DCFTConfig(target_modules=...)``, no Hydra). Runs take theirs from
    ``conf/method/dcft.yaml``; both are the paper's setting, and tests/test_methods.py fails if they part.
    """

    kernel_size: int = field(default=8, metadata={"help": "Side d of the d x d transposed-convolution kernel."})
    stride: int | None = field(default=None, metadata={"help": "Stride s; None means s = kernel_size."})
    rank: int = field(default=1, metadata={"help": "Subspace rank k of F = B @ A."})
    alpha: float = field(default=16.0, metadata={"help": "Scaling numerator: the update is scaled by alpha / r."})
    r: int = field(default=8, metadata={"help": "Scaling denominator (the official code's lora_r; no shape)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter input."})
    init: Literal["official", "zero", "lora", "orthonormal"] = field(default="official", metadata={"help": "Initialization scheme."})
    init_std: float = field(default=0.02, metadata={"help": "Std of the normal init of A, B, C."})
    orth_reg: Literal["official", "paper"] = field(default="official", metadata={"help": "Regularizer form."})
    orth_reg_weight: float = field(default=0.1, metadata={"help": "Coefficient of the orthogonal regularizer."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names (suffix match) or a regex of modules to adapt."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules to skip."})
    bias: str = field(default="none", metadata={"help": "Bias type: 'none', 'all' or 'dcft_only'."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules (e.g. the classifier) trained and saved in full."}
    )
    layers_to_transform: list[int] | int | None = field(default=None)
    layers_pattern: list[str] | str | None = field(default=None)

    def __post_init__(self):
        super().__post_init__()
        finish_config(self, DCFT_PEFT_TYPE)
        _check_positive_int("kernel_size", self.kernel_size)
        _check_positive_int("rank", self.rank)
        _check_positive_int("r", self.r)
        if self.stride is not None:
            _check_positive_int("stride", self.stride)
            if self.stride > self.kernel_size:
                raise ValueError(
                    f"DCFT stride={self.stride} is larger than kernel_size={self.kernel_size}: the transposed "
                    "convolution would leave gaps; expected 1 <= stride <= kernel_size"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DCFT dropout={self.dropout!r} is invalid; expected a probability in [0, 1)")
        if self.init not in DCFT_INITS:
            raise ValueError(f"DCFT init={self.init!r} is unknown; expected one of {DCFT_INITS}")
        if self.orth_reg not in DCFT_ORTH_REGS:
            raise ValueError(f"DCFT orth_reg={self.orth_reg!r} is unknown; expected one of {DCFT_ORTH_REGS}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"DCFT orth_reg_weight={self.orth_reg_weight!r} is negative; expected >= 0")

    @property
    def effective_stride(self) -> int:
        return effective_stride(self.kernel_size, self.stride)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"DCFT {name}={value!r} is invalid; expected an integer >= 1")
