"""``python -m dcft_lab.params [key=value ...]``: exact adapter / head / trainable / total parameter counts of any
backbone x method, from a model built on the meta device (no download, no memory: an 8B model takes seconds).

    python -m dcft_lab.params backbone=llama-3-8b method=dcft                 # per module type + totals
    python -m dcft_lab.params backbone=qwen2.5-0.5b method=lora method.r=8 method.targets=qkvo
    python -m dcft_lab.params backbone=llama-3-8b backbone.path=/my/llama    # the architecture of a local HF folder
    python -m dcft_lab.params --table                                        # the decoder LLM table of the README
    python -m dcft_lab.params --table1                                       # Table 1's rows on DeBERTaV3-base

Keys are those of ``python -m dcft_lab.run`` (the same Hydra composition of conf/), so ``method.*``, ``backbone=``,
``task=`` mean the same. Without ``task=``, a decoder-only backbone is counted as a causal LM (no head) and an
encoder with the run default (sst2, classification head). The architectures are the published configs written in
``dcft_lab.backbones``; ``backbone.path`` reads ``config.json`` from a local folder instead.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is built: `--help` answers without it
    from torch import nn

# The README's decoder table: backbones (rows) x methods (columns); every method on all target matrices of every
# layer, DCFT with stride = kernel size and subspace rank 1.
TABLE_BACKBONES = ("llama-2-7b", "llama-3-8b", "mistral-7b", "llama-3.2-1b", "qwen2.5-0.5b", "gpt2")
TABLE_METHODS = (("DCFT d=8", {"name": "dcft", "kernel_size": 8}), ("DCFT d=2", {"name": "dcft", "kernel_size": 2}),
                 ("LoRA r=1", {"name": "lora", "r": 1}), ("LoRA r=8", {"name": "lora", "r": 8}))

# The paper's Table 1 rows on DeBERTaV3-base (classification, 2 labels): (label, method config, the paper's #params).
TABLE1_BACKBONE = "deberta-v3-base"
TABLE1_ROWS = (
    ("Full FT", {"name": "full"}, "184M", "every backbone weight (the paper's 184M includes the head)"),
    ("BitFit", {"name": "bitfit"}, "0.1M", "every bias of the backbone, LayerNorm biases included"),
    ("HAdapter b=8", {"name": "hadapter", "bottleneck": 8}, "0.31M", "L x 2 x (2 d b + b + d)"),
    ("PAdapter b=16", {"name": "padapter", "bottleneck": 16}, "0.30M", "L x (2 d b + b + d)"),
    ("LoRA r=1", {"name": "lora", "r": 1}, "0.17M", "r (d_in + d_out) per matrix"),
    ("LoRA-FA r=1", {"name": "lorafa", "r": 1}, "0.12M", "B only, r d_out per matrix (A, r d_in, frozen)"),
    ("SoRA r=8", {"name": "sora", "r": 8}, "0.12M", "at the start, r_max (d_in + d_out) + r_max per matrix; "
                                                    "zeroed gates remove rank (diagnostic sora/effective_params)"),
    ("DCFT d=8 s=8 k=1", {"name": "dcft", "kernel_size": 8}, "0.024M", "k (d_in/d + d_out/d) + d^2 per matrix"),
    ("DCFT d=2 s=2 k=1", {"name": "dcft", "kernel_size": 2}, "0.079M", "k (d_in/d + d_out/d) + d^2 per matrix"),
)


@dataclass
class ModuleGroup:
    target: str
    shape: tuple[int, int]  # (d_in, d_out) in the paper's orientation
    count: int
    each: int  # adapter parameters of one such matrix


def meta_model(backbone: str, family: str, num_labels: int = 2, path: str | None = None) -> nn.Module:
    """The backbone with the head of ``family``, built from its architecture on the meta device (no weights)."""
    import torch
    import transformers

    from .backbones import get_backbone, load_model

    spec = get_backbone(backbone)
    vocab_size = None
    if path is None and spec.config.get("vocab_size") == 0:  # tiny backbones: sized to their (local) tokenizer
        from .backbones import load_tokenizer

        vocab_size = len(load_tokenizer(spec, None))
    with torch.device("meta"):
        if path is None:
            return load_model(spec, family, num_labels, weights="random", vocab_size=vocab_size)
        from .backbones import _AUTO_CLASSES

        config = transformers.AutoConfig.from_pretrained(path)
        if family in ("classification", "regression"):
            config.num_labels = num_labels
        return getattr(transformers, _AUTO_CLASSES[family]).from_config(config)


def adapt(model: nn.Module, backbone: str, family: str, method):
    """(adapted model, method, targets): ``method`` (an ``adapters.Method``, e.g. a checked config's ``rc.method``, or
    a method config mapping for ``build_method``) applied as a run applies it (targets / heads from the backbone)."""
    from .adapters import Method, build_method
    from .backbones import get_backbone
    from .build import adapt_model

    method = method if isinstance(method, Method) else build_method(method)
    adapted, targets, _heads = adapt_model(model, method, get_backbone(backbone), family)
    return adapted, method, targets


def module_groups(model: nn.Module, targets: Sequence[str]) -> list[ModuleGroup]:
    """Adapter parameters per target name (one row per name and shape)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers.pytorch_utils import Conv1D

    groups: OrderedDict[tuple, ModuleGroup] = OrderedDict()
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        target = next((t for t in targets if name == t or name.endswith("." + t)), name.rsplit(".", 1)[-1])
        base = module.get_base_layer()
        shape = tuple(base.weight.shape) if isinstance(base, Conv1D) else (base.in_features, base.out_features)
        base_ids = {id(p) for p in base.parameters()}
        each = sum(p.numel() for p in module.parameters() if p.requires_grad and id(p) not in base_ids)
        key = (target, shape, each)
        if key not in groups:
            groups[key] = ModuleGroup(target, shape, 0, each)
        groups[key].count += 1
    return list(groups.values())


def count(backbone: str, method, family: str | None = None, num_labels: int = 2, path: str | None = None):
    """(ParamCounts, module groups, method label, base total) of ``method`` (a Method or a method config mapping,
    as ``adapt`` takes it) on ``backbone`` (meta device)."""
    from .adapters import count_parameters
    from .backbones import get_backbone

    spec = get_backbone(backbone)
    family = family or ("causal_lm" if spec.is_decoder else "classification")
    model = meta_model(backbone, family, num_labels, path)
    base_total = sum(p.numel() for p in model.parameters())
    adapted, method, targets = adapt(model, backbone, family, method)
    return count_parameters(adapted), module_groups(adapted, targets), method.label, base_total


def table(backbones: Sequence[str] = TABLE_BACKBONES, methods=TABLE_METHODS) -> list[dict]:
    """One row per backbone: its shape, frozen size, and the adapter count of each method (causal LM, no head)."""
    from .adapters import count_parameters
    from .backbones import get_backbone

    rows = []
    for backbone in backbones:
        spec = get_backbone(backbone)
        family = "causal_lm" if spec.is_decoder else "classification"
        base = meta_model(backbone, family)
        row = {"backbone": backbone, "hub_id": spec.hub_id, "shape": _shape_label(base, spec),
               "base": sum(p.numel() for p in base.parameters())}
        for label, cfg in methods:
            adapted, _, _ = adapt(copy.deepcopy(base), backbone, family, cfg)
            row[label] = count_parameters(adapted).adapter
        rows.append(row)
    return rows


def table1(rows=TABLE1_ROWS, backbone: str = TABLE1_BACKBONE) -> list[dict]:
    """Table 1's rows on ``backbone``: exact adapter (what the paper reports), head and trainable counts."""
    out = []
    for label, cfg, paper, note in rows:
        counts, _, method_label, _ = count(backbone, cfg, "classification", 2)
        out.append({"label": method_label, "row": label, "config": cfg, "paper": paper, "note": note,
                    **counts.as_dict()})
    return out


def format_table1(rows: list[dict]) -> str:
    lines = [f"{TABLE1_BACKBONE}, classification (2 labels), meta device: the head (pooler + classifier) is counted "
             "apart, as the paper does", "",
             "| row | method | adapter (exact) | paper | head | trainable | what is counted |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        method = " ".join(f"{k if k == 'method' else 'method.' + k}={v}"
                          for k, v in {"method": r["config"]["name"], **r["config"]}.items() if k != "name")
        lines.append(f"| {r['label']} | {method} | {r['adapter']:,} | {r['paper']} | {r['head']:,} | "
                     f"{r['trainable']:,} | {r['note']} |")
    return "\n".join(lines)


def _shape_label(model: nn.Module, spec) -> str:
    c = model.config
    if spec.arch == "gpt2":
        return f"{c.n_layer} x {c.n_embd} / {c.n_inner or 4 * c.n_embd}"
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads * head_dim
    gqa = f", k/v {kv}" if kv != c.hidden_size else ""
    return f"{c.num_hidden_layers} x {c.hidden_size} / {c.intermediate_size}{gqa}"


def format_table(rows: list[dict], methods=TABLE_METHODS) -> str:
    labels = [label for label, _ in methods]
    lines = ["| backbone (layers x hidden / FFN) | frozen params | " + " | ".join(labels) + " |",
             "|---|---:|" + "---:|" * len(labels)]
    for row in rows:
        cells = " | ".join(f"{row[label]:,}" for label in labels)
        lines.append(f"| {row['backbone']} ({row['shape']}) | {row['base'] / 1e9:.2f}B | {cells} |")
    return "\n".join(lines)


def format_single(backbone: str, family: str, label: str, counts, groups: list[ModuleGroup], base_total: int) -> str:
    lines = [f"{backbone} | {label} | {family} | meta device (no weights)", "",
             f"{'module':<16} {'d_in x d_out':>15} {'matrices':>9} {'params each':>12} {'params':>14}"]
    for g in groups:
        lines.append(f"{g.target:<16} {f'{g.shape[0]} x {g.shape[1]}':>15} {g.count:>9,} {g.each:>12,} "
                     f"{g.count * g.each:>14,}")
    share = 100.0 * counts.trainable / max(counts.total, 1)
    lines += ["", f"adapter {counts.adapter:,}  head {counts.head:,}  trainable {counts.trainable:,}  "
                  f"total {counts.total:,}  (frozen base {base_total:,}; {share:.4f}% trainable)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcft_lab.params", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="the decoder-LLM count table (Markdown)")
    parser.add_argument("--table1", action="store_true", help="the paper's Table 1 rows on DeBERTaV3-base (Markdown)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for python -m dcft_lab.run")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers / PEFT deprecation notices
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")  # PEFT LoRA on GPT-2's Conv1D
    if args.table:
        print(format_table(table()))
        return 0
    if args.table1:
        print(format_table1(table1()))
        return 0
    from hydra.errors import HydraException

    from .backbones import get_backbone
    from .compose import compose_config
    from .config_schema import ConfigError, validate_method
    from .data.tasks import get_task

    try:
        cfg = compose_config(args.overrides)
        method = validate_method(cfg.method)
        spec = get_backbone(cfg.backbone.name)
        task = get_task(cfg.task.name)
        if spec.is_decoder and not any(o.startswith(("task=", "+task=")) for o in args.overrides):
            task = get_task("sft")  # a decoder without task=: the causal LM itself, no head
        family = spec.model_family(task.family)
        counts, groups, label, base_total = count(spec.name, method, family, task.head_size,
                                                  cfg.backbone.get("path"))
    except (ConfigError, ValueError, FileNotFoundError, OSError, HydraException) as err:
        print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print(format_single(spec.name, family, label, counts, groups, base_total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
