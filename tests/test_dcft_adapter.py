"""DCFT layer and kernels vs an independent conv_transpose2d reference; save/load; merge/unmerge; errors."""

import copy
import random

import peft
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from dcft_lab.adapters import DCFTConfig, DCFTLinear, orthogonal_penalty
from dcft_lab.adapters.dcft import kernels
from dcft_lab.adapters.dcft.layer import subspace_side
from helpers import TwoLinear, reference_update


def _random_case(rng):
    d = rng.randint(1, 12)
    # D % s == 0 needs d % s == 0 (D = (m - 1) * s + d), so strides < d are divisors of d
    s = d if rng.random() < 0.5 else rng.choice([t for t in range(1, d + 1) if d % t == 0])
    k = rng.randint(1, 4)
    m_in, m_out = rng.randint(1, 6), rng.randint(1, 6)
    return d, s, k, (m_in - 1) * s + d, (m_out - 1) * s + d


@pytest.mark.parametrize("seed", range(30))
def test_forward_and_gradients_match_conv_transpose_reference(seed):
    rng = random.Random(seed)
    d, s, k, d_in, d_out = _random_case(rng)
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out).double()
    cfg = DCFTConfig(kernel_size=d, stride=s, rank=k, alpha=24.0, r=8, target_modules=["proj"])
    layer = DCFTLinear(copy.deepcopy(base), "default", cfg, module_name="proj").double()
    # random non-trivial factors (the init is tiny)
    with torch.no_grad():
        for p in (layer.dcft_A["default"], layer.dcft_B["default"], layer.dcft_C["default"]):
            p.normal_()
    x = torch.randn(3, 5, d_in, dtype=torch.float64, requires_grad=True)
    y = layer(x)

    A = layer.dcft_A["default"].detach().clone().requires_grad_()
    B = layer.dcft_B["default"].detach().clone().requires_grad_()
    C = layer.dcft_C["default"].detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    delta = reference_update(B, A, C, s) * (24.0 / 8)
    assert delta.shape == (d_in, d_out)
    y_ref = base(x_ref) + x_ref @ delta
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)

    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.dcft_A["default"].grad, A.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.dcft_B["default"].grad, B.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.dcft_C["default"].grad, C.grad, rtol=1e-10, atol=1e-10)
    # the merge path uses the same update, transposed into nn.Linear's (out, in) layout
    torch.testing.assert_close(layer.get_delta_weight("default"), delta.detach().t())


def test_kronecker_case_is_kron_product():
    B, A, C = torch.randn(4, 2, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    torch.testing.assert_close(reference_update(B, A, C, 5), torch.kron(B @ A, C))


# ---- kernels.dcft_delta: every path (and every branch inside the fused node) against the materialized ΔW ---------

KERNEL_PATHS = [
    "fused_linear", "fused_linear_no_bias", "fused_conv1d", "base_layer_with_dropout", "add_to", "add_to_float32",
    "update_alone",
]
# s == d: the Kronecker paths; d covers rank-1 writes with d < 8 and d >= 8, gradient sums with d <= 4 and d > 4.
# s < d: the materialized path (stride ablation).
KERNEL_SHAPES = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (8, 8), (12, 12), (2, 1), (4, 2), (4, 1), (6, 3), (8, 4)]


def _graph_ops(y):
    """Type names of every autograd node behind y: which path actually ran."""
    names, seen, stack = set(), set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(f for f, _ in node.next_functions)
    return names


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("d, s", KERNEL_SHAPES)
@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_kernel_paths_match_conv_transpose_reference(path, d, s, k):
    torch.manual_seed(100 * d + 10 * s + k)
    m_in, m_out, scaling = 3, 4, 1.5
    d_in, d_out = (m_in - 1) * s + d, (m_out - 1) * s + d
    B, A, C = (torch.randn(*shape, dtype=torch.float64).requires_grad_() for shape in ((m_in, k), (k, m_out), (d, d)))
    x = torch.randn(2, 5, d_in, dtype=torch.float64, requires_grad=True)
    if path == "fused_conv1d":
        base = Conv1D(d_out, d_in).double()
        with torch.no_grad():
            base.bias.normal_()
    else:
        base = nn.Linear(d_in, d_out, bias=path != "fused_linear_no_bias").double()
    base.requires_grad_(True)
    dropout = nn.Dropout(0.3) if path == "base_layer_with_dropout" else nn.Identity()
    add_to = None
    if path in ("add_to", "add_to_float32"):
        add_to = torch.randn(2, 5, d_out, dtype=torch.float64 if path == "add_to" else torch.float32)
        add_to.requires_grad_()
    uses_base = path.startswith("fused") or path == "base_layer_with_dropout"

    torch.manual_seed(7)  # the same dropout mask in both computations
    y = kernels.dcft_delta(x, B, A, C, stride=s, scaling=scaling, dropout=dropout, add_to=add_to,
                           base_layer=base if uses_base else None)

    refs = [t.detach().clone().requires_grad_() for t in (x, B, A, C)]
    ref_base = copy.deepcopy(base)
    ref_add_to = None if add_to is None else add_to.detach().clone().requires_grad_()
    x_r, B_r, A_r, C_r = refs
    torch.manual_seed(7)
    h = dropout(x_r)
    y_ref = (h @ reference_update(B_r, A_r, C_r, s)) * scaling
    if uses_base:
        y_ref = ref_base(x_r) + y_ref
    elif ref_add_to is not None:
        y_ref = ref_add_to + y_ref.to(ref_add_to.dtype)

    ops = _graph_ops(y)
    if s < d:
        assert "ConvolutionBackward0" in ops and "_KronLinearFunctionBackward" not in ops
    elif path.startswith("fused"):
        assert "_KronLinearFunctionBackward" in ops
    elif path in ("add_to", "base_layer_with_dropout"):  # the add fused into the last batched product
        assert "BaddbmmBackward0" in ops and "_KronLinearFunctionBackward" not in ops
    else:
        assert "BmmBackward0" in ops and not ops & {"BaddbmmBackward0", "_KronLinearFunctionBackward"}

    tol = {} if y.dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    torch.testing.assert_close(y, y_ref, **tol)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    pairs = list(zip((x, B, A, C), refs))
    if uses_base:
        pairs += list(zip(base.parameters(), ref_base.parameters()))
    if add_to is not None:
        pairs.append((add_to, ref_add_to))
    for got, want in pairs:
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-10)


def test_kernel_leaves_add_to_unchanged():
    B, A, C = torch.randn(3, 2), torch.randn(2, 4), torch.randn(4, 4)
    x, add_to = torch.randn(5, 12), torch.randn(5, 16)
    before = add_to.clone()
    out = kernels.dcft_delta(x, B, A, C, stride=4, scaling=2.0, add_to=add_to)
    assert torch.equal(add_to, before)
    torch.testing.assert_close(out, before + 2.0 * x @ reference_update(B, A, C, 4))


def test_subspace_side():
    assert subspace_side(768, 8, 8) == 96
    assert subspace_side(768, 8, 1) == 761
    assert subspace_side(768, 8, 2) == 381
    assert subspace_side(768, 6, 4) is None  # (768 - 6) / 4 is not an integer
    assert subspace_side(14, 5, 3) is None  # (14 - 5) / 3 + 1 = 4, but 14 is not divisible by 3
    assert subspace_side(4, 8, 8) is None  # smaller than the kernel


def _model(seed=0):
    torch.manual_seed(seed)
    return TwoLinear(16, 24, 8)


def test_zero_init_starts_from_identity_function():
    model = _model()
    x = torch.randn(4, 16)
    expected = model(x)
    pm = peft.get_peft_model(copy.deepcopy(model), DCFTConfig(kernel_size=4, init="zero", target_modules=["proj", "out"]))
    torch.testing.assert_close(pm(x), expected)
    # official init: tiny but non-zero update, all three factors ~ N(0, 0.02)
    pm2 = peft.get_peft_model(copy.deepcopy(model), DCFTConfig(kernel_size=4, target_modules=["proj", "out"]))
    assert not torch.equal(pm2(x), expected)
    stds = [p.std().item() for n, p in pm2.named_parameters() if "dcft_" in n and p.numel() > 4]
    assert all(0.005 < s < 0.06 for s in stds), stds


def test_trainable_names_have_prefix_and_base_is_frozen():
    pm = peft.get_peft_model(_model(), DCFTConfig(kernel_size=4, target_modules=["proj", "out"]))
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all(".dcft_" in n for n in trainable)
    assert {n.split(".")[-2] for n in trainable} == {"dcft_A", "dcft_B", "dcft_C"}


def _trained(model, cfg):
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "dcft_" in n:
                p.normal_()
    return pm


def test_save_load_round_trip(tmp_path):
    x = torch.randn(4, 16)
    pm = _trained(_model(), DCFTConfig(kernel_size=4, stride=2, rank=2, target_modules=["proj", "out"]))
    pm.eval()
    expected = pm(x)
    pm.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "adapter_model.safetensors").exists()
    loaded = peft.PeftModel.from_pretrained(_model(), tmp_path)
    assert isinstance(loaded.peft_config["default"], DCFTConfig)
    assert loaded.peft_config["default"].stride == 2 and loaded.peft_config["default"].rank == 2
    torch.testing.assert_close(loaded(x), expected)


def test_merge_unmerge_and_merge_and_unload():
    x = torch.randn(4, 16)
    model = _model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    pm = _trained(model, DCFTConfig(kernel_size=8, target_modules=["proj", "out"]))
    expected = pm(x)
    pm.merge_adapter()
    torch.testing.assert_close(pm(x), expected, rtol=1e-5, atol=1e-5)
    pm.unmerge_adapter()
    base_weights = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                    for k, v in pm.state_dict().items() if "dcft_" not in k}
    for k, v in original.items():
        torch.testing.assert_close(base_weights[k], v, rtol=0, atol=1e-6)
    merged = pm.merge_and_unload()
    assert type(merged) is TwoLinear and not any("dcft_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


def test_disable_adapter_gives_base_output():
    x = torch.randn(4, 16)
    model = _model()
    expected = model(x)
    pm = _trained(copy.deepcopy(model), DCFTConfig(kernel_size=4, target_modules=["proj"]))
    assert (pm(x) - expected).abs().max() > 1e-3  # the adapter changes the output, so disabling it has work to do
    with pm.disable_adapter():
        torch.testing.assert_close(pm(x), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_size=0), "kernel_size=0"),
        (dict(rank=0), "rank=0"),
        (dict(kernel_size=4, stride=5), "stride=5"),
        (dict(dropout=1.5), "dropout=1.5"),
        (dict(init="xavier"), "init='xavier'"),
        (dict(orth_reg="l1"), "orth_reg='l1'"),
        (dict(orth_reg_weight=-1.0), "orth_reg_weight=-1.0"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DCFTConfig(target_modules=["proj"], **kwargs)


@pytest.mark.parametrize("kernel, stride", [(5, None), (6, 4), (8, 3)])
def test_shape_mismatch_names_module_shape_kernel_stride(kernel, stride):
    # proj is 16 -> 24: 16 % 5 != 0; (16 - 6) % 4 != 0; 16 % 3 != 0
    with pytest.raises(ValueError) as err:
        peft.get_peft_model(_model(), DCFTConfig(kernel_size=kernel, stride=stride, target_modules=["proj"]))
    msg = str(err.value)
    assert "'proj'" in msg and "d_in=16" in msg and "d_out=24" in msg
    assert f"kernel_size={kernel}" in msg and f"stride={stride or kernel}" in msg


def test_orthogonal_penalty_hand_computed():
    b = torch.tensor([[3.0], [4.0]])  # ||b||^2 = 25 -> |25 - 1| = 24
    a_t = torch.tensor([[1.0], [0.0], [0.0]])  # ||a||^2 = 1 -> 0
    assert orthogonal_penalty([b, a_t], "official").item() == pytest.approx(12.0)  # mean(24, 0)
    assert orthogonal_penalty([b, a_t], "paper").item() == pytest.approx(576.0)  # 24^2 + 0^2
    G = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # G^T G = [[1,1],[1,2]]; minus I -> [[0,1],[1,1]] -> fro sqrt(3)
    assert orthogonal_penalty([G], "official").item() == pytest.approx(3 ** 0.5)
    assert orthogonal_penalty([G], "paper").item() == pytest.approx(3.0)


def test_model_regularizer_is_weighted_and_differentiable():
    pm = peft.get_peft_model(_model(), DCFTConfig(kernel_size=4, orth_reg_weight=0.3, target_modules=["proj", "out"]))
    layers = [m for m in pm.modules() if isinstance(m, DCFTLinear)]
    factors = [f for m in layers for f in (m.dcft_B["default"], m.dcft_A["default"].t())]
    reg = pm.base_model.orthogonal_regularizer()
    torch.testing.assert_close(reg, 0.3 * orthogonal_penalty(factors, "official"))
    reg.backward()
    assert layers[0].dcft_B["default"].grad is not None and layers[0].dcft_C["default"].grad is None


@pytest.mark.parametrize("kernel, stride, fused", [(4, None, True), (2, None, True), (4, 2, False)])
def test_conv1d_target_matches_linear_with_the_same_weight(kernel, stride, fused, monkeypatch):
    """GPT-2's Conv1D stores W (d_in, d_out), nn.Linear its transpose: same outputs, gradients and merge."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 24).double()
    conv = Conv1D(24, 16).double()
    with torch.no_grad():
        conv.weight.copy_(linear.weight.t())
        conv.bias.copy_(linear.bias)
    cfg = DCFTConfig(kernel_size=kernel, stride=stride, rank=2, target_modules=["x"])
    layers = [DCFTLinear(base, "default", cfg, module_name="x").double() for base in (linear, conv)]
    with torch.no_grad():
        for name in ("dcft_A", "dcft_B", "dcft_C"):
            getattr(layers[0], name)["default"].normal_()
            getattr(layers[1], name)["default"].copy_(getattr(layers[0], name)["default"])
    assert not layers[0].fan_in_fan_out and layers[1].fan_in_fan_out
    assert (layers[1].in_features, layers[1].out_features) == (16, 24)

    fused_calls = []
    apply = kernels._KronLinearFunction.apply
    monkeypatch.setattr(kernels._KronLinearFunction, "apply", lambda *a: fused_calls.append(1) or apply(*a))
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    grad = torch.randn(3, 5, 24, dtype=torch.float64)
    outs, grads = [], []
    for layer in layers:
        layer.get_base_layer().weight.requires_grad_(True)
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(grad)
        outs.append(y)
        grads.append([xi.grad, layer.get_base_layer().bias.grad] + [
            getattr(layer, name)["default"].grad for name in ("dcft_A", "dcft_B", "dcft_C")
        ])
    assert len(fused_calls) == (2 if fused else 0)  # Conv1D takes the fused Kronecker path like nn.Linear
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    for g_conv, g_linear in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_conv, g_linear, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.weight.grad, linear.weight.grad.t(), rtol=1e-12, atol=1e-12)

    torch.testing.assert_close(layers[1].get_delta_weight("default"), layers[0].get_delta_weight("default").t())
    for layer in layers:
        layer.merge()
    torch.testing.assert_close(conv.weight, linear.weight.t())
    with torch.no_grad():
        torch.testing.assert_close(layers[1](x), outs[0].detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [None, 2])
def test_mixed_batch_rows_at_the_layer(stride):
    """adapter_names at the layer: row n == that adapter alone; "__base__" and adapters the layer lacks add nothing."""
    torch.manual_seed(0)
    cfg = DCFTConfig(kernel_size=4, stride=stride, rank=2, target_modules=["x"])
    layer = DCFTLinear(nn.Linear(16, 24), "a", cfg, module_name="x")
    layer.update_layer("b", cfg, "x")
    with torch.no_grad():
        for n, p in layer.named_parameters():
            if "dcft_" in n:
                p.normal_()
    x = torch.randn(4, 3, 16)
    names = ["b", "__base__", "a", "elsewhere"]
    with torch.no_grad():
        mixed = layer(x, adapter_names=names)
        alone = {}
        for name in ("a", "b"):
            layer.set_adapter(name)
            alone[name] = layer(x)
        alone["__base__"] = alone["elsewhere"] = layer.get_base_layer()(x)
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], alone[name][row], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="Length of `adapter_names` should be the same as the number of inputs"):
        layer(x, adapter_names=names[:3])
    layer.merge()
    with pytest.raises(ValueError, match="Cannot pass `adapter_names` when there are merged adapters"):
        layer(x, adapter_names=names)
