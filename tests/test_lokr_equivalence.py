"""LoKr with ``decompose_factor=8`` and a rank-k W2 is DCFT with kernel 8, stride 8 and rank k, up to a fixed
permutation of rows and columns (issue 30, item 5).

PEFT's LoKr (``peft/tuners/lokr/layer.py``) on an ``nn.Linear`` with d_out = 8 * m_out and d_in = 8 * m_in builds,
in the weight's (d_out, d_in) layout,

    ΔW_LoKr = (alpha / r) * kron(W1, W2a @ W2b)      W1: 8 x 8 (full), W2a: m_out x r, W2b: r x m_in

(``factorization(d, 8) = (8, d / 8)``, so W1 is the 8 x 8 outer factor; W2 is low-rank because
r < max(m_in, m_out) / 2). DCFT with d = s = 8 builds ΔW_DCFT = (alpha / r) * kron(F, C), F = B @ A (m_in x m_out),
in the paper's (d_in, d_out) layout, i.e. kron(Fᵀ, Cᵀ) in the weight's layout. With the matched factors
W1 = Cᵀ, W2a = Aᵀ, W2b = Bᵀ (a bijection; both have 64 + k (m_in + m_out) parameters):

    kron(W1, W2a @ W2b) = P · kron(F, C)ᵀ · Qᵀ

with P (d_out x d_out) and Q (d_in x d_in) the perfect shuffles P[a * m_out + b, b * 8 + a] = 1 and
Q[c * m_in + e, e * 8 + c] = 1 (the commutation matrices of kron: kron(X, Y) = P kron(Y, X) Qᵀ).

What this means for a comparison of the two rows of a study: they search the same Kronecker family (the same
parameter count, the same rank structure), written in relabelled coordinates. So the Kronecker / deconvolution
structure does not explain a difference between them. What differs is the initialization (PEFT LoKr: W1 = 0 and W2a, W2b Kaiming-uniform; DCFT official: A, B, C ~ N(0, 0.02)),
the learning rate of each factor (under Adam the scale alpha / r acts like one), the scaling, and DCFT's
orthogonality regularizer. One caveat is not removed by the permutation: P and Q relabel the coordinates of the
pretrained weight, and a pretrained network does not treat its coordinates as interchangeable. DCFT's kernel mixes
8 adjacent coordinates (for the query / key / value outputs of MiniLM, inside one 32-wide attention head). LoKr's W1
mixes 8 coordinates that are d / 8 apart (there, 48 apart: across heads). So the two sets of updates of the same W
are images of each other under a fixed shuffle, not one set. A gap between the rows can come from this grouping of
coordinates as well as from the four differences above. No gap comes from the Kronecker form itself.
"""

import copy

import peft
import pytest
import torch
from torch import nn

from dcft_lab.adapters import DCFTConfig, DCFTLinear
from dcft_lab.adapters.dcft import conv_transpose_update
from helpers import reference_update

D = 8  # LoKr's decompose_factor == DCFT's kernel size == stride


class OneLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.lin(x)


def perfect_shuffle(outer: int, inner: int) -> torch.Tensor:
    """The (outer * inner)-square permutation matrix S with S[a * inner + b, b * outer + a] = 1 (a < outer,
    b < inner): row i of S @ X is row (i % inner) * outer + i // inner of X. Built from the index arithmetic alone."""
    n = outer * inner
    rows = torch.arange(n)
    shuffle = torch.zeros(n, n, dtype=torch.float64)
    shuffle[rows, (rows % inner) * outer + rows // inner] = 1.0
    return shuffle


def _layers(d_in: int, d_out: int, rank: int, lokr_alpha: float, dcft_alpha: float):
    """(LoKr layer, DCFT layer, base nn.Linear): the real PEFT layers on copies of one random nn.Linear (float64)."""
    torch.manual_seed(0)
    base = OneLinear(d_in, d_out).double()
    lokr = peft.get_peft_model(copy.deepcopy(base), peft.LoKrConfig(
        r=rank, alpha=lokr_alpha, decompose_factor=D, target_modules=["lin"]))
    dcft = peft.get_peft_model(copy.deepcopy(base), DCFTConfig(
        kernel_size=D, stride=D, rank=rank, alpha=dcft_alpha, r=8, target_modules=["lin"]))
    return lokr.base_model.model.lin, dcft.base_model.model.lin, base.lin


# (d_in, d_out, rank): small shapes both ways, and MiniLM's intermediate.dense (the study's case) at rank 1
CASES = [(40, 24, 1), (24, 40, 1), (64, 64, 1), (40, 24, 2), (24, 40, 2), (64, 64, 2), (384, 1536, 1)]


@pytest.mark.parametrize("d_in, d_out, rank", CASES)
def test_lokr_f8_rank_k_is_dcft_d8_rank_k_up_to_perfect_shuffles(d_in, d_out, rank):
    m_in, m_out = d_in // D, d_out // D
    lokr, dcft, _ = _layers(d_in, d_out, rank, lokr_alpha=3.0, dcft_alpha=16.0)
    assert isinstance(dcft, DCFTLinear)
    # PEFT LoKr made the structure the equivalence needs: W1 full 8 x 8 (outer), W2 = W2a @ W2b of rank r (inner)
    assert set(lokr.lokr_w1) == {"default"} and not lokr.lokr_w2 and not lokr.lokr_w1_a and not lokr.lokr_t2
    assert lokr.lokr_w1["default"].shape == (D, D)
    assert lokr.lokr_w2_a["default"].shape == (m_out, rank) and lokr.lokr_w2_b["default"].shape == (rank, m_in)
    assert dcft.dcft_B["default"].shape == (m_in, rank) and dcft.dcft_A["default"].shape == (rank, m_out)

    # random DCFT factors, and the matched LoKr factors: W1 = Cᵀ, W2a = Aᵀ, W2b = Bᵀ
    g = torch.Generator().manual_seed(d_in * 7 + d_out + rank)
    B, A, C = (torch.randn(*shape, generator=g, dtype=torch.float64)
               for shape in ((m_in, rank), (rank, m_out), (D, D)))
    with torch.no_grad():
        dcft.dcft_B["default"].copy_(B)
        dcft.dcft_A["default"].copy_(A)
        dcft.dcft_C["default"].copy_(C)
        lokr.lokr_w1["default"].copy_(C.t())
        lokr.lokr_w2_a["default"].copy_(A.t())
        lokr.lokr_w2_b["default"].copy_(B.t())

    P, Q = perfect_shuffle(D, m_out), perfect_shuffle(D, m_in)
    for S in (P, Q):  # permutation matrices, and not the identity
        assert torch.equal(S.sum(0), torch.ones(len(S), dtype=S.dtype)) and torch.equal(S.sum(1), S.sum(0))
        assert not torch.equal(S, torch.eye(len(S), dtype=S.dtype))

    # the scalings, taken from the layers: LoKr alpha / r, DCFT alpha / r (r = 8, no shape)
    lokr_scale, dcft_scale = lokr.scaling["default"], dcft.dcft_scaling["default"]
    assert lokr_scale == pytest.approx(3.0 / rank) and dcft_scale == pytest.approx(2.0)

    # DCFT's update is the transposed convolution with stride 8 == kron(F, C), (d_in, d_out)
    kron_fc = conv_transpose_update(B, A, C, D)
    torch.testing.assert_close(kron_fc, torch.kron(B @ A, C), rtol=0, atol=0)
    torch.testing.assert_close(kron_fc, reference_update(B, A, C, D), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dcft.delta_weight_in_out("default"), dcft_scale * kron_fc, rtol=0, atol=0)

    # the equivalence, with the real layers' get_delta_weight (both in nn.Linear's (d_out, d_in) layout)
    lokr_delta = lokr.get_delta_weight("default") / lokr_scale
    dcft_delta = dcft.get_delta_weight("default") / dcft_scale
    torch.testing.assert_close(lokr_delta, torch.kron(C.t().contiguous(), A.t() @ B.t()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lokr_delta, P @ kron_fc.t() @ Q.t(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lokr_delta, P @ dcft_delta @ Q.t(), rtol=1e-12, atol=1e-12)
    # the same statement in the paper's (d_in, d_out) layout
    torch.testing.assert_close(lokr_delta.t(), Q @ kron_fc @ P.t(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d_in, d_out", [(40, 24), (384, 1536)])
def test_lokr_layer_output_is_dcft_layer_output_on_shuffled_coordinates(d_in, d_out):
    """As functions: LoKr's update of x equals DCFT's update of the shuffled input x Q, shuffled back by Pᵀ, when
    both scalings are equal (LoKr alpha / r = 2 = DCFT 16 / 8)."""
    m_in, m_out = d_in // D, d_out // D
    lokr, dcft, base = _layers(d_in, d_out, 1, lokr_alpha=2.0, dcft_alpha=16.0)
    assert lokr.scaling["default"] == dcft.dcft_scaling["default"] == 2.0
    g = torch.Generator().manual_seed(1)
    B, A, C = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((m_in, 1), (1, m_out), (D, D)))
    with torch.no_grad():
        for name, value in (("dcft_B", B), ("dcft_A", A), ("dcft_C", C)):
            getattr(dcft, name)["default"].copy_(value)
        lokr.lokr_w1["default"].copy_(C.t())
        lokr.lokr_w2_a["default"].copy_(A.t())
        lokr.lokr_w2_b["default"].copy_(B.t())
    lokr.eval()
    dcft.eval()
    P, Q = perfect_shuffle(D, m_out), perfect_shuffle(D, m_in)
    x = torch.randn(5, d_in, generator=g, dtype=torch.float64)
    with torch.no_grad():
        lokr_update = lokr(x) - base(x)
        dcft_update = dcft(x @ Q) - base(x @ Q)
    torch.testing.assert_close(lokr_update, dcft_update @ P.t(), rtol=1e-10, atol=1e-10)
    assert lokr_update.abs().max() > 1e-3  # a real update, not two zeros
