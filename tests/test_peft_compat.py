"""Canary for the PEFT internals peft_compat.py relies on: each failure says which PEFT behaviour changed.

peft_compat adds a DCFT member to PEFT's closed ``PeftType`` enum and then calls ``register_peft_method``. If a PEFT
release changes the enum machinery, the registry, or starts accepting new names itself, these tests say so.
"""

import importlib
import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import peft
import peft.mapping
import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from peft.utils import peft_types
from peft.utils.peft_types import PeftType

import dcft_lab.adapters
from dcft_lab.adapters import DCFTConfig, DCFTModel, build_method, peft_compat
from dcft_lab.backbones import build_backbone

torch.set_num_threads(1)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_peft_type_is_still_a_str_enum_with_member_maps():
    # _add_enum_member writes into exactly these attributes of the Enum class
    for attr in ("_member_map_", "_value2member_map_", "_member_names_"):
        assert hasattr(PeftType, attr), (
            f"PeftType no longer has {attr}: the Enum internals changed; peft_compat._add_enum_member must be redone"
        )
    assert issubclass(PeftType, str), "PeftType is no longer a str Enum: DCFT's member (a str) will not fit it"


def test_dcft_member_found_by_name_and_value():
    member = peft_compat.DCFT_PEFT_TYPE
    assert PeftType("DCFT") is member, "PeftType('DCFT') (lookup by value) no longer finds the added member"
    assert PeftType["DCFT"] is member, "PeftType['DCFT'] (lookup by name) no longer finds the added member"
    assert PeftType.DCFT is member, "PeftType.DCFT (attribute) no longer finds the added member"
    assert member.value == "DCFT" and member.name == "DCFT" and member == "DCFT"
    assert member in list(PeftType), "iterating PeftType no longer lists DCFT (register_peft_method checks that)"
    assert peft.PeftType is PeftType, "peft.PeftType is no longer peft.utils.peft_types.PeftType"


def test_registry_mappings_hold_dcft():
    config_map = peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING
    tuner_map = peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING
    prefix_map = peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING
    assert config_map.get(PeftType.DCFT) is DCFTConfig, "PEFT_TYPE_TO_CONFIG_MAPPING lacks DCFT -> DCFTConfig"
    assert tuner_map.get(PeftType.DCFT) is DCFTModel, "PEFT_TYPE_TO_TUNER_MAPPING lacks DCFT -> DCFTModel"
    assert prefix_map.get(PeftType.DCFT) == "dcft_", "PEFT_TYPE_TO_PREFIX_MAPPING lacks DCFT -> 'dcft_'"
    # adapter_config.json stores the plain string "DCFT"; loading looks it up with that string
    assert config_map["DCFT"] is DCFTConfig, "the config registry no longer finds DCFT by its plain string key"
    assert DCFTConfig(target_modules=["x"]).peft_type is PeftType.DCFT


class _ProbeConfig(peft.PeftConfig):
    pass


class _ProbeModel:
    prefix = "dcftprobe_"


def test_register_peft_method_still_refuses_unknown_names():
    name = "dcftprobe"
    maps = (peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING, peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING,
            peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING, peft.mapping.PEFT_TYPE_TO_MIXED_MODEL_MAPPING)
    try:
        peft_types.register_peft_method(name=name, config_cls=_ProbeConfig, model_cls=_ProbeModel,
                                        prefix=_ProbeModel.prefix)
    except ValueError as err:
        assert "Unknown PEFT type" in str(err), f"register_peft_method refused the name with a new message: {err}"
    else:
        for mapping in maps:  # undo the probe's registration before failing
            for key in [k for k in mapping if str(k).upper() == name.upper()]:
                del mapping[key]
        pytest.fail(
            "peft.utils.register_peft_method now accepts names that are not PeftType members: the enum workaround "
            "in peft_compat.py can be simplified to a plain register_peft_method call"
        )
    assert name.upper() not in PeftType.__members__


def test_peft_still_routes_adapter_names_through_tuner_hooks():
    # DCFTModel._enable_peft_forward_hooks relies on PeftModel entering the tuner's hooks context around forward and
    # generate and then dropping adapter_names itself, and on ModulesToSaveWrapper routing rows as an
    # AuxiliaryTrainingWrapper (LoRA's contract); tests/test_peft_conformance.py checks the outcome.
    import inspect

    from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper

    assert issubclass(ModulesToSaveWrapper, AuxiliaryTrainingWrapper), "ModulesToSaveWrapper changed its base class"
    assert hasattr(ModulesToSaveWrapper, "_mixed_batch_forward"), "ModulesToSaveWrapper no longer routes adapter_names"
    source = inspect.getsource(peft.PeftModel._enable_peft_forward_hooks)
    assert "self.base_model._enable_peft_forward_hooks" in source, "PeftModel no longer calls the tuner's hooks"
    model = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), DCFTConfig(kernel_size=2,
                                                                                       target_modules=["0"]))
    assert "adapter_names" in model.special_peft_forward_args, "PeftModel no longer strips adapter_names itself"


def _tested_specifier() -> SpecifierSet:
    return SpecifierSet(",".join(peft_compat.TESTED_PEFT_RANGE))


def test_installed_peft_is_in_tested_range_and_pin():
    installed = Version(importlib.metadata.version("peft"))
    assert Version(peft_compat.peft_version()) == installed
    assert installed in _tested_specifier(), (
        f"installed peft {installed} is outside peft_compat.TESTED_PEFT_RANGE {peft_compat.TESTED_PEFT_RANGE}: "
        "run these tests against it and widen the range (and the pyproject pin) if they pass"
    )
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [Requirement(d) for d in deps if Requirement(d).name == "peft"]
    assert len(pins) == 1, f"expected one peft requirement in pyproject.toml, found {pins}"
    assert pins[0].specifier == _tested_specifier(), (
        f"pyproject.toml pins peft{pins[0].specifier} but peft_compat.TESTED_PEFT_RANGE is "
        f"{peft_compat.TESTED_PEFT_RANGE}; keep them in sync"
    )
    assert installed in pins[0].specifier


def _registry_state():
    return (
        list(PeftType._member_names_), dict(PeftType._value2member_map_),
        dict(peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING), dict(peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING),
        dict(peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING),
    )


def test_reimport_and_register_twice_is_harmless():
    before = _registry_state()
    member = PeftType.DCFT
    importlib.reload(peft_compat)  # re-runs _add_enum_member
    importlib.reload(dcft_lab.adapters)  # re-imports the tuners' registration
    dcft_lab.adapters.register_dcft()
    dcft_lab.adapters.register_dcft()
    assert _registry_state() == before, "re-import / re-registration changed PEFT's registry or enum"
    assert PeftType._member_names_.count("DCFT") == 1
    assert peft_compat.DCFT_PEFT_TYPE is member and PeftType.DCFT is member


# A fresh interpreter whose only dcft_lab line is the import: everything else is plain transformers / peft.
_LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import peft, torch, transformers
    import dcft_lab.adapters  # registers DCFT with PEFT

    torch.set_num_threads(1)
    base_dir, adapter_dir, inputs_path, out_path = sys.argv[1:]
    base = transformers.AutoModelForSequenceClassification.from_pretrained(base_dir)
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    inputs = torch.load(inputs_path)
    with torch.no_grad():
        logits = model(**inputs).logits
        merged = model.merge_and_unload().eval()
        merged_logits = merged(**inputs).logits
    torch.save({
        "logits": logits, "merged_logits": merged_logits,
        "config_cls": type(model.peft_config["default"]).__name__,
        "merged_cls": type(merged).__name__,
        "framework_modules": sorted(m for m in sys.modules if m.startswith(("dcft_lab.", "pytorch_lightning", "hydra"))),
    }, out_path)
    """
)


@pytest.mark.slow  # a fresh process (~5 s of imports); in this process test_peft_conformance.py saves and loads
def test_saved_adapter_loads_with_plain_peft_in_fresh_process(tmp_path):
    model, _, spec = build_backbone("tiny-deberta", "classification", 2)
    model.save_pretrained(tmp_path / "base")
    adapted = build_method({"name": "dcft", "kernel_size": 4, "rank": 2}).build(
        model, target_modules=spec.target_modules("all"), modules_to_save=spec.head_modules("classification"),
        task_type="SEQ_CLS",
    )
    torch.manual_seed(1)
    with torch.no_grad():  # a "trained" adapter and head: far from their init
        for p in adapted.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    adapted.eval()
    inputs = {"input_ids": torch.randint(5, model.config.vocab_size, (3, 11)),
              "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    with torch.no_grad():
        expected = adapted(**inputs).logits
    adapted.save_pretrained(tmp_path / "adapter")
    torch.save(inputs, tmp_path / "inputs.pt")

    saved_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved_config["peft_type"] == "DCFT"
    assert saved_config["kernel_size"] == 4 and saved_config["rank"] == 2

    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(tmp_path / "base"), str(tmp_path / "adapter"),
         str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"loading the DCFT adapter with plain PEFT failed:\n{proc.stderr[-3000:]}"
    out = torch.load(tmp_path / "out.pt")
    assert out["config_cls"] == "DCFTConfig"
    assert out["merged_cls"] == type(model).__name__  # merge_and_unload gives back the plain transformers class
    assert all(m.startswith("dcft_lab.adapters") for m in out["framework_modules"]), out["framework_modules"]
    # float32 sums may be reordered across processes; a lost or wrong adapter moves logits by ~0.1 or more
    torch.testing.assert_close(out["logits"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["merged_logits"], expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad(), adapted.disable_adapter():
        assert not torch.allclose(adapted(**inputs).logits, expected, atol=1e-3)  # the adapter matters
