"""How fast each adapter's update ΔW leaves zero in the first optimizer steps: the mechanism behind DCFT's slow start.

For each row (a method / init with its lr and update scale) the script builds the run's model and data exactly as
`python -m dcft_lab.run` does (same config, seed, batches), then takes N AdamW steps with the run's optimizer
settings (module.build_optimizer: AdamW with the run's betas / eps / weight decay, its warmup-then-decay schedule;
the trainer's gradient clipping) and records, at a few steps, the relative size of the update averaged over the
adapted matrices, mean ||ΔW||_F / ||W||_F, plus the gradient norm of each adapter factor on the first batch. No
evaluation, nothing saved but the table.

    python scripts/update_growth.py --steps 60 --out results/table1_cpu/update_growth.md
    python scripts/update_growth.py --row "DCFT zero|method=dcft method.init=zero optim.lr=1e-2 method.alpha=64"

A row is "label|overrides" (space-separated Hydra overrides on top of --base).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

DEFAULT_BASE = "experiment=table1_cpu/mrpc seed=6 run.threads=1"
# The pilot's choices (results/table1_cpu/selection.json) for LoRA and the paper's init; the other inits at the
# paper init's lr and scale, so the rows differ in the init alone.
DEFAULT_ROWS = [
    "LoRA r=1 (lr 1e-3, scale 8)|method=lora method.r=1 optim.lr=1e-3 method.alpha=8",
    "DCFT d=8 official (lr 1e-2, scale 8)|method=dcft method.kernel_size=8 optim.lr=1e-2 method.alpha=64",
    "DCFT d=8 official (lr 1e-3, scale 8)|method=dcft method.kernel_size=8 optim.lr=1e-3 method.alpha=64",
    "DCFT d=8 zero (lr 1e-2, scale 8)|method=dcft method.kernel_size=8 method.init=zero optim.lr=1e-2 method.alpha=64",
    "DCFT d=8 lora (lr 1e-2, scale 8)|method=dcft method.kernel_size=8 method.init=lora optim.lr=1e-2 method.alpha=64",
    "DCFT d=8 orthonormal (lr 1e-2, scale 8)|method=dcft method.kernel_size=8 method.init=orthonormal optim.lr=1e-2 "
    "method.alpha=64",
]
RECORD_AT = (0, 1, 2, 5, 10, 20, 50, 100)


def adapted_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every adapter-wrapped linear layer (PEFT LoRA, DCFT)."""
    return [m for m in model.modules()
            if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer") and m.active_adapters]


@torch.no_grad()
def relative_update(model: torch.nn.Module) -> float:
    """mean over adapted layers of ||ΔW||_F / ||W||_F (ΔW as the layer's merge would add it, scale included)."""
    ratios = []
    for layer in adapted_layers(model):
        base = layer.get_base_layer().weight
        delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
        ratios.append(float(delta.norm() / base.norm()))
    if not ratios:
        raise ValueError("no adapted layers found; expected a LoRA or DCFT model")
    return sum(ratios) / len(ratios)


def factor_grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """Root-sum-square gradient norm of each adapter factor kind (LoRA A / B, DCFT A / B / C) over all layers."""
    sums: dict[str, float] = {}
    for name, param in model.named_parameters():
        kind = next((part for part in name.split(".") if part.startswith(("lora_", "dcft_"))), None)
        if param.grad is None or kind is None:
            continue
        kind = kind.replace("lora_", "LoRA ").replace("dcft_", "DCFT ")
        sums[kind] = sums.get(kind, 0.0) + float(param.grad.norm()) ** 2
    return {k: math.sqrt(v) for k, v in sorted(sums.items())}


def build(overrides: list[str]):
    """(model, method, train loader, optimizer, scheduler, gradient clip value) as a run with these overrides builds
    them."""
    from dcft_lab.backbones import get_backbone
    from dcft_lab.build import adapt_model, build_model, run_datamodule
    from dcft_lab.compose import compose_config
    from dcft_lab.config_schema import validate
    from dcft_lab.data.tasks import get_task
    from dcft_lab.module import build_optimizer

    rc = validate(compose_config(overrides))
    torch.manual_seed(rc.seed)
    spec, backbone, method = get_task(rc.task.name), get_backbone(rc.backbone.name), rc.method
    family = backbone.model_family(spec.family)
    model, tokenizer = build_model(rc, spec, backbone, family)
    model, _targets, _heads = adapt_model(model, method, backbone, family)
    data = run_datamodule(rc, spec, tokenizer, family)
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer, scheduler = build_optimizer(
        model, lr=rc.optim.lr, weight_decay=rc.optim.weight_decay, betas=rc.optim.betas, eps=rc.optim.eps,
        warmup_steps=rc.optim.warmup_steps, warmup_ratio=rc.optim.warmup_ratio,
        total_steps=len(loader) * int(rc.trainer["max_epochs"]), head_lr=rc.optim.head_lr,
        factor_lr_ratio=rc.optim.factor_lr_ratio, fast_factors=method.fast_factors)
    return model, method, loader, optimizer, scheduler, rc.trainer.get("gradient_clip_val")


def trace(overrides: list[str], steps: int) -> tuple[dict[int, float], dict[str, float]]:
    """({step: relative update}, factor gradient norms of the first batch) over the first ``steps`` steps."""
    model, method, loader, optimizer, scheduler, clip = build(overrides)
    model.train()
    sizes, grads = {0: relative_update(model)}, {}
    batches = iter(loader)
    for step in range(1, steps + 1):
        batch = next(batches)
        # the run's objective: task loss + the method's regularizer (DCFT's orthogonality term; 0 for LoRA)
        loss = model(**{k: v for k, v in batch.items() if k != "meta"}).loss + method.regularizer(model)
        loss.backward()
        if step == 1:
            grads = factor_grad_norms(model)
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step in RECORD_AT or step == steps:
            sizes[step] = relative_update(model)
    return sizes, grads


def markdown(rows: list[tuple[str, dict[int, float], dict[str, float]]], base: str, steps: int) -> str:
    at = sorted({s for _label, sizes, _g in rows for s in sizes})
    lines = ["# Update growth in the first optimizer steps", "",
             f"`python scripts/update_growth.py --steps {steps}` on `{base}`: mean over the adapted matrices of "
             "||ΔW||_F / ||W||_F (ΔW with its scale) after each number of AdamW steps, the runs' optimizer "
             "settings and batches.", "",
             "| row | " + " | ".join(f"step {s}" for s in at) + " |", "|---|" + "---|" * len(at)]
    for label, sizes, _grads in rows:
        lines.append(f"| {label} | " + " | ".join(f"{sizes[s]:.2e}" if s in sizes else "—" for s in at) + " |")
    lines += ["", "Gradient norm of each adapter factor at step 1 (root-sum-square over all adapted layers):", "",
              "| row | factor gradient norms |", "|---|---|"]
    for label, _sizes, grads in rows:
        lines.append(f"| {label} | " + ", ".join(f"{k} {v:.2e}" for k, v in grads.items()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="overrides every row shares")
    parser.add_argument("--row", action="append", help='"label|overrides" (repeatable; default: the study rows)')
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = parser.parse_args(argv)
    if args.steps < 1:
        print(f"error: --steps={args.steps}; expected an integer >= 1", file=sys.stderr)
        return 2
    from dcft_lab.loggers import quiet_libraries

    quiet_libraries(verbose=False)
    rows = []
    for row in args.row or DEFAULT_ROWS:
        if "|" not in row:
            print(f"error: --row {row!r}; expected 'label|overrides'", file=sys.stderr)
            return 2
        label, overrides = row.split("|", 1)
        started = time.perf_counter()
        sizes, grads = trace(args.base.split() + overrides.split(), args.steps)
        print(f"{label}: {', '.join(f'{s}: {v:.2e}' for s, v in sizes.items())} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)
        rows.append((label, sizes, grads))
    text = markdown(rows, args.base, args.steps)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
