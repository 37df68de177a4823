"""DCFT's initialisation variants (method.init): each starts where its docstring says, and trains from there."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch

from dcft_lab.adapters import DCFTConfig, build_method
from dcft_lab.adapters.dcft.layer import DCFTLayer
from helpers import TwoLinear

DIMS = (32, 64, 16)  # d_in, d_hidden, d_out: large enough for kernel 4 with rank 2


def _adapted(init: str, kernel: int = 4, rank: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    base = TwoLinear(*DIMS)
    model = peft.get_peft_model(copy.deepcopy(base), DCFTConfig(kernel_size=kernel, rank=rank, init=init,
                                                                target_modules=["proj", "out"]))
    layers = [m for m in model.modules() if isinstance(m, DCFTLayer)]
    return base, model, layers


@pytest.mark.parametrize("init", ["zero", "lora", "orthonormal"])
def test_variants_that_start_from_the_base_model(init):
    base, model, _ = _adapted(init)
    x = torch.randn(5, 32)
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)


def test_lora_init_is_kaiming_B_zero_A_identity_kernel():
    _, _, layers = _adapted("lora")
    for layer in layers:
        B, A, C = layer.dcft_B["default"], layer.dcft_A["default"], layer.dcft_C["default"]
        m_in = B.shape[0]
        assert torch.count_nonzero(A) == 0
        torch.testing.assert_close(C, torch.eye(C.shape[0]))
        bound = 1 / math.sqrt(m_in)  # PEFT's LoRA rule: kaiming_uniform(a=sqrt(5)) over fan_in
        assert B.abs().max() <= bound and B.abs().max() > 0.5 * bound
        assert B.std() > 0.3 * bound  # uniform on ±bound has std bound/sqrt(3)


def test_orthonormal_init_satisfies_the_regularizer_with_zero_kernel():
    _, model, layers = _adapted("orthonormal")
    for layer in layers:
        B, A, C = layer.dcft_B["default"], layer.dcft_A["default"], layer.dcft_C["default"]
        torch.testing.assert_close(B.T @ B, torch.eye(B.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(A @ A.T, torch.eye(A.shape[0]), atol=1e-5, rtol=0)
        assert torch.count_nonzero(C) == 0
    assert model.base_model.orthogonal_regularizer().item() < 1e-5
    _, official, _ = _adapted("official")
    assert official.base_model.orthogonal_regularizer().item() > 0.05  # the same check fails for the paper's init


def test_first_gradient_reaches_the_zero_factor_at_lora_scale():
    """The point of the variants: the zero factor's first gradient is O(1), not the product of two 0.02-sized
    factors as with the paper's init (compared here with LoRA r=1 at the same scale on the same layer)."""
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    grads = {}
    for init in ("official", "lora", "orthonormal"):
        _, model, layers = _adapted(init, rank=1)
        model(x).pow(2).sum().backward()
        layer = layers[0]
        grads[init] = max(p.grad.norm().item() for p in (layer.dcft_A["default"], layer.dcft_C["default"]))
    torch.manual_seed(0)
    lora = peft.get_peft_model(TwoLinear(*DIMS), peft.LoraConfig(r=1, lora_alpha=2, target_modules=["proj", "out"]))
    lora(x).pow(2).sum().backward()
    lora_grad = lora.base_model.model.proj.lora_B["default"].weight.grad.norm().item()
    assert grads["lora"] > 0.1 * lora_grad and grads["orthonormal"] > 0.1 * lora_grad
    assert grads["official"] < 0.1 * min(grads["lora"], grads["orthonormal"])


@pytest.mark.parametrize("init", ["lora", "orthonormal"])
def test_variant_trains_away_from_the_base(init):
    base, model, _ = _adapted(init)
    x, y = torch.randn(16, 32), torch.randn(16, 16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert (model(x) - base(x)).abs().max() > 1e-3


def test_same_seed_same_init_and_stride_below_kernel():
    a = _adapted("orthonormal", seed=3)[2][0].dcft_B["default"]
    b = _adapted("orthonormal", seed=3)[2][0].dcft_B["default"]
    assert torch.equal(a, b)
    torch.manual_seed(0)
    cfg = DCFTConfig(kernel_size=4, stride=2, init="lora", target_modules=["proj"])
    model = peft.get_peft_model(TwoLinear(*DIMS), cfg)
    layer = model.base_model.model.proj
    assert layer.dcft_B["default"].shape == (15, 1) and torch.equal(layer.dcft_C["default"], torch.eye(4))


def test_unknown_init_is_a_one_line_error_and_label_names_the_init():
    with pytest.raises(ValueError, match=r"init='kaiming' is unknown; expected one of \('official', 'zero', 'lora', 'orthonormal'\)"):
        DCFTConfig(init="kaiming")
    assert build_method({"name": "dcft", "init": "lora"}).label == "DCFT d=8 s=8 k=1 init=lora"
    assert build_method({"name": "dcft"}).label == "DCFT d=8 s=8 k=1"  # the paper's init keeps the paper's label
