"""A method's update scale (dcft_lab.method_scale, ``Method.update_scale`` / ``Method.alpha_for``).

Reference: the scaling each adapted layer actually multiplies its update by, read off the built model (PEFT's LoRA /
LoKr ``scaling``, AdaLoRA's ``scaling / ranknum``, DCFT's ``dcft_scaling``, SoRA's ``sora_scaling``); a method whose
model has none of these (head-only, full, BitFit, the bottleneck adapters) must have no update scale."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dcft_lab import method_scale, report
from dcft_lab.adapters import METHOD_NAMES, build_method
from dcft_lab.backbones import build_backbone
from dcft_lab.build import adapt_model

torch.set_num_threads(1)

# hyper-parameters whose scale differs from every default (and, for AdaLoRA, from alpha / target_r)
HYPER = {
    "lora": {"r": 2, "alpha": 6.0},
    "lorafa": {"r": 2, "alpha": 5.0},
    "lokr": {"r": 2, "alpha": 7.0},
    "dcft": {"r": 4, "alpha": 10.0},
    "sora": {"r": 4, "alpha": 6.0},
    "adalora": {"init_r": 3, "target_r": 2, "alpha": 12.0},
}


def _layer_scales(model) -> list[float]:
    """The scaling of every adapted layer of ``model``, as its forward pass applies it."""
    scales = []
    for module in model.modules():
        if hasattr(module, "ranknum") and "default" in getattr(module, "ranknum", {}):  # AdaLoRA's SVDLinear
            scales.append(module.scaling["default"] / float(module.ranknum["default"]))
            continue
        for attr in ("dcft_scaling", "sora_scaling", "scaling"):
            value = getattr(module, attr, None)
            if isinstance(value, dict) and "default" in value:
                scales.append(float(value["default"]))
                break
    return scales


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_update_scale_is_what_the_built_layers_scale_by(name):
    method = build_method({"name": name, **HYPER.get(name, {})})
    model, _, spec = build_backbone("tiny-deberta", "classification", 2, seed=0)
    adapted, _, _ = adapt_model(model, method, spec, "classification")
    layers = _layer_scales(adapted)
    if name in HYPER:
        assert method.update_scale is not None and layers
        assert all(scale == pytest.approx(method.update_scale, rel=1e-5) for scale in layers), layers
        assert method.update_scale == report.update_scale(method.to_dict())  # the report's scale column agrees
    else:
        assert not layers and method.update_scale is None and method.alpha_for(8) is None


@pytest.mark.parametrize("name", sorted(HYPER))
def test_alpha_for_gives_the_scale_asked_for(name):
    method = build_method({"name": name, **HYPER[name]})
    for scale in (0.5, 2, 8):
        alpha = method.alpha_for(scale)
        assert build_method({**method.to_dict(), "alpha": alpha}).update_scale == pytest.approx(scale)
    assert method.alpha_for(None) is None
    denominator = HYPER[name]["init_r" if name == "adalora" else "r"]
    assert method.alpha_for(8) == 8.0 * denominator


def test_config_mappings_without_the_numbers():
    assert method_scale.update_scale({"name": "lora", "alpha": "${preset.alpha}", "r": 1}) is None
    assert method_scale.update_scale({"name": "lora", "alpha": 2.0, "r": 0}) is None
    assert method_scale.update_scale({"name": "hadapter", "bottleneck": 8}) is None
    assert method_scale.update_scale(None) is None and method_scale.scale_rank_key([]) is None
    with pytest.raises(ValueError, match=r"^method\.init_r=None: the update scale of adalora is alpha / init_r"):
        method_scale.alpha_for({"name": "adalora", "alpha": 16.0}, 8)


def test_the_rule_is_torch_free():
    """The report reads it and must start fast: importing it loads neither torch nor PEFT."""
    code = ("import sys; import dcft_lab.method_scale, dcft_lab.report; "
            "print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
