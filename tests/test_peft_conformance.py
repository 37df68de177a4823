"""DCFT as a PEFT citizen: PEFT's custom-model test matrix (peft/tests/test_custom_models.py), rewritten for DCFT.

TEST_CASES is a table of (test id, model, DCFT config) rows over three tiny models with random weights: PEFT's MLP
(nn.Linear), a GPT-2 (transformers Conv1D, weights stored transposed) and a BERT encoder. Every check runs on every
row: training changes the output, merge == unmerged, unmerge restores the base, disable_adapter, delete_adapter,
save/load, two active adapters, mixed-adapter batches (``adapter_names=``) and bf16 / fp16.

The checks are helpers (``check_*``) so that the last tests can break DCFT on purpose (no routing, broken merges)
and assert that the same helpers catch it. An adapter is trained with large Adam steps before each check, and each
check first asserts the adapter moves the output by far more than its tolerance: with the paper's init (three
N(0, 0.02) factors) the update is ~1e-5 and a merge that adds nothing would pass every tolerance.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

import dcft_lab.adapters  # noqa: F401  (registers DCFT with PEFT)
from dcft_lab.adapters import DCFTConfig, DCFTLinear, DCFTModel
from dcft_lab.adapters.dcft import DCFTLayer

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

# ---- models -------------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """PEFT's custom-model MLP (test_custom_models.py)."""

    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 20)
        self.lin2 = nn.Linear(20, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        x = self.drop(self.relu(self.lin0(x)))
        x = self.relu(self.lin1(x))
        return self.sm(self.lin2(x))


def _tiny_gpt2():
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    return transformers.GPT2LMHeadModel(config)


def _tiny_bert():
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


BUILDERS = {"mlp": MLP, "gpt2": _tiny_gpt2, "bert": _tiny_bert}
BATCH = 5  # rows per input batch; the mixed-batch checks give each row its own adapter


@functools.cache
def _base_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name]().eval()


def base_model(name: str) -> nn.Module:
    """A fresh copy of the model with the same random weights every time (so a saved adapter can be reloaded)."""
    return copy.deepcopy(_base_model(name))


def make_inputs(name: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        return {"x": torch.randn(BATCH, 10, generator=g)}
    ids = torch.randint(0, 100, (BATCH, 7), generator=g)
    return {"input_ids": ids} if name == "gpt2" else {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def forward(model: nn.Module, inputs: dict, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs, **kwargs)
    return out if isinstance(out, torch.Tensor) else out.logits


# ---- the matrix ---------------------------------------------------------------------------------------------------

# (test id, model, DCFT config kwargs); shapes: MLP 10 -> 20 -> 20 -> 2, GPT-2 c_attn 32 -> 96, attn.c_proj 32 -> 32,
# c_fc 32 -> 128, mlp.c_proj 128 -> 32; BERT query/key/value 32 -> 32, intermediate 32 -> 64, output 64 -> 32.
TEST_CASES = [
    ("mlp-k5-lin0", "mlp", dict(kernel_size=5, target_modules=["lin0"], init="lora")),
    ("mlp-k2-r2-lin0-lin1", "mlp", dict(kernel_size=2, rank=2, target_modules=["lin0", "lin1"], init="orthonormal")),
    ("mlp-k10-official", "mlp", dict(kernel_size=10, target_modules=["lin0", "lin1"], init="official")),
    ("mlp-k2-lin2", "mlp", dict(kernel_size=2, target_modules=["lin2"], init="zero")),
    ("mlp-k4-s2", "mlp", dict(kernel_size=4, stride=2, rank=2, target_modules=["lin0", "lin1"], init="lora")),
    ("mlp-k10-s5", "mlp", dict(kernel_size=10, stride=5, target_modules=["lin1"], init="official")),
    ("mlp-k5-modules_to_save", "mlp", dict(
        kernel_size=5, target_modules=["lin0"], modules_to_save=["lin1"], init="zero",
    )),
    ("mlp-k5-dropout", "mlp", dict(kernel_size=5, dropout=0.1, target_modules=["lin0", "lin1"], init="lora")),
    ("gpt2-k4-c_attn", "gpt2", dict(kernel_size=4, target_modules=["c_attn"], init="lora")),
    ("gpt2-k8-r2-all", "gpt2", dict(
        kernel_size=8, rank=2, target_modules=["c_attn", "c_proj", "c_fc"], init="orthonormal",
    )),
    ("gpt2-k4-s2-official", "gpt2", dict(kernel_size=4, stride=2, target_modules=["c_attn", "c_fc"], init="official")),
    ("bert-k4-qkv", "bert", dict(kernel_size=4, target_modules=["query", "key", "value"], init="lora")),
    ("bert-k8-s4-ffn-modules_to_save", "bert", dict(
        kernel_size=8, stride=4, target_modules=["intermediate.dense", "output.dense"], modules_to_save=["classifier"],
        init="orthonormal",
    )),
]
ROWS = pytest.mark.parametrize("row", [case[1:] for case in TEST_CASES], ids=[case[0] for case in TEST_CASES])

ATOL, RTOL = 1e-5, 1e-4  # float32 merged vs unmerged, reloaded vs saved
MATTERS = 1e-3  # every check first asserts the adapters move the output by more than this (100 x ATOL)


def dcft_config(model: str, kwargs: dict) -> DCFTConfig:
    return DCFTConfig(**kwargs, task_type="CAUSAL_LM" if model == "gpt2" else None)


def train(pm, adapter: str, inputs: dict, seed: int, steps: int = 5, lr: float = 0.3) -> None:
    """A few large Adam steps of ``adapter`` (and its modules_to_save) towards a random target."""
    torch.manual_seed(seed)  # dropout: the same adapter whatever ran before
    pm.set_adapter(adapter)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    assert params, "no trainable parameters"
    optimizer = torch.optim.Adam(params, lr=lr)
    target = None
    for _ in range(steps):
        out = pm(**inputs)
        out = out if isinstance(out, torch.Tensor) else out.logits
        if target is None:
            target = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
        torch.nn.functional.mse_loss(out, target).backward()
        optimizer.step()
        optimizer.zero_grad()
    pm.eval()


def trained_model(model: str, kwargs: dict, adapters=("default",)):
    """(PEFT model with each adapter trained on its own, inputs, base model output)."""
    inputs = make_inputs(model)
    base = base_model(model)
    base_out = forward(base, inputs)
    pm = get_peft_model(base, dcft_config(model, kwargs), adapter_name=adapters[0])
    for i, name in enumerate(adapters):
        if i:
            pm.add_adapter(name, dcft_config(model, kwargs))
        train(pm, name, inputs, seed=10 + i)
    pm.set_adapter(adapters[0])
    return pm, inputs, base_out


def assert_matters(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    diff = (a.float() - b.float()).abs().max().item()
    assert diff > MATTERS, f"{what} moves the output by only {diff:.2e}: the check after this would prove nothing"


# ---- the checks (also run on purposely broken code at the end) ----------------------------------------------------


def check_merge(pm, inputs: dict, base_out: torch.Tensor) -> None:
    """merge_adapter (plain and safe) == unmerged; unmerge restores; merge_and_unload gives the plain model."""
    expected = forward(pm, inputs)
    assert_matters(expected, base_out, "the adapter")
    pm.merge_adapter()
    torch.testing.assert_close(forward(pm, inputs), expected, atol=ATOL, rtol=RTOL, msg="merged != unmerged")
    pm.unmerge_adapter()
    torch.testing.assert_close(forward(pm, inputs), expected, atol=ATOL, rtol=RTOL, msg="unmerge changed the output")
    with pm.disable_adapter():
        torch.testing.assert_close(forward(pm, inputs), base_out, atol=ATOL, rtol=RTOL, msg="unmerge left a residue")
    pm.merge_adapter(safe_merge=True)
    torch.testing.assert_close(forward(pm, inputs), expected, atol=ATOL, rtol=RTOL, msg="safe merge != unmerged")
    pm.unmerge_adapter()
    base_cls = type(pm.get_base_model())
    merged = pm.merge_and_unload()
    assert type(merged) is base_cls and not any(isinstance(m, DCFTLayer) for m in merged.modules())
    torch.testing.assert_close(forward(merged, inputs), expected, atol=ATOL, rtol=RTOL, msg="merge_and_unload")


def check_mixed_batch(pm, inputs: dict, base_out: torch.Tensor, names: list[str]) -> None:
    """``adapter_names=names``: row n equals the output of adapter names[n] alone ("__base__": the base model)."""
    alone = {}
    for name in sorted(set(names) - {"__base__"}):
        pm.set_adapter(name)
        alone[name] = forward(pm, inputs)
    alone["__base__"] = base_out
    for a in alone:
        for b in alone:
            if a < b:
                assert_matters(alone[a], alone[b], f"adapter {a!r} vs {b!r}")
    pm.set_adapter(next(name for name in names if name != "__base__"))  # the active adapter must not matter
    mixed = forward(pm, inputs, adapter_names=names)
    for row, name in enumerate(names):
        torch.testing.assert_close(
            mixed[row], alone[name][row], atol=ATOL, rtol=RTOL, msg=f"row {row} did not go through {name!r}"
        )


# ---- the matrix tests ---------------------------------------------------------------------------------------------


@ROWS
def test_forward_changes_output_after_training(row):
    model, kwargs = row
    inputs = make_inputs(model)
    base_out = forward(base_model(model), inputs)
    pm = get_peft_model(base_model(model), dcft_config(model, kwargs))
    pm.eval()
    before = forward(pm, inputs)
    if kwargs.get("init") in ("zero", "lora", "orthonormal"):  # these start from ΔW = 0
        torch.testing.assert_close(before, base_out, atol=1e-6, rtol=0)
    train(pm, "default", inputs, seed=10)
    after = forward(pm, inputs)
    assert_matters(after, before, "training")
    assert torch.isfinite(after).all()
    # only DCFT factors (and modules_to_save) train; the base stays frozen
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all(".dcft_" in n or "modules_to_save" in n for n in trainable), trainable


@ROWS
def test_merge_equals_unmerged_and_unmerge_restores(row):
    check_merge(*trained_model(*row))


@ROWS
def test_disable_adapter_gives_base_output(row):
    pm, inputs, base_out = trained_model(*row)
    adapted = forward(pm, inputs)
    assert_matters(adapted, base_out, "the adapter")
    with pm.disable_adapter():
        torch.testing.assert_close(forward(pm, inputs), base_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(forward(pm, inputs), adapted)  # and back on afterwards
    pm.merge_adapter()  # disabling a merged adapter unmerges it (LoRA's behaviour)
    with pm.disable_adapter():
        torch.testing.assert_close(forward(pm, inputs), base_out, atol=ATOL, rtol=RTOL)


@ROWS
def test_delete_adapter(row):
    model, kwargs = row
    pm, inputs, _ = trained_model(model, kwargs, adapters=("default", "other"))
    default_out = forward(pm, inputs)
    pm.set_adapter("other")
    pm.delete_adapter("other")
    assert "other" not in pm.peft_config and pm.active_adapters == ["default"]
    for module in pm.modules():
        if isinstance(module, DCFTLayer):
            for attr in module.adapter_layer_names + module.other_param_names:
                assert "other" not in getattr(module, attr), f"{attr} still holds the deleted adapter"
    assert not any(".other." in n or n.endswith(".other") for n, _ in pm.named_parameters())
    torch.testing.assert_close(forward(pm, inputs), default_out)
    with pytest.raises(ValueError, match="other"):
        pm.delete_adapter("other")


@ROWS
def test_save_load_round_trip(row, tmp_path):
    model, kwargs = row
    pm, inputs, base_out = trained_model(model, kwargs, adapters=("default", "other"))
    expected = {name: (pm.set_adapter(name), forward(pm, inputs))[1] for name in ("default", "other")}
    pm.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(base_model(model), tmp_path).eval()
    assert isinstance(loaded.peft_config["default"], DCFTConfig)
    torch.testing.assert_close(forward(loaded, inputs), expected["default"], atol=1e-6, rtol=0)
    loaded.load_adapter(tmp_path / "other", adapter_name="other")
    loaded.set_adapter("other")
    torch.testing.assert_close(forward(loaded, inputs), expected["other"], atol=1e-6, rtol=0)
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(forward(merged, inputs), expected["other"], atol=ATOL, rtol=RTOL)


@ROWS
def test_two_adapters_active_at_once(row):
    model, kwargs = row
    if kwargs.get("modules_to_save"):
        # PEFT's ModulesToSaveWrapper holds one active copy: two active adapters with modules_to_save are refused
        pm, inputs, base_out = trained_model(model, kwargs, adapters=("default", "other"))
        with pytest.raises(ValueError, match="Only one adapter can be set at a time"):
            pm.base_model.set_adapter(["default", "other"])
        return
    pm, inputs, base_out = trained_model(model, kwargs, adapters=("default", "other"))
    alone = {name: (pm.set_adapter(name), forward(pm, inputs))[1] for name in ("default", "other")}
    pm.base_model.set_adapter(["default", "other"])
    both = forward(pm, inputs)
    assert_matters(both, alone["default"], "adding adapter 'other'")
    assert_matters(both, alone["other"], "adding adapter 'default'")
    if model == "mlp" and kwargs["target_modules"] == ["lin2"]:
        # one adapted layer feeding LogSoftmax: the two updates add up inside it
        layer = pm.base_model.model.lin2
        h = torch.relu(pm.base_model.model.lin1(torch.relu(pm.base_model.model.lin0(inputs["x"]))))
        manual = layer.base_layer(h) + sum(layer._dcft_delta(n, h) for n in ("default", "other"))
        torch.testing.assert_close(both, torch.log_softmax(manual, -1).detach(), atol=1e-6, rtol=1e-6)
    pm.merge_adapter()  # merges both active adapters
    torch.testing.assert_close(forward(pm, inputs), both, atol=ATOL, rtol=RTOL)
    pm.unmerge_adapter()
    with pm.disable_adapter():
        torch.testing.assert_close(forward(pm, inputs), base_out, atol=ATOL, rtol=RTOL)


@ROWS
def test_mixed_adapter_batches(row):
    model, kwargs = row
    pm, inputs, base_out = trained_model(model, kwargs, adapters=("default", "other"))
    check_mixed_batch(pm, inputs, base_out, ["other", "default", "__base__", "other", "__base__"])
    check_mixed_batch(pm, inputs, base_out, ["default"] * BATCH)
    check_mixed_batch(pm, inputs, base_out, ["__base__", "default", "default", "__base__", "default"])
    if model == "gpt2":  # generate() takes adapter_names too, also with beam search (names repeated per beam)
        names = ["other", "default", "__base__", "other", "__base__"]
        for num_beams in (1, 2):
            gen = dict(max_new_tokens=3, do_sample=False, num_beams=num_beams, pad_token_id=0)
            mixed = pm.generate(**inputs, adapter_names=names, **gen)
            for name in set(names):
                rows = [i for i, n in enumerate(names) if n == name]
                if name == "__base__":
                    with pm.disable_adapter():
                        alone = pm.generate(**inputs, **gen)
                else:
                    pm.set_adapter(name)
                    alone = pm.generate(**inputs, **gen)
                assert torch.equal(mixed[rows], alone[rows]), f"generate rows {rows} did not use {name!r}"


@ROWS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("autocast_adapter_dtype", [False, True], ids=["half-adapter", "fp32-adapter"])
def test_half_precision(row, dtype, autocast_adapter_dtype):
    model, kwargs = row
    pm, inputs, _ = trained_model(model, kwargs)
    reference = forward(pm, inputs)  # float32
    trained_state = pm.state_dict()
    half = get_peft_model(
        base_model(model).to(dtype), dcft_config(model, kwargs), autocast_adapter_dtype=autocast_adapter_dtype
    )
    assert not half.load_state_dict(trained_state, strict=False).unexpected_keys  # the trained weights, cast
    half.eval()
    factors = [p for n, p in half.named_parameters() if ".dcft_" in n]
    assert {p.dtype for p in factors} == {torch.float32 if autocast_adapter_dtype else dtype}
    half_inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    out = forward(half, half_inputs)
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-2
    torch.testing.assert_close(out.float(), reference, atol=tol, rtol=tol)
    half.merge_adapter(safe_merge=True)
    torch.testing.assert_close(forward(half, half_inputs).float(), out.float(), atol=tol, rtol=tol)
    half.unmerge_adapter()
    # and a training step in half precision gives finite gradients to every factor
    half.train()
    result = half(**half_inputs)
    result = result if isinstance(result, torch.Tensor) else result.logits
    result.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in factors)


# ---- PEFT-conformant behaviour and messages -----------------------------------------------------------------------


def _lora_and_dcft_mlp():
    lora = get_peft_model(base_model("mlp"), LoraConfig(r=2, target_modules=["lin0"])).eval()
    dcft = get_peft_model(base_model("mlp"), DCFTConfig(kernel_size=5, target_modules=["lin0"])).eval()
    return lora, dcft


def _error(fn) -> tuple[type, str]:
    with pytest.raises(Exception) as err:
        fn()
    return err.type, str(err.value)


def test_safe_merge_nan_error_is_loras_word_for_word():
    lora, dcft = _lora_and_dcft_mlp()
    with torch.no_grad():
        lora.base_model.model.lin0.lora_A["default"].weight.fill_(float("nan"))
        dcft.base_model.model.lin0.dcft_A["default"].fill_(float("nan"))
    lora_error = _error(lambda: lora.merge_adapter(safe_merge=True))
    assert lora_error[0] is ValueError and "NaNs detected" in lora_error[1]
    assert _error(lambda: dcft.merge_adapter(safe_merge=True)) == lora_error
    assert not dcft.base_model.model.lin0.merged  # nothing was merged
    # PEFT's test helper checks it this way
    with pytest.raises(ValueError, match="NaNs detected in the merged weights. The adapter default seems to be broken"):
        dcft.merge_and_unload(safe_merge=True)


@pytest.mark.parametrize(
    "case", ["training mode", "merged", "unknown adapter", "wrong length"],
)
def test_adapter_names_errors_mirror_lora(case):
    """Where per-row routing is not possible both methods raise the same error (type and message)."""
    x = make_inputs("mlp")
    errors = []
    for pm in _lora_and_dcft_mlp():
        names = ["default", "__base__"] * 2 + ["default"]
        if case == "training mode":
            pm.train()
        elif case == "merged":
            pm.merge_adapter()
        elif case == "unknown adapter":
            names[1] = "typo"
        else:
            names = names[:3]
        errors.append(_error(lambda pm=pm, names=names: pm(**x, adapter_names=names)))
    assert errors[0][0] is ValueError and errors[1] == errors[0], errors


def test_mixed_true_is_refused_in_one_line():
    # PeftMixedModel (get_peft_model(..., mixed=True)) hosts a closed list of PEFT's own tuners (a Union of config
    # classes, a dispatch per type, a prefix list) and has no registration hook, so it cannot host DCFT without
    # patching all of them; PEFT's own one-line error says so. If a PEFT release opens it, this test says so.
    with pytest.raises(ValueError) as err:
        get_peft_model(base_model("mlp"), DCFTConfig(kernel_size=5, target_modules=["lin0"]), mixed=True)
    message = str(err.value)
    assert "\n" not in message
    assert "'DCFT' is not compatible with the `PeftMixedModel`" in message


def test_unsupported_target_is_named():
    class WithConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 1)

    with pytest.raises(TypeError, match="'conv' is a Conv1d; expected torch.nn.Linear or transformers Conv1D"):
        get_peft_model(WithConv(), DCFTConfig(kernel_size=2, target_modules=["conv"]))


def test_gpt2_conv1d_layers_are_wrapped_in_their_own_orientation():
    pm = get_peft_model(base_model("gpt2"), DCFTConfig(kernel_size=8, target_modules=["c_attn", "c_fc"]))
    layer = pm.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(layer, DCFTLinear) and layer.fan_in_fan_out
    assert (layer.in_features, layer.out_features) == (32, 96)
    assert layer.dcft_B["default"].shape == (4, 1) and layer.dcft_A["default"].shape == (1, 12)
    assert layer.get_delta_weight("default").shape == layer.get_base_layer().weight.shape == (32, 96)
    assert DCFTModel.target_module_mapping["gpt2"] == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]  # every c_proj


# ---- the checks catch broken code ---------------------------------------------------------------------------------


def _layer_ignores_adapter_names(monkeypatch):
    original = DCFTLinear.forward

    def forward_without_routing(self, x, *args, **kwargs):
        kwargs.pop("adapter_names", None)
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(DCFTLinear, "forward", forward_without_routing)


_NO_ROUTING = {
    # DCFT before per-row routing: no hooks, so PeftModel drops adapter_names and every row takes the active adapter
    "no model hooks": lambda monkeypatch: monkeypatch.delattr(DCFTModel, "_enable_peft_forward_hooks"),
    "layer ignores adapter_names": _layer_ignores_adapter_names,
}


@pytest.mark.parametrize("row_id", ["mlp-k5-modules_to_save", "gpt2-k4-s2-official"])
@pytest.mark.parametrize("routing_off", list(_NO_ROUTING))
def test_mixed_batch_check_catches_ignored_adapter_names(row_id, routing_off, monkeypatch):
    row = next(case[1:] for case in TEST_CASES if case[0] == row_id)
    pm, inputs, base_out = trained_model(*row, adapters=("default", "other"))
    _NO_ROUTING[routing_off](monkeypatch)
    with pytest.raises(AssertionError, match="did not go through"):
        check_mixed_batch(pm, inputs, base_out, ["other", "default", "__base__", "other", "__base__"])


_BROKEN_DELTAS = {
    "adds nothing": lambda layer, name, delta: torch.zeros_like(delta),
    "forgets alpha / r": lambda layer, name, delta: delta / layer.dcft_scaling[name],
    "wrong sign": lambda layer, name, delta: -delta,
    "Conv1D not transposed": lambda layer, name, delta: delta.t() if layer.fan_in_fan_out else delta,
}


@pytest.mark.parametrize("broken", list(_BROKEN_DELTAS))
def test_merge_check_catches_broken_merge(broken, monkeypatch):
    # attn.c_proj is a square Conv1D (32 x 32): a wrong orientation is not caught by a shape error there
    pm, inputs, base_out = trained_model("gpt2", dict(kernel_size=4, target_modules=["attn.c_proj"], init="lora"))
    original = DCFTLayer.get_delta_weight
    monkeypatch.setattr(
        DCFTLayer, "get_delta_weight", lambda self, name: _BROKEN_DELTAS[broken](self, name, original(self, name))
    )
    with pytest.raises(AssertionError, match="merged != unmerged"):
        check_merge(pm, inputs, base_out)


# ---- the README example, executed exactly as printed ----------------------------------------------------------------

README_MARKER = "<!-- tested: tests/test_peft_conformance.py runs this block -->"


def readme_example() -> str:
    """The python block that follows the marker in README.md: the test runs what users read, not a copy."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    after = text.split(README_MARKER, 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


README_EXAMPLE = readme_example()


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(README_EXAMPLE, "README example", "exec"), namespace)
    assert (tmp_path / "dcft-adapter" / "adapter_model.safetensors").is_file()
    merged, rows, ids = namespace["merged"], namespace["rows"], namespace["ids"]
    assert type(merged) is transformers.GPT2LMHeadModel and rows.shape == (3, 12)
    assert torch.equal(rows[:, :8], ids)
    base = namespace["load_base"]().eval()
    with torch.no_grad():
        adapted_logits, base_logits = merged(ids).logits, base(ids).logits
    assert not torch.allclose(adapted_logits, base_logits, atol=1e-4)  # the adapter trained and is in the weights
