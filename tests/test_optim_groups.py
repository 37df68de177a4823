"""optim.head_lr and optim.factor_lr_ratio (module.build_optimizer), and the per-evaluation adapter diagnostics.

References: PEFT's own LoRA+ optimizer for the fast-factor rate, a one-group AdamW for the defaults, and DCFT's
definition (conv_transpose2d on the materialized subspace matrix) for ||ΔW|| / ||W||."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft.optimizers import create_loraplus_optimizer
from transformers import BertConfig, BertForSequenceClassification

from dcft_lab.adapters import build_method
from dcft_lab.config_schema import ConfigError
from dcft_lab.module import build_optimizer

HEADS = ["classifier", "pooler.dense"]
TARGETS = ["query", "value", "output.dense"]


def _bert():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=60)
    return BertForSequenceClassification(cfg)


def _adapted(name: str, **hyper):
    method = build_method({"name": name, **hyper})
    return method, method.build(_bert(), target_modules=TARGETS, modules_to_save=HEADS, task_type="SEQ_CLS")


def _lrs(optimizer) -> dict[int, float]:
    return {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}


def _opt(model, method, **kw):
    base = dict(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6, warmup_steps=0, warmup_ratio=0.0,
                total_steps=10)
    return build_optimizer(model, method, **{**base, **kw})[0]


@pytest.mark.parametrize(("name", "hyper", "fast"), [("lora", {"r": 2}, "lora_B"), ("dcft", {"kernel_size": 8}, "dcft_C"),
                                                    ("lokr", {"r": 1, "decompose_factor": 8}, "lokr_w1"),
                                                    ("sora", {"r": 2}, "sora_B")])
def test_head_and_fast_factor_rates(name, hyper, fast):
    method, model = _adapted(name, **hyper)
    lrs = _lrs(_opt(model, method, head_lr=2e-4, factor_lr_ratio=16))
    seen = set()
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "modules_to_save" in pname:
            want, kind = 2e-4, "head"
        elif fast in pname:
            want, kind = 1.6e-2, "fast"
        else:
            want, kind = 1e-3, "adapter"
        assert lrs[id(p)] == pytest.approx(want), pname
        seen.add(kind)
    assert seen == {"head", "fast", "adapter"}


def test_the_fast_factors_are_the_methods(monkeypatch):
    """build_optimizer reads the fast factors off the method it is given: change the method's, the groups follow."""
    method, model = _adapted("lora", r=2)
    monkeypatch.setattr(type(method), "fast_factors", ("lora_A",))
    lrs = _lrs(_opt(model, method, factor_lr_ratio=16))
    lora = {n: lrs[id(p)] for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n}
    assert lora and all(lr == pytest.approx(1.6e-2 if ".lora_A." in n else 1e-3) for n, lr in lora.items())


def test_fast_factor_rate_matches_peft_loraplus():
    """For LoRA's factors our rates equal PEFT's LoRA+ (B at lr x ratio, A at lr): the independent reference."""
    method, model = _adapted("lora", r=2)
    ours = _lrs(_opt(model, method, factor_lr_ratio=8))
    theirs = _lrs(create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=8))
    lora = [(n, p) for n, p in model.named_parameters() if p.requires_grad and ("lora_A" in n or "lora_B" in n)]
    assert lora and all(ours[id(p)] == pytest.approx(theirs[id(p)]) for _, p in lora)
    # where PEFT's helper does not fit: it gives the head's 1-D biases B's rate, we keep the head apart
    bias = dict(model.named_parameters())["base_model.model.classifier.modules_to_save.default.bias"]
    assert theirs[id(bias)] == pytest.approx(8e-3) and ours[id(bias)] == pytest.approx(1e-3)


def test_defaults_train_exactly_as_one_group():
    """head_lr None and ratio 1: the same numbers as a single-lr AdamW (v1 runs stay reproducible)."""
    method, model = _adapted("dcft", kernel_size=8)
    twin = copy.deepcopy(model)
    ours = _opt(model, method)
    params = [p for p in twin.parameters() if p.requires_grad]
    decay = [p for n, p in twin.named_parameters() if p.requires_grad and p.ndim >= 2 and "LayerNorm" not in n]
    rest = [p for p in params if all(p is not q for q in decay)]
    single = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                               lr=1e-3, betas=(0.9, 0.999), eps=1e-6)
    batch = {"input_ids": torch.randint(0, 60, (4, 9)), "labels": torch.tensor([0, 1, 1, 0])}
    for m, opt in ((model, ours), (twin, single)):
        m.eval()  # no dropout: the two models must see the same function
        for _ in range(3):
            opt.zero_grad()
            (m(**batch).loss + method.regularizer(m)).backward()
            opt.step()
    for (n, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(a, b), n


def test_head_only_uses_head_lr_for_its_head():
    method, model = _adapted("none")
    lrs = _lrs(_opt(model, method, head_lr=3e-4))
    assert set(lrs.values()) == {3e-4}


@pytest.mark.parametrize("override", ["optim.head_lr=0", "optim.factor_lr_ratio=-2", "optim.lr=0"])
def test_rates_must_be_positive(override):
    from dcft_lab.compose import compose_config
    from dcft_lab.config_schema import validate

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{key}=.*expected a number > 0"):
        validate(compose_config(["backbone=tiny-deberta", override]))


@pytest.mark.parametrize("method", ["none", "full", "bitfit", "hadapter", "padapter", "lorafa"])
def test_a_ratio_without_a_fast_factor_is_refused(method):
    # these methods would ignore it silently: one line naming the value and the method instead
    from dcft_lab.compose import compose_config
    from dcft_lab.config_schema import validate

    with pytest.raises(ConfigError, match=rf"^optim\.factor_lr_ratio=4, but method '{method}' has no fast factor; "
                                          "expected 1"):
        validate(compose_config(["backbone=tiny-deberta", f"method={method}", "optim.factor_lr_ratio=4"]))
    assert validate(compose_config(["backbone=tiny-deberta", f"method={method}", "optim.factor_lr_ratio=1"]))


@pytest.mark.parametrize("method", ["full", "bitfit"])
def test_half_precision_backbone_weights_are_refused_when_they_train(method):
    from dcft_lab.compose import compose_config
    from dcft_lab.config_schema import validate

    with pytest.raises(ConfigError, match=rf"^backbone\.dtype=bfloat16 with method '{method}', which trains the "
                                          "backbone's own weights; expected float32 or null"):
        validate(compose_config(["backbone=tiny-deberta", f"method={method}", "backbone.dtype=bfloat16"]))
    assert validate(compose_config(["backbone=tiny-deberta", "method=lora", "backbone.dtype=bfloat16"]))


def test_a_run_without_an_end_is_refused():
    from dcft_lab.compose import compose_config
    from dcft_lab.config_schema import validate

    with pytest.raises(ConfigError, match=r"^trainer\.max_epochs=-1 and trainer\.max_steps=-1: the run has no end"):
        validate(compose_config(["backbone=tiny-deberta", "trainer.max_epochs=-1", "trainer.max_steps=-1"]),
                 light=True)
    assert validate(compose_config(["backbone=tiny-deberta", "trainer.max_epochs=-1", "trainer.max_steps=5"]),
                    light=True)


@pytest.mark.parametrize("method", ["sora", "adalora"])
def test_fp16_is_refused_for_a_method_with_an_after_step_update(method):
    from dcft_lab.compose import compose_config
    from dcft_lab.config_schema import validate

    with pytest.raises(ConfigError, match=rf"^trainer\.precision=16-mixed with method '{method}', whose update after "
                                          r"each optimizer step .*; expected 32-true or bf16-mixed$"):
        validate(compose_config(["backbone=tiny-deberta", f"method={method}", "trainer.precision=16-mixed"]))
    assert validate(compose_config(["backbone=tiny-deberta", "method=lora", "trainer.precision=16-mixed"]))


def test_dcft_diagnostics_match_the_definition():
    method, model = _adapted("dcft", kernel_size=8, alpha=16.0)
    diag = method.diagnostics(model)
    layers = [m for m in model.modules() if hasattr(m, "dcft_A") and "default" in m.dcft_A]
    ratios, sq = [], {"dcft_A": 0.0, "dcft_B": 0.0, "dcft_C": 0.0}
    for layer in layers:
        A, B, C = layer.dcft_A["default"], layer.dcft_B["default"], layer.dcft_C["default"]
        delta = F.conv_transpose2d((B @ A)[None, None], C[None, None], stride=8)[0, 0] * layer.dcft_scaling["default"]
        w = layer.get_base_layer().weight  # (out, in); ΔW is (in, out)
        ratios.append(float(delta.norm() / w.norm()))
        for part, t in (("dcft_A", A), ("dcft_B", B), ("dcft_C", C)):
            sq[part] += float(t.pow(2).sum())
    assert len(layers) == 2 * len(TARGETS) + 2  # "output.dense" also matches attention.output.dense
    assert diag["delta_rel_mean"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-5)
    assert diag["delta_rel_max"] == pytest.approx(max(ratios), rel=1e-5)
    for part, value in sq.items():
        assert diag[f"norm/{part}"] == pytest.approx(value ** 0.5, rel=1e-5)


def test_lora_diagnostics_and_head_only_has_none():
    method, model = _adapted("lora", r=2)
    for layer in (m for m in model.modules() if hasattr(m, "lora_B") and "default" in m.lora_B):
        torch.nn.init.normal_(layer.lora_B["default"].weight)
    diag = method.diagnostics(model)
    assert diag["norm/lora_B"] > 0 and diag["delta_rel_mean"] > 0 and set(diag) >= {"norm/lora_A", "delta_rel_max"}
    head_method, head_model = _adapted("none")
    assert head_method.diagnostics(head_model) == {}
