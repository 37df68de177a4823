"""Exact adapter / head / trainable counts on full-size architectures (built on the meta device: no memory, fast).

Expected numbers are hand-computed from the paper's formula, per adapted matrix W (d_in x d_out):
    DCFT, stride s = d:  k * (d_in / d + d_out / d) + d^2
    DCFT, stride s < d:  k * (m_in + m_out) + d^2   with m = (D - d) / s + 1
    LoRA rank r:         r * (d_in + d_out)
DeBERTaV3-base per layer: 4 matrices 768 x 768 (Q, K, V, O) and 2 of 768 x 3072 (FFN in, FFN out), 12 layers.
"""

import random

import pytest
import torch
from torch import nn

from dcft_lab.adapters import build_method, count_parameters
from dcft_lab.backbones import get_backbone, load_model

torch.set_num_threads(1)

# (hidden, ffn, layers) of the architectures in dcft_lab.backbones
SHAPES = {"deberta-v3-base": (768, 3072, 12), "roberta-large": (1024, 4096, 24), "deberta-v2-xxlarge": (1536, 6144, 48)}


def _adapted_meta(backbone: str, method_cfg: dict, target_set: str = "all"):
    spec = get_backbone(backbone)
    with torch.device("meta"):
        model = load_model(spec, "classification", weights="random")
        return build_method(method_cfg).build(
            model, target_modules=spec.target_modules(target_set), modules_to_save=spec.head_modules("classification"),
            task_type="SEQ_CLS",
        )


def _dcft_formula(hidden, ffn, layers, d, s=None, k=1):
    s = d if s is None else s
    side = lambda dim: (dim - d) // s + 1  # noqa: E731
    square = k * (2 * side(hidden)) + d * d
    ffn_matrix = k * (side(hidden) + side(ffn)) + d * d
    return layers * (4 * square + 2 * ffn_matrix)


@pytest.mark.parametrize(
    "backbone, method_cfg, expected",
    [
        ("deberta-v3-base", {"name": "dcft", "kernel_size": 2}, 83_232),
        ("deberta-v3-base", {"name": "dcft", "kernel_size": 4}, 42_624),
        ("deberta-v3-base", {"name": "dcft", "kernel_size": 6}, 30_240),
        ("deberta-v3-base", {"name": "dcft", "kernel_size": 8}, 25_344),
        ("deberta-v3-base", {"name": "dcft", "kernel_size": 12}, 24_192),
        ("deberta-v3-base", {"name": "dcft", "kernel_size": 8, "stride": 1}, 169_488),
        ("deberta-v3-base", {"name": "dcft", "kernel_size": 8, "stride": 2}, 87_120),
        ("deberta-v3-base", {"name": "dcft", "kernel_size": 8, "stride": 4}, 45_936),
        ("roberta-large", {"name": "dcft", "kernel_size": 8}, 64_512),
        ("roberta-large", {"name": "dcft", "kernel_size": 2}, 221_760),
        ("deberta-v2-xxlarge", {"name": "dcft", "kernel_size": 8}, 184_320),
        ("deberta-v3-base", {"name": "lora", "r": 1}, 165_888),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_paper_adapter_counts(backbone, method_cfg, expected):
    counts = count_parameters(_adapted_meta(backbone, method_cfg))
    assert counts.adapter == expected, f"{backbone} {method_cfg}: {counts.adapter} != {expected}"
    # the table value agrees with the closed-form formula (guards the expected numbers themselves)
    if method_cfg["name"] == "dcft":
        assert expected == _dcft_formula(*SHAPES[backbone], method_cfg["kernel_size"], method_cfg.get("stride"))
    else:
        hidden, ffn, layers = SHAPES[backbone]
        assert expected == layers * method_cfg["r"] * (4 * 2 * hidden + 2 * (hidden + ffn))


def test_target_subset_counts_only_those_matrices():
    # Q and V only: 2 square matrices per layer, 96 + 96 + 64 each
    counts = count_parameters(_adapted_meta("deberta-v3-base", {"name": "dcft", "kernel_size": 8}, "qv"))
    assert counts.adapter == 12 * 2 * (96 + 96 + 64)


DEBERTA_BASE_HEAD = (768 * 768 + 768) + (768 * 2 + 2)  # pooler.dense + classifier (2 labels)


@pytest.mark.parametrize("method_cfg", [{"name": "dcft", "kernel_size": 8}, {"name": "lora", "r": 1}, {"name": "none"}])
def test_head_is_reported_separately(method_cfg):
    counts = count_parameters(_adapted_meta("deberta-v3-base", method_cfg))
    assert counts.head == DEBERTA_BASE_HEAD
    assert counts.trainable == counts.adapter + counts.head
    if method_cfg["name"] == "none":
        assert counts.adapter == 0
    # total = frozen base + adapter + one copy of the head (the frozen original head is not counted twice)
    with torch.device("meta"):
        base_total = sum(p.numel() for p in load_model(get_backbone("deberta-v3-base"), "classification",
                                                       weights="random").parameters())
    assert counts.total == base_total + counts.adapter


class _OneLinear(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.proj(x)


def _single_linear_cases(seed=0, n=8):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        d = rng.choice([1, 2, 3, 4, 6, 8, 12])
        s = rng.choice([t for t in range(1, d + 1) if d % t == 0])  # D % s == 0 needs s | d
        m_in, m_out, k = rng.randint(1, 40), rng.randint(1, 40), rng.randint(1, 4)
        cases.append((d, s, k, (m_in - 1) * s + d, (m_out - 1) * s + d))
    return cases


@pytest.mark.parametrize("d, s, k, d_in, d_out", _single_linear_cases())
def test_per_matrix_formula_on_single_linear(d, s, k, d_in, d_out):
    model = build_method({"name": "dcft", "kernel_size": d, "stride": s, "rank": k}).build(
        _OneLinear(d_in, d_out), target_modules=["proj"])
    counts = count_parameters(model)
    if s == d:
        expected = k * (d_in // d + d_out // d) + d * d
    else:
        expected = k * ((d_in - d) // s + 1 + (d_out - d) // s + 1) + d * d
    assert counts.adapter == expected
    assert counts.head == 0 and counts.trainable == expected
    assert counts.total == d_in * d_out + d_out + expected


@pytest.mark.parametrize("r, d_in, d_out", [(1, 5, 7), (3, 16, 4), (8, 32, 48)])
def test_lora_per_matrix_formula(r, d_in, d_out):
    counts = count_parameters(build_method({"name": "lora", "r": r}).build(_OneLinear(d_in, d_out), target_modules=["proj"]))
    assert counts.adapter == r * (d_in + d_out)


# ---- the paper's other Table 1 rows (DeBERTaV3-base): L = 12 layers, d = 768, FFN f = 3072 -----------------------------
def _bottleneck(d, b):
    return 2 * d * b + b + d  # down (d x b + b) and up (b x d + d)


@pytest.mark.parametrize("method_cfg, expected, formula", [
    # HAdapter: two adapters a layer; the paper's 0.31M (AdaLoRA's HAdapter 0.31M row) is bottleneck 8
    ({"name": "hadapter", "bottleneck": 8}, 313_536, 12 * 2 * _bottleneck(768, 8)),
    # PAdapter: one adapter a layer; 0.30M is bottleneck 16
    ({"name": "padapter", "bottleneck": 16}, 304_320, 12 * _bottleneck(768, 16)),
    # BitFit: Q, K, V, O, attention LayerNorm, FFN (f + d), output LayerNorm biases per layer, plus the embedding and
    # relative-embedding LayerNorm biases: the paper's 0.1M
    ({"name": "bitfit"}, 102_912, 12 * (7 * 768 + 3072) + 2 * 768),
    # LoRA-FA: B only (r x d_out per matrix); A, as large, is frozen
    ({"name": "lorafa", "r": 1}, 82_944, 12 * (4 * 768 + 3072 + 768)),
    # SoRA at the start: LoRA r = 8 plus an r-vector gate per matrix (72 matrices)
    ({"name": "sora", "r": 8}, 1_327_680, 12 * 8 * (4 * 2 * 768 + 2 * (768 + 3072)) + 72 * 8),
], ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None)
def test_table1_baseline_counts(method_cfg, expected, formula):
    counts = count_parameters(_adapted_meta("deberta-v3-base", method_cfg))
    assert counts.adapter == expected == formula
    assert counts.head == DEBERTA_BASE_HEAD


def test_full_fine_tuning_counts_every_weight():
    counts = count_parameters(_adapted_meta("deberta-v3-base", {"name": "full"}))
    with torch.device("meta"):
        base_total = sum(p.numel() for p in load_model(get_backbone("deberta-v3-base"), "classification",
                                                       weights="random").parameters())
    assert counts.trainable == counts.total == base_total == 184_423_682  # the paper's 184M
    assert counts.head == DEBERTA_BASE_HEAD and counts.adapter == base_total - DEBERTA_BASE_HEAD
