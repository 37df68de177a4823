"""The paper's Table 1 baselines as methods: full, bitfit, hadapter, padapter, lorafa, sora.

- bad settings are one-line errors naming the key;
- full / BitFit train exactly what they should (BitFit: every bias outside the head), heads keep optim.head_lr;
- the bottleneck adapters compute h + up(f(down(h))) on the output of the attention / FFN output projection, before the
  residual LayerNorm, start near (or exactly at) the identity, and refuse to merge;
- SoRA's layer is B diag(g) A x · alpha / r, merges exactly, and its gate step equals a hand-computed step of the
  authors' code; its lambda schedule and L1 term follow the authors' code;
- LoRA-FA goes through PEFT's own optimizer (create_lorafa_optimizer) behind Method.make_optimizer: A never moves, the
  head keeps optim.head_lr, the updates equal PEFT's single-group optimizer's; every other method keeps the AdamW;
- runs (tiny-deberta, tiny-bart, MiniLM) save what evaluate / export need: evaluate reproduces the record, merge=true
  works where merging is defined and is a one-line error for the bottleneck adapters.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import peft
import pytest
import torch
import torch.nn.functional as F

from conftest import write_glue_tsv_root
from dcft_lab.adapters import METHOD_NAMES, build_method, count_parameters
from dcft_lab.adapters.bottleneck import BottleneckConfig, BottleneckLinear
from dcft_lab.adapters.counting import head_prefixes
from dcft_lab.adapters.sora import SoRAConfig, SoRALinear, gate_threshold_, lambda_values, stage_value
from dcft_lab.backbones import build_backbone
from dcft_lab.module import build_optimizer
from helpers import TwoLinear, one_line_error, restored_globals, run_cli, run_inprocess

torch.set_num_threads(1)
NEW = ("full", "bitfit", "hadapter", "padapter", "lorafa", "sora")
MERGEABLE = ("full", "bitfit", "lorafa", "sora")


def _build(cfg: dict, backbone: str = "tiny-deberta", family: str = "classification", seed: int = 0):
    from dcft_lab.build import adapt_model

    model, _, spec = build_backbone(backbone, family, 2, seed=seed)
    method = build_method(cfg)
    torch.manual_seed(seed)
    adapted, targets, heads = adapt_model(model, method, spec, family)
    return method, adapted


def _batch(model, n=6, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 2, (n,), generator=g)


def _optimizer(model, method, *, lr=1e-3, head_lr=None, weight_decay=0.01, warmup_steps=0, total_steps=100):
    return build_optimizer(model, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-6,
                           warmup_steps=warmup_steps, warmup_ratio=0.0, total_steps=total_steps, head_lr=head_lr,
                           fast_factors=method.fast_factors, method=method)


# ---- config: one-line errors naming the key ---------------------------------------------------------------------
@pytest.mark.parametrize("cfg, key", [
    ({"name": "hadapter", "bottleneck": 0}, "method.bottleneck"),
    ({"name": "padapter", "bottleneck": -4}, "method.bottleneck"),
    ({"name": "padapter", "bottleneck": 1.5}, "method.bottleneck"),
    ({"name": "hadapter", "bottleneck": "wide"}, "method.bottleneck"),
    ({"name": "hadapter", "nonlinearity": "sigmoid"}, "method.nonlinearity"),
    ({"name": "padapter", "init": "xavier"}, "method.init"),
    ({"name": "hadapter", "dropout": 1.0}, "method.dropout"),
    ({"name": "hadapter", "targets": "qv"}, "method.targets"),
    ({"name": "sora", "sparse_lambda": -1.0}, "method.sparse_lambda"),
    ({"name": "sora", "sparse_lambda_2": -1e-4}, "method.sparse_lambda_2"),
    ({"name": "sora", "r": 0}, "method.r"),
    ({"name": "sora", "lambda_schedule": "cosine", "max_lambda": 1e-3, "lambda_num": 3}, "method.lambda_schedule"),
    ({"name": "sora", "lambda_schedule": "linear"}, "method.max_lambda"),
    ({"name": "sora", "lambda_schedule": "linear", "max_lambda": 1e-3, "lambda_num": 0}, "method.lambda_num"),
    ({"name": "sora", "lambda_schedule": "linear", "max_lambda": -1.0, "lambda_num": 3}, "method.max_lambda"),
    ({"name": "lorafa", "r": 0}, "method.r"),
    ({"name": "full", "target_modules": ["query_proj"]}, "method.target_modules"),
    ({"name": "bitfit", "targets": "qk"}, "method.targets"),
    ({"name": "full", "bottleneck": 8}, "'bottleneck'"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(cfg, key):
    with pytest.raises(ValueError) as err:
        build_method(cfg)
    message = str(err.value)
    assert key in message and "\n" not in message, message


def test_bad_setting_through_the_commands_is_one_line(capsys, tmp_path):
    from dcft_lab import params

    assert params.main(["method=hadapter", "method.bottleneck=0"]) == 2
    assert capsys.readouterr().err.strip() == "error: method.bottleneck=0: expected a positive integer"
    proc = run_cli(["task=rte", "method=sora", "method.sparse_lambda=-1"], tmp_path / "run", None)
    assert proc.returncode != 0 and "method.sparse_lambda=-1.0" in one_line_error(proc.stderr)


def test_every_method_but_lorafa_keeps_the_adamw():
    model = TwoLinear()
    for name in METHOD_NAMES:
        if name != "lorafa":
            assert build_method({"name": name}).make_optimizer(model, [], lr=1e-3, betas=(0.9, 0.999), eps=1e-6) \
                is None, name


# ---- full and BitFit ----------------------------------------------------------------------------------------------
def test_full_trains_every_weight_with_the_head_at_its_own_rate():
    method, model = _build({"name": "full"})
    assert all(p.requires_grad for p in model.parameters())
    assert sorted(head_prefixes(model)) == ["classifier.", "pooler.dense."]
    counts = count_parameters(model)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("classifier.", "pooler.dense.")))
    assert counts.head == head and counts.trainable == counts.total == sum(p.numel() for p in model.parameters())
    optimizer, _ = _optimizer(model, method, lr=2e-5, head_lr=1e-3)
    by_name = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        names = [by_name[id(p)] for p in group["params"]]
        head_group = group["name"].startswith("head")
        assert all(n.startswith(("classifier.", "pooler.dense.")) == head_group for n in names), group["name"]
        assert group["lr"] == (1e-3 if head_group else 2e-5)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_full_without_a_head_builds_for_seq2seq():
    _, model = _build({"name": "full"}, "tiny-bart", "seq2seq")
    assert head_prefixes(model) == [] and all(p.requires_grad for p in model.parameters())


def test_bitfit_trains_every_bias_and_the_head_only():
    _, model = _build({"name": "bitfit"})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    body = [n for n in trainable if not n.startswith(("classifier.", "pooler.dense."))]
    assert all(n.endswith(".bias") for n in body)
    all_biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")
                  and not n.startswith(("classifier.", "pooler.dense."))]
    assert body == all_biases
    for part in ("query_proj.bias", "key_proj.bias", "value_proj.bias", "attention.output.dense.bias",
                 "attention.output.LayerNorm.bias", "intermediate.dense.bias", "layer.1.output.dense.bias",
                 "layer.1.output.LayerNorm.bias", "embeddings.LayerNorm.bias", "encoder.LayerNorm.bias"):
        assert any(n.endswith(part) for n in body), part
    assert not any(n.endswith("LayerNorm.weight") for n in trainable)
    # tiny-deberta (hidden 48, FFN 96, 2 layers): per layer Q, K, V, O 4 x 48, two LayerNorms 2 x 48, FFN 96 + 48;
    # the embeddings' and the relative embeddings' LayerNorm 2 x 48
    assert count_parameters(model).adapter == 2 * (4 * 48 + 2 * 48 + 96 + 48) + 2 * 48 == 960


def test_bitfit_needs_biases():
    with pytest.raises(ValueError, match="no bias parameters"):
        _build({"name": "bitfit"}, "tiny-llama")


# ---- bottleneck adapters -------------------------------------------------------------------------------------------
def test_bottleneck_layer_adds_the_adapter_to_the_projection_output():
    model = TwoLinear()
    config = BottleneckConfig(bottleneck=3, nonlinearity="swish", init="bert", target_modules=["proj"])
    adapted = peft.get_peft_model(model, config)
    layer = adapted.base_model.model.proj
    assert isinstance(layer, BottleneckLinear)
    down, up = layer.bottleneck_down["default"], layer.bottleneck_up["default"]
    with torch.no_grad():
        up.weight.normal_(0, 0.5)
        up.bias.normal_(0, 0.5)
    x = torch.randn(5, 16)
    base = layer.base_layer
    h = x @ base.weight.T + base.bias
    expected = h + F.silu(h @ down.weight.T + down.bias) @ up.weight.T + up.bias
    torch.testing.assert_close(layer(x), expected)
    assert down.weight.shape == (3, 24) and up.weight.shape == (24, 3)  # acts on the output width (24)
    # per adapter 2 d b + b + d
    assert count_parameters(adapted).adapter == 2 * 24 * 3 + 3 + 24


@pytest.mark.parametrize("init, exact", [("houlsby", False), ("bert", False), ("zero", True)])
def test_bottleneck_adapters_start_near_the_identity(init, exact):
    model, _, _ = build_backbone("tiny-deberta", "classification", 2, seed=0)
    model.eval()
    inputs, _ = _batch(model)
    with torch.no_grad():
        before = model(**inputs).logits
    _, adapted = _build({"name": "hadapter", "init": init})
    adapted.eval()
    with torch.no_grad():
        after = adapted(**inputs).logits
    if exact:
        assert torch.equal(before, after)
    else:
        assert 0 < (before - after).abs().max() < 1e-2
    if init == "houlsby":  # N(0, 1e-2) truncated at two standard deviations
        weights = [p for n, p in adapted.named_parameters() if "bottleneck_" in n and n.endswith("weight")]
        assert max(float(w.detach().abs().max()) for w in weights) <= 2e-2


@pytest.mark.parametrize("backbone, name, expected", [
    ("tiny-deberta", "hadapter", {f"deberta.encoder.layer.{i}.{s}" for i in (0, 1)
                                  for s in ("attention.output.dense", "output.dense")}),
    ("tiny-deberta", "padapter", {f"deberta.encoder.layer.{i}.output.dense" for i in (0, 1)}),
    ("tiny-bart", "hadapter", {f"model.{part}.layers.0.{s}" for part in ("encoder", "decoder")
                               for s in ("self_attn.out_proj", "fc2")}),
    ("tiny-bart", "padapter", {"model.encoder.layers.0.fc2", "model.decoder.layers.0.fc2"}),
])
def test_bottleneck_sites(backbone, name, expected):
    _, model = _build({"name": name}, backbone)
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
               if isinstance(m, BottleneckLinear)}
    assert wrapped == expected


def test_bottleneck_output_enters_the_residual_layernorm():
    """DeBERTa's output block: LayerNorm(dropout(dense(x) + adapter(dense(x))) + input) -- the adapter sits on the
    projection's output, before the residual add and its LayerNorm (eval mode: no dropout)."""
    _, model = _build({"name": "padapter", "init": "bert"})
    model.eval()
    block = model.base_model.model.deberta.encoder.layer[1].output
    seen = {}
    block.dense.register_forward_hook(lambda m, args, out: seen.update(x=args[0], dense=out))
    block.register_forward_pre_hook(lambda m, args: seen.update(residual=args[1]))
    block.LayerNorm.register_forward_pre_hook(lambda m, args: seen.update(ln_in=args[0]))
    with torch.no_grad():
        model(**_batch(model)[0])
        base = block.dense.base_layer(seen["x"])
        adapter = block.dense.adapter_output("default", base)
    torch.testing.assert_close(seen["dense"], base + adapter)
    torch.testing.assert_close(seen["ln_in"], base + adapter + seen["residual"])
    assert adapter.abs().max() > 0


def test_bottleneck_refuses_to_merge_and_unloads():
    _, model = _build({"name": "hadapter"})
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    model.eval()
    inputs, _ = _batch(model)
    with torch.no_grad(), model.disable_adapter():
        base = model(**inputs).logits
    plain = model.unload()
    assert not any(isinstance(m, BottleneckLinear) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, base)


def test_bottleneck_explicit_target_modules():
    _, model = _build({"name": "hadapter", "target_modules": ["intermediate.dense"]})
    wrapped = [n for n, m in model.named_modules() if isinstance(m, BottleneckLinear)]
    assert len(wrapped) == 2 and all(n.endswith("intermediate.dense") for n in wrapped)
    with pytest.raises(ValueError, match="qkv_fused"):
        _build({"name": "padapter", "target_modules": ["qkv_fused"]})


# ---- SoRA ------------------------------------------------------------------------------------------------------------
def test_gate_step_matches_a_hand_computed_step():
    # ξ = 0.25 (exact in binary). The authors' three sequential assignments (src/sparse_optimizer.py):
    #  1.0 -> 0.75 (soft threshold); 0.375 -> 0.125 -> 0 (zeroed in the third line: |0.125| < ξ); 0.25 stays (no
    #  strict inequality holds); 0.125 -> 0; 0 stays; and the mirror images.
    gate = torch.tensor([1.0, 0.375, 0.25, 0.125, 0.0, -0.125, -0.25, -0.375, -1.0])
    gate_threshold_(gate, 0.25)
    assert gate.tolist() == [0.75, 0.0, 0.25, 0.0, 0.0, 0.0, -0.25, 0.0, -0.75]
    # entries beyond 2ξ: exactly the soft threshold sign(g) (|g| - ξ)
    g = torch.randn(1000, dtype=torch.float64)
    out = gate_threshold_(g.clone(), 0.1)
    far = g.abs() >= 0.2
    torch.testing.assert_close(out[far], torch.sign(g[far]) * (g[far].abs() - 0.1))
    assert (out[(g.abs() < 0.2) & (g.abs() != 0.1)] == 0).all()
    assert torch.equal(gate_threshold_(g.clone(), 0.0), g)  # ξ = 0: unchanged


def test_sora_lambda_schedule_follows_the_authors_lists():
    assert lambda_values(1e-3, None, None, None) == [1e-3]
    np.testing.assert_allclose(lambda_values(1e-3, "linear", 7e-4, 7), np.linspace(1e-3, 7e-4, 7))
    np.testing.assert_allclose(lambda_values(1e-3, "log_linear", 2e-3, 3),
                               np.log(np.linspace(np.exp(1e-3), np.exp(2e-3), 3)))
    np.testing.assert_allclose(lambda_values(1e-4, "exp_linear", 1e-2, 3), [1e-4, 1e-3, 1e-2])
    assert [stage_value([1.0, 2.0, 3.0], s, 30) for s in (0, 9, 10, 19, 20, 29, 35)] == [1, 1, 2, 2, 3, 3, 3]


def test_sora_layer_is_a_gated_lora_and_merges_exactly():
    model = TwoLinear()
    adapted = peft.get_peft_model(model, SoRAConfig(r=4, alpha=8.0, target_modules=["proj", "out"]))
    layer = adapted.base_model.model.proj
    assert isinstance(layer, SoRALinear)
    A, B, g = layer.sora_A["default"], layer.sora_B["default"], layer.sora_gate["default"]
    assert A.shape == (4, 16) and B.shape == (24, 4) and g.shape == (4,)
    assert torch.equal(B, torch.zeros_like(B))  # ΔW = 0 at the start, as LoRA
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
        g[1] = 0.0
    x = torch.randn(5, 16)
    base = layer.base_layer
    expected = x @ base.weight.T + base.bias + ((x @ A.T) * g) @ B.T * (8.0 / 4)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.get_delta_weight("default"), (B @ torch.diag(g) @ A) * 2.0)
    assert torch.linalg.matrix_rank(layer.get_delta_weight("default").detach()) == 3  # a zero gate removes a rank
    with torch.no_grad():
        unmerged = adapted(x)
        merged = adapted.merge_and_unload()(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    # r (d_in + d_out) + r per matrix
    assert count_parameters(peft.get_peft_model(TwoLinear(), SoRAConfig(r=4, target_modules=["proj", "out"]))) \
        .adapter == 4 * (16 + 24) + 4 + 4 * (24 + 8) + 4


def test_sora_regularizer_step_and_diagnostics():
    method, model = _build({"name": "sora", "r": 4, "sparse_lambda": 2.0, "sparse_lambda_2": 0.5,
                            "lambda_schedule": "linear", "max_lambda": 1.5, "lambda_num": 3})
    gates = model.base_model.gates()
    assert len(gates) == 12 and all(g.shape == (4,) for g in gates)
    everything = torch.cat([g.detach() for g in gates])
    torch.testing.assert_close(method.regularizer(model), 2.0 * everything.abs().sum() / everything.numel())
    method.set_total_steps(model, 30)
    assert [method.threshold(s) for s in (0, 10, 29)] == [0.5, 1.0, 1.5]
    expected = [gate_threshold_(g.detach().clone(), 1.0) for g in gates]
    method.on_step(model, 12)  # second stage: ξ = 1.0
    for g, e in zip(gates, expected):
        assert torch.equal(g.detach(), e)
    nonzero = int(sum((g != 0).sum() for g in gates))
    assert 0 < nonzero < 48
    diag = method.diagnostics(model)
    assert diag["sora/gate_nonzero"] == nonzero and diag["sora/rank_mean"] == nonzero / 12
    assert diag["sora/effective_params"] == sum(int((m.sora_gate["default"] != 0).sum()) * (m.in_features +
                                                                                            m.out_features)
                                                for m in model.modules() if isinstance(m, SoRALinear))
    assert {"norm/sora_A", "norm/sora_B", "norm/sora_gate", "delta_rel_mean"} <= set(diag)
    assert method.fast_factors == ("sora_B",)


def test_sora_gates_train_without_weight_decay_and_sora_b_is_the_fast_factor():
    method, model = _build({"name": "sora"})
    optimizer, _ = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-6, warmup_steps=0,
                                   warmup_ratio=0.0, total_steps=10, factor_lr_ratio=4.0,
                                   fast_factors=method.fast_factors, method=method)
    by_name = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        names = [by_name[id(p)] for p in group["params"]]
        if any("sora_gate" in n for n in names):
            assert group["weight_decay"] == 0.0 and group["lr"] == 1e-3
        if any("sora_B" in n for n in names):
            assert group["name"] == "fast" and group["lr"] == 4e-3 and all("sora_B" in n for n in names)


# ---- LoRA-FA ---------------------------------------------------------------------------------------------------------
def _lorafa_step(model, method, optimizer, steps=3):
    inputs, labels = _batch(model)
    model.train()
    torch.manual_seed(0)
    for step in range(steps):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        method.on_step(model, step)
        optimizer.zero_grad()


def test_lorafa_uses_peft_optimizer_with_the_head_at_its_rate_and_a_frozen():
    from peft.optimizers.lorafa import LoraFAOptimizer

    method, model = _build({"name": "lorafa", "r": 2})
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_A" in n)
    assert count_parameters(model).adapter == sum(p.numel() for n, p in model.named_parameters() if "lora_B" in n)
    optimizer, scheduler = _optimizer(model, method, lr=1e-3, head_lr=5e-4, warmup_steps=2, total_steps=10)
    assert type(optimizer) is LoraFAOptimizer
    for group in optimizer.param_groups:
        head = group["name"].startswith("head")
        assert group["lr"] == (5e-4 if head else 1e-3) * 0.0  # warmup starts at 0
        assert group["initial_lr"] == (5e-4 if head else 1e-3)
        lora = [n for n in group["names"] if "lora_" in n]
        assert lora == [n for pair in zip(lora[::2], lora[1::2]) for n in pair]  # (A, B) pairs, in order
        assert all(a.replace("lora_A", "lora_B") == b for a, b in zip(lora[::2], lora[1::2]))
        assert not head or not lora
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scheduler.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups if g["name"].startswith("adapter")][0] == pytest.approx(1e-3)
    _lorafa_step(model, method, optimizer)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if "lora_A" in n)
    assert all(not torch.equal(after[n], before[n]) for n in before if "lora_B" in n)
    assert any(not torch.equal(after[n], before[n]) for n in before if "classifier" in n and after[n].requires_grad)


def test_lorafa_updates_equal_peft_single_group_optimizer():
    """Same lr for all and no weight decay: splitting PEFT's one group into the lab's changes no update."""
    from peft.optimizers import create_lorafa_optimizer

    method, ours = _build({"name": "lorafa", "r": 2, "alpha": 4.0})
    _, theirs = _build({"name": "lorafa", "r": 2, "alpha": 4.0})
    optimizer, _ = _optimizer(ours, method, lr=1e-2, weight_decay=0.0)
    reference = create_lorafa_optimizer(theirs, r=2, lora_alpha=4.0, lr=1e-2)
    _lorafa_step(ours, method, optimizer)
    _lorafa_step(theirs, method, reference)
    theirs_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        assert torch.equal(param, theirs_params[name]), name


# ---- counts on DeBERTaV3-base (meta device) ----------------------------------------------------------------------
def test_params_prints_the_table1_counts(capsys):
    from dcft_lab import params

    assert params.main(["--table1"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| row")}
    adapter = {label: int(cells[1].replace(",", "")) for label, cells in rows.items()}
    assert adapter == {"Full FT": 183_831_552, "BitFit": 102_912, "HAdapter b=8": 313_536, "PAdapter b=16": 304_320,
                       "LoRA r=1": 165_888, "LoRA-FA r=1": 82_944, "SoRA r=8": 1_327_680,
                       "DCFT d=8 s=8 k=1": 25_344, "DCFT d=2 s=2 k=1": 83_232}
    assert rows["Full FT"][4] == "184,423,682"  # + the head: the paper's 184M
    assert params.main(["method=hadapter"]) == 0 and "adapter 313,536" in capsys.readouterr().out
    assert params.main(["method=padapter"]) == 0 and "adapter 304,320" in capsys.readouterr().out


# ---- runs: save, load, evaluate, export ----------------------------------------------------------------------------
def _evaluate(*args):
    from dcft_lab import evaluate

    with restored_globals():
        return evaluate.main(list(args))


def _export(*args):
    from dcft_lab import export

    with restored_globals():
        return export.main(list(args))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """RTE on 6-row TSVs, 3 steps: one completed run per new method on tiny-deberta and tiny-bart."""
    base = tmp_path_factory.mktemp("table1_methods")
    root = write_glue_tsv_root(base, "rte")
    out = {"root": root}
    for backbone in ("tiny-deberta", "tiny-bart"):
        for name in NEW:
            run_dir = base / backbone / name
            out[backbone, name] = (run_dir, run_inprocess(["task=rte", f"method={name}", f"backbone={backbone}"],
                                                          run_dir, root))
    return out


SAVED = {"full": {"config.json", "model.safetensors"}, "bitfit": {"trained.safetensors"}}


@pytest.mark.parametrize("backbone", ["tiny-deberta", "tiny-bart"])
@pytest.mark.parametrize("name", NEW)
def test_run_saves_what_evaluate_needs(runs, backbone, name):
    run_dir, record = runs[backbone, name]
    assert record["status"] == "completed" and record["method"] == name
    assert record["method_label"] == build_method({"name": name}).label
    files = {p.name for p in (run_dir / "adapter").iterdir()}
    assert SAVED.get(name, {"adapter_config.json", "adapter_model.safetensors"}) <= files
    payload = _evaluate(f"run={run_dir}")
    assert payload["metrics"] == record["metrics"]["final"] and payload["equals_recorded_final"] is True


def test_lorafa_run_keeps_a_at_its_initialization(runs):
    """The saved A equals A rebuilt as training built it (same seeds); B moved."""
    import pytorch_lightning as pl
    from safetensors.torch import load_file

    from dcft_lab.build import adapt_model, build_model
    from dcft_lab.saved_run import open_run

    run_dir, _ = runs["tiny-deberta", "lorafa"]
    saved = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    run = open_run(run_dir)
    with restored_globals():
        pl.seed_everything(run.rc.seed, verbose=False)
        model, _ = build_model(run.rc, run.spec, run.backbone, run.family)
        pl.seed_everything(run.rc.seed, verbose=False)  # training re-seeds before the adapter's init
        initial, _, _ = adapt_model(model, run.method, run.backbone, run.family)
    init = peft.get_peft_model_state_dict(initial)
    a_keys = [k for k in saved if "lora_A" in k]
    b_keys = [k for k in saved if "lora_B" in k]
    assert a_keys and all(torch.equal(saved[k], init[k]) for k in a_keys)
    assert any(not torch.equal(saved[k], init[k]) for k in b_keys)


@pytest.mark.parametrize("name", MERGEABLE)
def test_export_merged_scores_like_the_run(runs, name, tmp_path):
    import transformers

    from dcft_lab.saved_run import load_adapted_model, open_run

    run_dir, _ = runs["tiny-deberta", name]
    manifest = _export(f"run={run_dir}", f"out={tmp_path / 'merged'}", "merge=true")
    assert manifest["max_abs_diff"] <= 1e-5 and {"config.json", "model.safetensors"} <= set(manifest["files"])
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    with restored_globals():
        reference, tokenizer, _ = load_adapted_model(open_run(run_dir))
    batch = tokenizer(["a b c d", "e f"], ["g h", "i j k"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, reference(**batch).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["hadapter", "padapter"])
def test_export_merge_of_a_bottleneck_adapter_is_a_one_line_error(runs, name, tmp_path, capsys):
    from dcft_lab import export

    run_dir, _ = runs["tiny-deberta", name]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc, restored_globals():
        export.main([f"run={run_dir}", f"out={tmp_path / 'merged'}", "merge=true"])
    assert exc.value.code == 2
    line = one_line_error(capsys.readouterr().err)
    assert re.search(r"merge=true is not defined for [HP]Adapter b=\d+ .*merge=false", line), line
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("name", NEW)
def test_export_unmerged(runs, name, tmp_path):
    run_dir, record = runs["tiny-deberta", name]
    manifest = _export(f"run={run_dir}", f"out={tmp_path / 'out'}")
    expected = SAVED.get(name, {"adapter_config.json", "adapter_model.safetensors"})
    assert expected | {"README.md", "tokenizer.json"} <= set(manifest["files"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert record["method_label"] in card
    if name in ("hadapter", "padapter", "sora"):
        assert "import dcft_lab.adapters" in card  # lab PEFT types: loading needs the registration
    if name == "full":  # the fully fine-tuned model loads as a plain transformers model
        import transformers

        from dcft_lab.saved_run import load_adapted_model, open_run

        plain = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
        with restored_globals():
            reference, tokenizer, _ = load_adapted_model(open_run(run_dir))
        batch = tokenizer(["a b c"], ["d e"], return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(plain(**batch).logits, reference(**batch).logits)


def test_full_run_reloads_tied_weights(runs):
    """tiny-bart ties its embeddings: the saved model holds them once, the reload fills every tied name."""
    from dcft_lab.saved_run import load_adapted_model, open_run

    run_dir, _ = runs["tiny-bart", "full"]
    with restored_globals():
        model, _, _ = load_adapted_model(open_run(run_dir))
    shared = model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight.data_ptr() == shared.data_ptr()
    before = build_backbone("tiny-bart", "classification", 2, seed=open_run(run_dir).rc.seed)[0].model.shared.weight
    assert not torch.equal(shared, before)  # the trained embeddings, not the rebuilt ones


@pytest.mark.parametrize("name", [n if n == "padapter" else pytest.param(n, marks=pytest.mark.slow) for n in NEW])
def test_minilm_runs_evaluate_and_export(name, tmp_path, glue_tsv_root):
    """The real all-MiniLM-L6-v2 (BERT names: PAdapter's FFN site excludes attention.output.dense); ~10 s a method."""
    root = glue_tsv_root("mrpc")
    run_dir = tmp_path / "run"
    record = run_inprocess(["task=mrpc", f"method={name}", "backbone=minilm"], run_dir, root)
    assert record["status"] == "completed" and math.isfinite(record["metrics"]["final"]["accuracy"])
    assert _evaluate(f"run={run_dir}")["metrics"] == record["metrics"]["final"]
    manifest = _export(f"run={run_dir}", f"out={tmp_path / 'out'}", f"merge={str(name in MERGEABLE).lower()}")
    assert manifest["max_abs_diff"] <= 1e-5 if name in MERGEABLE else "adapter_config.json" in manifest["files"]
    assert json.loads((run_dir / "results.json").read_text())["params"] == record["params"]


def test_paper_rows_carry_the_labels_runs_record():
    """The report matches paper numbers by method_label: the Table 1 rows of the full grid and paper_numbers.csv
    name the same configurations (SoRA / LoRA-FA have no paper numbers in the CSV)."""
    import yaml

    from dcft_lab.paper import load_paper_numbers
    from helpers import REPO

    paper = {r["method_label"] for r in load_paper_numbers() if r["table"] == "table1"}
    grid = yaml.safe_load((REPO / "experiments" / "table1" / "grid.yaml").read_text())["full"]["methods"]
    for label in ("Full FT", "BitFit", "HAdapter b=8", "PAdapter b=16"):
        assert label in paper and label in grid, label
    assert {"SoRA r=8", "LoRA-FA r=1"} <= set(grid)


@pytest.mark.parametrize("name", ["lorafa", "sora", "full"])
def test_interrupted_run_resumes_like_an_uninterrupted_one(name, tmp_path):
    """LoRA-FA's optimizer keeps its state under parameter names (not tensors), SoRA's threshold step and schedule
    depend on the step, full fine-tuning checkpoints every weight: a run stopped at step 5 and started again ends
    exactly like a straight one."""
    from conftest import default_glue_rows

    root = write_glue_tsv_root(tmp_path, "rte", rows={"train.tsv": default_glue_rows("rte", n=12, tag="train"),
                                                      "dev.tsv": default_glue_rows("rte", n=8, tag="dev")})
    extra = ["task=rte", f"method={name}", "trainer.max_steps=8", "eval_every_n_steps=4", "optim.lr=5e-3",
             "run.checkpoint_every_n_steps=2"]
    if name == "sora":  # a schedule and a threshold large enough to zero gates within 8 steps
        extra += ["method.sparse_lambda_2=0.05", "method.lambda_schedule=linear", "method.max_lambda=0.2",
                  "method.lambda_num=4"]
    straight = run_inprocess(extra, tmp_path / "straight", root)
    with pytest.raises(Exception, match="injected"):
        run_inprocess([*extra, "run.inject_failure=train_step:5"], tmp_path / "resumed", root)
    resumed = run_inprocess(extra, tmp_path / "resumed", root)
    assert resumed["resumed_from"].endswith("last.ckpt")
    assert resumed["evaluations"] == straight["evaluations"] and resumed["metrics"] == straight["metrics"]
    if name == "sora":
        assert straight["evaluations"][-1]["diagnostics"]["sora/gate_nonzero"] < 12 * 8
