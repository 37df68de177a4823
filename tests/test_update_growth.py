"""scripts/update_growth.py: the relative update and factor gradient norms against hand computation on tiny models."""

import copy
import importlib.util
from pathlib import Path

import peft
import pytest
import torch

from dcft_lab.adapters import DCFTConfig
from helpers import TwoLinear, reference_update

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "update_growth.py"
spec = importlib.util.spec_from_file_location("update_growth", SCRIPT)
update_growth = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_growth)


@torch.no_grad()
def test_relative_update_of_dcft_and_lora_against_hand_values():
    torch.manual_seed(0)
    base = TwoLinear()
    dcft = peft.get_peft_model(copy.deepcopy(base), DCFTConfig(kernel_size=4, alpha=24.0, r=8,
                                                               target_modules=["proj", "out"]))
    expected = []
    for name in ("proj", "out"):
        layer = dcft.get_submodule(f"base_model.model.{name}")
        delta = reference_update(layer.dcft_B["default"], layer.dcft_A["default"], layer.dcft_C["default"], 4) * 3.0
        expected.append(float(delta.norm() / getattr(base, name).weight.norm()))
    assert update_growth.relative_update(dcft) == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert expected[0] > 0

    lora = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=6, target_modules=["proj"],
                                                                    init_lora_weights=False))
    layer = lora.get_submodule("base_model.model.proj")
    delta = 3.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert update_growth.relative_update(lora) == pytest.approx(float(delta.norm() / base.proj.weight.norm()),
                                                                rel=1e-5)
    with pytest.raises(ValueError, match="no adapted layers"):
        update_growth.relative_update(base)


def test_factor_gradient_norms_sum_over_layers_per_factor():
    torch.manual_seed(0)
    model = peft.get_peft_model(TwoLinear(), DCFTConfig(kernel_size=4, target_modules=["proj", "out"]))
    model(torch.randn(5, 16)).pow(2).sum().backward()
    norms = update_growth.factor_grad_norms(model)
    assert set(norms) == {"DCFT A", "DCFT B", "DCFT C"}
    for kind in ("A", "B", "C"):
        by_hand = sum(float(getattr(model.get_submodule(f"base_model.model.{n}"), f"dcft_{kind}")["default"].grad
                            .norm()) ** 2 for n in ("proj", "out")) ** 0.5
        assert norms[f"DCFT {kind}"] == pytest.approx(by_hand)


def test_bad_arguments_are_one_line_errors(capsys):
    assert update_growth.main(["--steps", "0"]) == 2
    assert "--steps=0" in capsys.readouterr().err
    assert update_growth.main(["--row", "no separator"]) == 2
    assert "expected 'label|overrides'" in capsys.readouterr().err
