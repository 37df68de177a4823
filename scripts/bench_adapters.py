#!/usr/bin/env python
"""Side-by-side speed and memory benchmark: DCFT against the frozen base layer, a materializing reference,
PEFT LoRA and PEFT LoKr, one adapted linear layer at a time (encoder shapes and the Llama-3-8B projections),
plus one full DeBERTaV3-base training step.

    python scripts/bench_adapters.py                        # full CPU run, float32 (about 10 minutes)
    python scripts/bench_adapters.py --write BENCHMARKS.md  # the same, and write the report (`make bench`)
    python scripts/bench_adapters.py --device cuda          # bfloat16 on a GPU (a few minutes)
    python scripts/bench_adapters.py --quick                # fewer repetitions, a small model for the full step
    python scripts/bench_adapters.py --smoke                # tiny shapes, seconds (run by tests/test_bench.py)
    python scripts/bench_adapters.py --shape-set llama3-8b  # only the Llama-3-8B layer shapes (classic: the first four)

Everything runs in one process. Within each repetition every variant is timed once, in a rotating order
(round-robin), and medians are reported, so slow phases of a shared machine hit all variants alike. Before any
timing, every variant's output, input gradient and adapter gradients are checked against the frozen base plus
its update ΔW materialized in float64 (for DCFT: with F.conv_transpose2d), so a wrong kernel is never timed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
from torch import nn

from dcft_lab.adapters import DCFTConfig, DCFTLinear, build_method  # importing registers DCFT with PEFT
from dcft_lab.backbones import get_backbone, load_model

# ---- what is run ------------------------------------------------------------------------------------------------

TARGET_SHAPES = [(768, 768), (768, 3072), (4096, 4096), (4096, 11008)]  # (d_in, d_out)
# Llama-3-8B's seven projections come in four shapes: q_proj / o_proj 4096 x 4096, k_proj / v_proj 4096 -> 1024
# (GQA: 8 key/value heads of 128), gate_proj / up_proj 4096 -> 14336, down_proj 14336 -> 4096.
LLAMA3_8B_SHAPES = [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)]
SHAPE_SETS = {"classic": TARGET_SHAPES, "llama3-8b": LLAMA3_8B_SHAPES,
              "all": TARGET_SHAPES + [s for s in LLAMA3_8B_SHAPES if s not in TARGET_SHAPES]}
SHAPE_ROLES = {(768, 768): "BERT-base / DeBERTaV3-base Q, K, V, O", (768, 3072): "base-size FFN in",
               (4096, 4096): "Llama-3-8B q_proj / o_proj (Llama-2-7B: q, k, v, o)",
               (4096, 11008): "Llama-2-7B gate_proj / up_proj",
               (4096, 1024): "Llama-3-8B k_proj / v_proj (GQA)", (4096, 14336): "Llama-3-8B gate_proj / up_proj",
               (14336, 4096): "Llama-3-8B down_proj"}


@dataclass(frozen=True)
class Schedule:
    """Timed repetitions per shape: all variants, the slow (materializing) ones, and untimed warm-up rounds."""

    reps: int
    slow_reps: int
    warmup: int


@dataclass
class ModelSettings:
    label: str
    overrides: dict  # changes to the deberta-v3-base config ({} = the full-size model)
    batch: int
    seq: int
    reps: int
    warmup: int


@dataclass
class Settings:
    mode: str  # "full" | "quick" | "smoke"
    device: torch.device
    dtype: torch.dtype
    tokens: int
    shapes: list
    schedules: dict  # (d_in, d_out) -> Schedule
    model: ModelSettings | None
    threads: int
    check_rows: int = 128  # rows of the output compared against the float64 reference


# Full CPU run: fewer repetitions where one forward+backward takes seconds (the whole run stays < ~10 min).
CPU_SCHEDULES = {(768, 768): Schedule(25, 25, 2), (768, 3072): Schedule(15, 15, 1),
                 (4096, 4096): Schedule(7, 4, 0), (4096, 11008): Schedule(5, 2, 0),
                 (4096, 1024): Schedule(9, 5, 1), (4096, 14336): Schedule(5, 2, 0), (14336, 4096): Schedule(5, 2, 0)}
QUICK_SCHEDULES = {(768, 768): Schedule(7, 7, 1), (768, 3072): Schedule(5, 5, 1),
                   (4096, 4096): Schedule(3, 2, 0), (4096, 11008): Schedule(2, 1, 0),
                   (4096, 1024): Schedule(3, 2, 0), (4096, 14336): Schedule(2, 1, 0), (14336, 4096): Schedule(2, 1, 0)}
CUDA_SCHEDULE = Schedule(50, 50, 5)
SMOKE_SHAPES = [(64, 64), (64, 192)]  # LoKr f=8 keeps a rank-1 w2 from 64 up
SMALL_MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                   vocab_size=8000)
TINY_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=512)

# Relative tolerance of the equality checks (max |got - want| / max |want|) and of merged vs unmerged outputs.
CHECK_TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float64: 1e-10}
MERGE_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float64: 1e-10}  # abs and rel, as assert_close
MIN_ADAPTER_SHARE = 0.05  # the update must move the output by >= 5% of its scale, else the check is vacuous

# ---- variants ---------------------------------------------------------------------------------------------------


class OneLinear(nn.Module):
    """A module holding one ``nn.Linear`` named ``linear``: what PEFT wraps in the single-layer benchmark."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x)


class MaterializedDCFT(nn.Module):
    """The paper's code path: ΔW = ConvT(B @ A; C, stride) rebuilt with F.conv_transpose2d at every call, then
    ``base(x) + (x @ ΔW) * scaling`` (as loralib / AdaLoRA-style code adds its update)."""

    def __init__(self, base: nn.Linear, B: torch.Tensor, A: torch.Tensor, C: torch.Tensor, stride: int,
                 scaling: float):
        super().__init__()
        self.base = base
        self.B, self.A, self.C = (nn.Parameter(t.detach().clone()) for t in (B, A, C))
        self.stride, self.scaling = stride, scaling

    def forward(self, x):
        delta = F.conv_transpose2d((self.B @ self.A)[None, None], self.C[None, None], stride=self.stride)[0, 0]
        return self.base(x) + (x @ delta) * self.scaling


@dataclass
class Variant:
    key: str
    label: str
    module: nn.Module
    params: dict  # short name -> trainable parameter of the adapter (empty for the base)
    # ΔW in nn.Linear layout (d_out, d_in) from (float64 copies of) ``params``: the independent reference
    delta: Callable[[dict], torch.Tensor] | None = None
    slow: bool = False  # materializes a d_in x d_out matrix per step: fewer repetitions at the largest shape
    inference: bool = False  # timed as forward only under torch.no_grad()
    scale_param: str | None = None  # ΔW is linear in this parameter (used to set its magnitude)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())


def dcft_delta(stride: int, scaling: float) -> Callable[[dict], torch.Tensor]:
    def delta(p):
        update = F.conv_transpose2d((p["B"] @ p["A"])[None, None], p["C"][None, None], stride=stride)[0, 0]
        return (update * scaling).t()

    return delta


def lora_delta(scaling: float) -> Callable[[dict], torch.Tensor]:
    return lambda p: scaling * (p["B"] @ p["A"])


def lokr_delta(scaling: float, shape: tuple) -> Callable[[dict], torch.Tensor]:
    return lambda p: (torch.kron(p["w1"], p["w2_a"] @ p["w2_b"]) * scaling).reshape(shape)


def _peft_layer(base: nn.Linear, config: peft.PeftConfig, dtype: torch.dtype):
    """(PeftModel around OneLinear(base), its tuner layer); adapter weights in the benchmark dtype."""
    model = peft.get_peft_model(OneLinear(base), config, autocast_adapter_dtype=False)
    model.to(device=base.weight.device, dtype=dtype)
    return model, model.base_model.model.linear


def dcft_variant(key: str, base: nn.Linear, kernel_size: int, dtype: torch.dtype) -> Variant:
    model, layer = _peft_layer(base, DCFTConfig(kernel_size=kernel_size, rank=1, target_modules=["linear"]), dtype)
    params = {"A": layer.dcft_A["default"], "B": layer.dcft_B["default"], "C": layer.dcft_C["default"]}
    return Variant(key, f"DCFT d={kernel_size} k=1 (ours)", model, params,
                   dcft_delta(kernel_size, layer.dcft_scaling["default"]), scale_param="C")


def reference_variant(source: Variant, base: nn.Linear, kernel_size: int) -> Variant:
    """The materializing reference with the same B, A, C as ``source`` (a DCFT variant)."""
    layer = source.module.base_model.model.linear
    module = MaterializedDCFT(base, source.params["B"], source.params["A"], source.params["C"], kernel_size,
                              layer.dcft_scaling["default"])
    params = {"A": module.A, "B": module.B, "C": module.C}
    return Variant(f"ref_d{kernel_size}", f"DCFT d={kernel_size}, ΔW via conv_transpose2d (paper's path)", module,
                   params, dcft_delta(kernel_size, module.scaling), slow=True, scale_param="C")


def lora_variant(base: nn.Linear, r: int, dtype: torch.dtype) -> Variant:
    model, layer = _peft_layer(base, peft.LoraConfig(r=r, lora_alpha=16, target_modules=["linear"]), dtype)
    params = {"A": layer.lora_A["default"].weight, "B": layer.lora_B["default"].weight}
    return Variant(f"lora_r{r}", f"PEFT LoRA r={r}", model, params, lora_delta(layer.scaling["default"]),
                   scale_param="B")


def lokr_variant(base: nn.Linear, dtype: torch.dtype) -> Variant:
    # r=1 with decompose_factor=8 gives w1: 8 x 8, w2 = w2_a (d_out/8 x 1) @ w2_b (1 x d_in/8): exactly as many
    # parameters as DCFT d=8 k=1 (64 + d_in/8 + d_out/8), the same Kronecker family with the factors swapped.
    config = peft.LoKrConfig(r=1, alpha=1, decompose_factor=8, target_modules=["linear"])
    model, layer = _peft_layer(base, config, dtype)
    params = {"w1": layer.lokr_w1["default"], "w2_a": layer.lokr_w2_a["default"], "w2_b": layer.lokr_w2_b["default"]}
    return Variant("lokr", "PEFT LoKr r=1 f=8", model, params,
                   lokr_delta(layer.scaling["default"], tuple(base.weight.shape)), slow=True, scale_param="w1")


@torch.no_grad()
def randomize(variant: Variant, weight: torch.Tensor, generator: torch.Generator, share: float = 0.5) -> None:
    """Non-trivial adapter weights (LoRA / LoKr start from ΔW = 0), scaled so ||ΔW|| = share * ||W||."""
    for p in variant.params.values():
        p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
    delta = variant.delta({k: v.double() for k, v in variant.params.items()})
    variant.params[variant.scale_param].mul_(share * weight.double().norm() / delta.norm())


def build_layer_variants(base: nn.Linear, dtype: torch.dtype, generator: torch.Generator) -> list:
    """Every variant of one shape; all share the frozen ``base`` except the merged one, which owns a copy."""
    base.requires_grad_(False)
    variants = [Variant("base", "frozen nn.Linear (base)", base, {})]
    dcft2 = dcft_variant("dcft_d2", base, 2, dtype)
    dcft8 = dcft_variant("dcft_d8", base, 8, dtype)
    variants += [dcft2, dcft8]
    for v in (dcft2, dcft8):
        randomize(v, base.weight, generator)
    variants.append(reference_variant(dcft8, base, 8))
    for v in (lora_variant(base, 1, dtype), lora_variant(base, 8, dtype), lokr_variant(base, dtype)):
        randomize(v, base.weight, generator)
        variants.append(v)
    # Inference: the frozen base, DCFT d=8 merged into a copy of the base weight, and unmerged (for reference).
    merged = dcft_variant("dcft_d8_merged", copy.deepcopy(base), 8, dtype)
    with torch.no_grad():
        for name, p in merged.params.items():
            p.copy_(dcft8.params[name])
    merged.module.merge_adapter()
    merged.module.eval()
    variants += [
        Variant("base_infer", "frozen nn.Linear (base), forward only", base, {}, inference=True),
        dataclasses.replace(merged, label="DCFT d=8 merged (merge_adapter), forward only", inference=True),
        dataclasses.replace(dcft8, key="dcft_d8_infer", label="DCFT d=8 unmerged, forward only", inference=True),
    ]
    return variants


# ---- equality checks --------------------------------------------------------------------------------------------


class CheckError(AssertionError):
    """A benchmarked variant does not compute what its reference computes."""


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (NaN-aware: NaN compares as an error)."""
    err = (got.double() - want.double()).abs().max().item()
    return err / max(want.double().abs().max().item(), 1e-300) if err == err else float("inf")


def check_close(what: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> float:
    if got is None or tuple(got.shape) != tuple(want.shape):
        raise CheckError(f"{what}: got shape {None if got is None else tuple(got.shape)}, want {tuple(want.shape)}")
    err = relative_error(got, want)
    if not err <= tol:
        raise CheckError(f"{what}: max |got - want| / max |want| = {err:.3g} exceeds {tol:.0e}")
    return err


def check_rows(n: int, count: int) -> torch.Tensor:
    """``count`` token rows spread over all n (first and last included)."""
    return torch.linspace(0, n - 1, min(n, count)).round().long().unique()


def check_training_variant(variant: Variant, base: nn.Linear, x: torch.Tensor, rows: torch.Tensor,
                           generator: torch.Generator) -> float:
    """Forward + backward of the variant at full size, compared on ``rows`` with a float64 reference.

    The upstream gradient is zero outside ``rows``, so the adapter gradients depend on those rows only and the
    reference needs no full-size float64 product. Returns the largest relative error; raises CheckError.
    """
    tol = CHECK_TOL[x.dtype]
    x_rows = x.detach()[rows].double().requires_grad_()
    p64 = {k: v.detach().double().requires_grad_() for k, v in variant.params.items()}
    weight = base.weight.detach().double()
    bias = None if base.bias is None else base.bias.detach().double()
    delta = variant.delta(p64) if variant.delta else None
    y_ref = F.linear(x_rows, weight if delta is None else weight + delta, bias)
    g_rows = torch.randn(y_ref.shape, generator=generator, dtype=torch.float64).to(y_ref.device)
    ref_grads = torch.autograd.grad(y_ref, [x_rows, *p64.values()], g_rows)
    if delta is not None:
        share = relative_error(y_ref.detach(), F.linear(x_rows.detach(), weight, bias))
        if share < MIN_ADAPTER_SHARE:
            raise CheckError(f"{variant.key}: the update moves the output by only {share:.2g}; check would be vacuous")

    x_run = x.detach().clone().requires_grad_()
    for p in variant.params.values():
        p.grad = None
    y = variant.module(x_run)
    g = torch.zeros_like(y)
    g[rows] = g_rows.to(y.dtype)
    y.backward(g)
    errors = [check_close(f"{variant.key} output", y.detach()[rows], y_ref.detach(), tol),
              check_close(f"{variant.key} input gradient", x_run.grad[rows], ref_grads[0], tol)]
    others = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    others[rows] = False
    if others.any() and x_run.grad[others].abs().max().item() != 0:
        raise CheckError(f"{variant.key} input gradient: non-zero on rows whose upstream gradient is zero")
    for (name, p), ref in zip(variant.params.items(), ref_grads[1:]):
        errors.append(check_close(f"{variant.key} gradient of {name}", p.grad, ref, tol))
        p.grad = None
    return max(errors)


def check_inference_variant(variant: Variant, base: nn.Linear, x: torch.Tensor, rows: torch.Tensor) -> float:
    x_rows = x.detach()[rows].double()
    weight = base.weight.detach().double()
    bias = None if base.bias is None else base.bias.detach().double()
    params = {k: v.detach().double() for k, v in variant.params.items()}
    y_ref = F.linear(x_rows, weight if variant.delta is None else weight + variant.delta(params), bias)
    with torch.no_grad():
        y = variant.module(x)
    return check_close(f"{variant.key} output", y[rows], y_ref, CHECK_TOL[x.dtype])


def check_merged_equals_unmerged(merged: torch.Tensor, unmerged: torch.Tensor, tol: float) -> float:
    """|merged - unmerged| <= tol + tol * |unmerged| elementwise (torch.testing.assert_close's rule)."""
    diff = (merged.double() - unmerged.double()).abs()
    bound = tol + tol * unmerged.double().abs()
    if not bool((diff <= bound).all()):
        raise CheckError(f"merged vs unmerged DCFT output: max |difference| = {diff.max().item():.3g}, "
                         f"exceeds {tol:.0e} (abs) + {tol:.0e} (rel)")
    return diff.max().item()


def uses_fused_kernel(output: torch.Tensor) -> bool:
    """Whether ``output`` came straight from DCFT's one-node base + adapter function (behind a reshape)."""
    node = output.grad_fn
    if node is not None and type(node).__name__ in ("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"):
        node = node.next_functions[0][0]
    return node is not None and "KronLinearFunction" in type(node).__name__


# ---- measuring --------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_peak_bytes(run: Callable[[], None]) -> int:
    """Peak of bytes handed out by PyTorch's CPU allocator during ``run``, above the level at its start,
    replayed from torch.profiler's allocation / free events."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        run()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    memory = [e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    memory.sort(key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    live = peak = 0
    for event in memory:
        live += event["args"]["Bytes"]
        peak = max(peak, live)
    return peak


def measure_memory(run: Callable[[], None], existing: list, device: torch.device) -> tuple:
    """(peak extra bytes during ``run``, bytes of new tensors saved for backward). Storages of ``existing``
    tensors (weights, input) are not counted as saved."""
    known = {t.untyped_storage().data_ptr() for t in existing}
    saved: dict = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in known:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    gc.collect()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
            run()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - start
        else:
            peak = _cpu_peak_bytes(run)
    return peak, sum(saved.values())


def time_round_robin(tasks: dict, reps: dict, device: torch.device) -> dict:
    """{name: [seconds]}: ``tasks`` maps name -> (prepare, run); only ``run`` is timed. Each repetition times
    every task still due once, starting at a rotating position, so no variant always runs first or last."""
    names = list(tasks)
    times: dict = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one timed call would be charged to whichever variant ran
    try:
        for rep in range(max(reps.values(), default=0)):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                if rep >= reps[name]:
                    continue
                prepare, run = tasks[name]
                prepare()
                _sync(device)
                start = time.perf_counter()
                run()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def summarize(samples: list) -> dict:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) >= 2 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "min": ordered[0], "p25": q[0], "p75": q[2], "n": len(ordered)}


def scheduler_probe(threads: int, reps: int = 21) -> tuple:
    """(ms with ``threads``, ms with 1 thread): median time of a tiny matmul (4096 x 8 @ 8 x 8). On a quiet machine
    both are microseconds; when other processes keep the cores busy, every multi-threaded operation can wait for a
    descheduled thread, whatever its size, and timings then count operations more than work."""
    a, b = torch.randn(4096, 8), torch.randn(8, 8)
    result = []
    for n_threads in (threads, 1):
        torch.set_num_threads(n_threads)
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            samples.append(time.perf_counter() - start)
        result.append(statistics.median(samples) * 1e3)
    torch.set_num_threads(threads)
    return tuple(result)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- one adapted layer ------------------------------------------------------------------------------------------


def bench_layer(d_in: int, d_out: int, settings: Settings, schedule: Schedule) -> dict:
    device, dtype = settings.device, settings.dtype
    generator = torch.Generator().manual_seed(d_in * 100_003 + d_out)
    torch.manual_seed(d_in * 7 + d_out)
    base = nn.Linear(d_in, d_out).to(device=device, dtype=dtype)
    variants = build_layer_variants(base, dtype, generator)
    by_key = {v.key: v for v in variants}
    x = torch.randn(settings.tokens, d_in, generator=generator).to(device=device, dtype=dtype).requires_grad_()
    rows = check_rows(settings.tokens, settings.check_rows).to(device)

    _log(f"[{d_in}x{d_out}] checking {len(variants)} variants against float64 references")
    checks = {}
    for v in variants:
        if v.inference:
            checks[v.key] = check_inference_variant(v, base, x, rows)
        else:
            checks[v.key] = check_training_variant(v, base, x, rows, generator)
    with torch.no_grad():
        merged_out, unmerged_out = by_key["dcft_d8_merged"].module(x), by_key["dcft_d8_infer"].module(x)
    merge_diff = check_merged_equals_unmerged(merged_out, unmerged_out, MERGE_TOL[dtype])
    del merged_out, unmerged_out
    fused = {v.key: uses_fused_kernel(v.module(x[:8])) for v in variants if v.key in ("dcft_d2", "dcft_d8")}

    grad_out = torch.randn(settings.tokens, d_out, generator=generator).to(device=device, dtype=dtype)

    def reset(v: Variant) -> Callable[[], None]:
        def prepare():
            x.grad = None
            for p in v.params.values():
                p.grad = None

        return prepare

    def train_step(v: Variant) -> Callable[[], None]:
        def run():
            v.module(x).backward(grad_out)

        return run

    def infer_step(v: Variant) -> Callable[[], None]:
        def run():
            with torch.no_grad():
                v.module(x)

        return run

    tasks = {v.key: (reset(v), infer_step(v) if v.inference else train_step(v)) for v in variants}

    _log(f"[{d_in}x{d_out}] measuring memory")
    memory = {}
    for v in variants:
        if v.inference:  # no target on inference memory: skip the extra forward passes
            memory[v.key] = (0, 0)
            continue
        reset(v)()
        existing = [x, grad_out, *base.parameters(), *v.module.parameters()]
        memory[v.key] = measure_memory(tasks[v.key][1], existing, device)
    reset(variants[0])()

    if schedule.warmup:
        time_round_robin(tasks, {v.key: schedule.warmup for v in variants}, device)
    reps = {v.key: schedule.slow_reps if v.slow else schedule.reps for v in variants}
    _log(f"[{d_in}x{d_out}] timing: {schedule.reps} repetitions ({schedule.slow_reps} for materializing variants)")
    times = time_round_robin(tasks, reps, device)
    result = {
        "shape": (d_in, d_out), "tokens": settings.tokens, "schedule": dataclasses.asdict(schedule),
        "variants": [{"key": v.key, "label": v.label, "params": v.n_params, "inference": v.inference,
                      "time": summarize(times[v.key]), "peak_bytes": memory[v.key][0],
                      "saved_bytes": memory[v.key][1], "check_error": checks[v.key]} for v in variants],
        "merge_max_abs_diff": merge_diff, "fused": fused,
    }
    del variants, by_key, tasks, x, grad_out, base
    gc.collect()
    return result


# ---- one full training step -------------------------------------------------------------------------------------


def bench_model(settings: Settings) -> dict:
    ms, device = settings.model, settings.device
    spec = get_backbone("deberta-v3-base")
    spec = dataclasses.replace(spec, config={**spec.config, **ms.overrides})
    _log(f"[model] building {ms.label} from its config (random weights)")
    torch.manual_seed(0)
    base = load_model(spec, "classification", weights="random")
    targets, heads = spec.target_modules("all"), spec.head_modules("classification")
    methods = {"dcft_d8": build_method({"name": "dcft", "kernel_size": 8}),
               "lora_r1": build_method({"name": "lora", "r": 1}),
               "head_only": build_method({"name": "none"})}
    generator = torch.Generator().manual_seed(0)
    vocab = base.config.vocab_size
    batch = {"input_ids": torch.randint(0, vocab, (ms.batch, ms.seq), generator=generator).to(device),
             "attention_mask": torch.ones(ms.batch, ms.seq, dtype=torch.long, device=device),
             "labels": torch.randint(0, 2, (ms.batch,), generator=generator).to(device)}
    runs, info = {}, {}
    for key, method in methods.items():
        model = method.build(copy.deepcopy(base), target_modules=targets, modules_to_save=heads, task_type="SEQ_CLS")
        model.to(device=device, dtype=settings.dtype).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        dcft_layers = [m for m in model.modules() if isinstance(m, DCFTLinear)]
        fused_hits: list = []
        hooks = [m.register_forward_hook(lambda mod, inp, out, hits=fused_hits: hits.append(uses_fused_kernel(out)))
                 for m in dcft_layers]

        def step(model=model, method=method, optimizer=optimizer):
            loss = model(**batch).loss + method.regularizer(model)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        loss = step()  # also the first (untimed) step: AdamW state is created here
        for h in hooks:
            h.remove()
        if not torch.isfinite(loss):
            raise CheckError(f"[model] {key}: non-finite training loss {loss.item()}")
        info[key] = {"label": method.label, "trainable": sum(p.numel() for p in trainable),
                     "dcft_layers": len(dcft_layers), "dcft_calls": len(fused_hits), "fused_calls": sum(fused_hits)}
        runs[key] = (lambda: None, step)
    del base
    gc.collect()
    if ms.warmup:
        time_round_robin(runs, {k: ms.warmup for k in runs}, device)
    _log(f"[model] timing: {ms.reps} training steps per method")
    times = time_round_robin(runs, {k: ms.reps for k in runs}, device)
    return {"label": ms.label, "batch": ms.batch, "seq": ms.seq, "reps": ms.reps, "warmup": ms.warmup,
            "methods": {k: {**info[k], "time": summarize(times[k])} for k in runs}}


# ---- targets ----------------------------------------------------------------------------------------------------


def _median(layer: dict, key: str) -> float:
    return next(v for v in layer["variants"] if v["key"] == key)["time"]["median"]


def _peak(layer: dict, key: str) -> int:
    return next(v for v in layer["variants"] if v["key"] == key)["peak_bytes"]


def _shape(layer: dict) -> str:
    return "{}x{}".format(*layer["shape"])


def evaluate_targets(results: dict) -> list:
    """[(target, measured, PASS | FAIL | SKIP)] for the six targets of the issue."""
    layers = {tuple(layer["shape"]): layer for layer in results["layers"]}
    out = []

    big = [layers[s] for s in ((4096, 4096), (4096, 11008)) if s in layers]
    ratios = [(_shape(L), _median(L, "dcft_d8") / _median(L, "base")) for L in big]
    out.append(("DCFT d=8 forward+backward <= 1.05 x frozen base at 4096x4096 and 4096x11008",
                "; ".join(f"{s}: {r:.3f}x" for s, r in ratios) or "shapes not run",
                "SKIP" if len(big) < 2 else ("PASS" if all(r <= 1.05 for _, r in ratios) else "FAIL")))

    vs_lora = [(f"{_shape(L)} d={d}", _median(L, f"dcft_d{d}") / _median(L, "lora_r1"))
               for L in results["layers"] for d in (2, 8)]
    out.append(("DCFT (d=2 and d=8) no slower than PEFT LoRA r=1 at every shape (time ratio <= 1)",
                "; ".join(f"{s}: {r:.3f}x" for s, r in vs_lora),
                "PASS" if all(r <= 1.0 for _, r in vs_lora) else "FAIL"))

    if (4096, 4096) in layers:
        L = layers[(4096, 4096)]
        ours, ref = _median(L, "dcft_d8") - _median(L, "base"), _median(L, "ref_d8") - _median(L, "base")
        out.append(("DCFT d=8 overhead over frozen base <= 1/5 of the materializing reference's, 4096x4096",
                    f"DCFT {ours * 1e3:+.1f} ms, reference {ref * 1e3:+.1f} ms (ratio {ours / ref:.3f})",
                    "PASS" if ours <= ref / 5 else "FAIL"))
    else:
        out.append(("DCFT d=8 overhead over frozen base <= 1/5 of the materializing reference's, 4096x4096",
                    "shape not run", "SKIP"))

    mem = [(f"{_shape(L)} d={d}", _peak(L, f"dcft_d{d}") - _peak(L, "base"), _peak(L, "lora_r1") - _peak(L, "base"))
           for L in results["layers"] for d in (2, 8)]
    out.append(("DCFT extra peak memory over frozen base <= PEFT LoRA r=1's (every shape, d=2 and d=8)",
                "; ".join(f"{s}: {a / 2**20:.2f} vs {b / 2**20:.2f} MiB" for s, a, b in mem),
                "PASS" if all(a <= b for _, a, b in mem) else "FAIL"))

    inf = [(_shape(L), _median(L, "dcft_d8_merged") / _median(L, "base_infer"), L["merge_max_abs_diff"])
           for L in results["layers"]]
    out.append(("Merged DCFT inference time = base (median ratio <= 1.03) and merged == unmerged outputs "
                f"(|diff| <= {MERGE_TOL[results['dtype_obj']]:.0e} abs + rel)",
                "; ".join(f"{s}: {r:.3f}x, max |diff| {d:.2g}" for s, r, d in inf),
                "PASS" if all(r <= 1.03 for _, r, _ in inf) else "FAIL"))

    if results.get("model"):
        m = results["model"]["methods"]
        ratio = m["dcft_d8"]["time"]["median"] / m["lora_r1"]["time"]["median"]
        out.append(("Full training step with DCFT d=8 (all six matrices) <= 1.10 x LoRA r=1's",
                    f"{ratio:.3f}x ({results['model']['label']})", "PASS" if ratio <= 1.10 else "FAIL"))
    else:
        out.append(("Full training step with DCFT d=8 (all six matrices) <= 1.10 x LoRA r=1's", "not run", "SKIP"))
    return out


# ---- report -----------------------------------------------------------------------------------------------------


def machine_info(settings: Settings) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__, "peft": peft.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    if settings.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(settings.device)
    return info


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.2f}"


def format_shape_summary(results: dict) -> list:
    """One row per layer shape: forward+backward median time of DCFT d=8 / d=2 and PEFT LoRA r=1 / r=8 relative to the
    frozen base, DCFT d=8 relative to LoRA r=1 and r=8, and the trainable parameters of each."""
    lines = ["### Per shape: DCFT next to LoRA r=1 / r=8 (training, median time ratios)", "",
             "| Shape (d_in x d_out) | Layer | DCFT d=8 x base | DCFT d=2 x base | LoRA r=1 x base | LoRA r=8 x base | "
             "DCFT d=8 / LoRA r=1 | DCFT d=8 / LoRA r=8 | Params DCFT d=8 / d=2 / LoRA r=1 / r=8 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for layer in results["layers"]:
        rows = {v["key"]: v for v in layer["variants"]}
        if not all(k in rows for k in ("base", "dcft_d8", "dcft_d2", "lora_r1", "lora_r8")):
            continue
        t = {k: rows[k]["time"]["median"] for k in ("base", "dcft_d8", "dcft_d2", "lora_r1", "lora_r8")}
        n = " / ".join(f"{rows[k]['params']:,}" for k in ("dcft_d8", "dcft_d2", "lora_r1", "lora_r8"))
        lines.append(f"| {_shape(layer)} | {SHAPE_ROLES.get(tuple(layer['shape']), '')} | "
                     f"{t['dcft_d8'] / t['base']:.3f} | {t['dcft_d2'] / t['base']:.3f} | "
                     f"{t['lora_r1'] / t['base']:.3f} | {t['lora_r8'] / t['base']:.3f} | "
                     f"{t['dcft_d8'] / t['lora_r1']:.3f} | {t['dcft_d8'] / t['lora_r8']:.3f} | {n} |")
    return lines


def format_report(results: dict, targets: list) -> str:
    s = results["settings"]
    m = results["machine"]
    lines = [
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']}  ",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']}, peft {m['peft']}, python {m['python']}, {m['threads']} intra-op threads  ",
        f"Device: {s['device']}, dtype {s['dtype']}, {s['tokens']:,} tokens per layer call; "
        f"mode: {s['mode']}; load average (1 min) at start / end: {results['load'][0]} / {results['load'][1]}  ",
        "Scheduler probe (median of a tiny 4096 x 8 @ 8 x 8 matmul; see below) at start / end: "
        + " / ".join(f"{many:.3f} ms with {m['threads']} threads, {one:.3f} ms with 1"
                     for many, one in results["probe"]) + "  ",
        f"Wall time of the whole run: {results['wall_s']:.0f} s",
        "",
        "### Targets",
        "",
        "| Target | Measured | Result |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {measured} | **{status}** |" for t, measured, status in targets]
    lines += ["", *format_shape_summary(results)]
    for layer in results["layers"]:
        d_in, d_out = layer["shape"]
        sch = layer["schedule"]
        base = next(v for v in layer["variants"] if v["key"] == "base")
        base_inf = next(v for v in layer["variants"] if v["key"] == "base_infer")
        lines += [
            "",
            f"### One linear layer, d_in x d_out = {d_in} x {d_out}"
            + (f" ({SHAPE_ROLES[(d_in, d_out)]})" if (d_in, d_out) in SHAPE_ROLES else ""),
            "",
            f"{layer['tokens']:,} tokens. Timed repetitions per variant: {sch['reps']} "
            f"({sch['slow_reps']} for the materializing reference and LoKr), round-robin, after one checking run, "
            f"one memory run and {sch['warmup']} warm-up round(s). DCFT used the fused one-node kernel: "
            + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in layer["fused"].items()) + ".",
            "",
            "Training (forward + backward):",
            "",
            "| Variant | Trainable params | Median ms | x base | Overhead ms | IQR ms | Extra peak MiB | "
            "Extra saved MiB | Check: max rel. error |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for v in layer["variants"]:
            if v["inference"]:
                continue
            t = v["time"]
            lines.append(
                f"| {v['label']} | {v['params']:,} | {_ms(t['median'])} | {t['median'] / base['time']['median']:.3f} | "
                f"{_ms(t['median'] - base['time']['median'])} | {_ms(t['p25'])}-{_ms(t['p75'])} | "
                f"{_mib(v['peak_bytes'] - base['peak_bytes'])} | {_mib(v['saved_bytes'] - base['saved_bytes'])} | "
                f"{v['check_error']:.1e} |")
        lines.append(f"\nFrozen base alone: peak {_mib(base['peak_bytes'])} MiB above the start "
                     f"(its output and input gradient), {_mib(base['saved_bytes'])} MiB newly saved for backward.")
        lines += [
            "",
            "Inference (forward only, torch.no_grad):",
            "",
            "| Variant | Median ms | x base | IQR ms | Check: max rel. error |",
            "|---|---:|---:|---:|---:|",
        ]
        for v in layer["variants"]:
            if not v["inference"]:
                continue
            t = v["time"]
            lines.append(f"| {v['label']} | {_ms(t['median'])} | {t['median'] / base_inf['time']['median']:.3f} | "
                         f"{_ms(t['p25'])}-{_ms(t['p75'])} | {v['check_error']:.1e} |")
        lines.append(f"\nMerged vs unmerged output: max |difference| {layer['merge_max_abs_diff']:.2g}.")
    if results.get("model"):
        mr = results["model"]
        lora = mr["methods"]["lora_r1"]["time"]["median"]
        lines += [
            "",
            f"### Full training step: {mr['label']}",
            "",
            f"Batch {mr['batch']} x sequence {mr['seq']}; forward + backward + AdamW step (+ the method's "
            f"regularizer); {mr['reps']} timed steps per method, round-robin, after one untimed checking step and "
            f"{mr['warmup']} warm-up round(s).",
            "",
            "| Method | Trainable params | DCFT layers, calls per step (fused) | Median s | x LoRA r=1 | IQR s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for v in mr["methods"].values():
            t = v["time"]
            layers = f"{v['dcft_layers']}, {v['dcft_calls']} ({v['fused_calls']})" if v["dcft_layers"] else "-"
            lines.append(f"| {v['label']} | {v['trainable']:,} | {layers} | {t['median']:.3f} | "
                         f"{t['median'] / lora:.3f} | {t['p25']:.3f}-{t['p75']:.3f} |")
    return "\n".join(lines) + "\n"


DOC_HEAD = """# Benchmarks: DCFT adapters against the frozen base layer, a materializing reference, LoRA and LoKr

This file is written by `python scripts/bench_adapters.py --write BENCHMARKS.md` (`make bench`); the numbers
below come from that run, unedited. Rerun it to refresh them; `--device cuda` runs the same in bfloat16 on a GPU.

## What is measured

* **One adapted linear layer** at each shape (d_in x d_out): the encoder shapes 768 x 768, 768 x 3072, 4096 x 4096,
  4096 x 11008 and the Llama-3-8B projections 4096 x 1024 (k_proj / v_proj, GQA), 4096 x 14336 (gate / up),
  14336 x 4096 (down); 4,096 tokens, in one process. Variants: the frozen
  `nn.Linear` alone (its input requires grad, so backward computes the input gradient as inside a network);
  DCFT d=2 and d=8, k=1, through `peft.get_peft_model` (the code path training uses); the same DCFT d=8 with
  ΔW rebuilt by `F.conv_transpose2d` at every call and applied as `x @ ΔW` (the paper's code path); PEFT LoRA
  r=1 and r=8; PEFT LoKr r=1, decompose_factor=8 (w1: 8 x 8, w2 = w2_a w2_b of rank 1: exactly DCFT d=8's
  parameter count). Inference: the frozen base, DCFT d=8 merged with `merge_adapter()`, and unmerged, forward
  only under `torch.no_grad()`.
* **Timing**: wall time of forward + backward (training) or forward (inference) of one call, gradients reset
  before each call outside the timed region, Python's garbage collector paused while timing. Within each
  repetition every variant runs once, in an order rotated by one each repetition (round-robin), so the shared
  machine's slow phases fall on all variants alike; the tables give the median and the interquartile range
  (IQR). "x base" is median / median of the frozen base; "Overhead" is the difference of medians.
* **Load**: the header gives the load average and a scheduler probe, the median time of a tiny 4096 x 8 @ 8 x 8
  matmul with the benchmark's thread count and with one thread. On a quiet machine both take microseconds. When
  other processes keep the cores busy, every multi-threaded operation can wait a scheduler time slice for a
  descheduled thread, whatever its size; the probe then takes milliseconds, and the timings count operations (an
  adapter adds several small ones to the base layer's one or two) more than work. `--threads 1` avoids that
  effect, at the price of a slower base layer.
* **Equality checks first** (the run stops on any failure, so no wrong kernel is timed): each variant runs
  forward + backward once at full size with an upstream gradient that is zero except on 128 token rows spread
  over the batch; its output, input gradient and adapter-parameter gradients on those rows are compared with
  the frozen base plus the update ΔW materialized in float64 from the variant's own parameters (DCFT: with
  `F.conv_transpose2d`; LoRA: B A; LoKr: kron(w1, w2_a w2_b)), with a relative tolerance of 1e-4 in float32,
  5e-2 in bfloat16 (max |error| / max |reference|). The adapter weights are random and scaled so that
  ||ΔW|| = 0.5 ||W||, and the check refuses to run if the update would change the output by less than 5%. The
  merged layer's output must equal the unmerged adapter's within 1e-5 in float32, 3e-2 in bfloat16 (absolute +
  relative, as `torch.testing.assert_close`).
* **Peak memory on CPU** ("Extra peak MiB"): the highest number of bytes PyTorch's CPU allocator had handed out
  at any moment during one forward + backward, above the number at its start (the weights, the input and the
  upstream gradient exist before and are not counted), replayed from `torch.profiler`'s allocation and free
  events (`profile_memory=True`). It counts every tensor the step creates: output, tensors saved for backward,
  temporaries, gradients. It does not count memory outside PyTorch's allocator (MKL / oneDNN scratch space) or
  the process's resident size (malloc may keep or return freed pages). "Extra" is the variant's peak minus the
  frozen base's. "Extra saved MiB" is a second view: bytes of new tensors the autograd graph kept for backward
  (via `torch.autograd.graph.saved_tensors_hooks`, each storage once, weights and input excluded), minus the
  base's; in a deep network these are what add up across layers. On CUDA the peak is
  `torch.cuda.max_memory_allocated` minus the allocation at the start.
* **Full training step**: a DeBERTaV3-base-sized model built from its config (random weights), batch 8 x
  sequence 128, forward + backward + `AdamW.step()`, built through `dcft_lab.adapters.build_method` as training
  does: DCFT d=8 on all six matrix types (Q, K, V, O, FFN in, FFN out) with its orthogonal regularizer, LoRA r=1
  on the same matrices, and head only; the classifier and pooler are trained in all three.

## Results
"""

DOC_TAIL = """
## Why DCFT costs so little

With stride = kernel size, ΔW = kron(B A, C), and `x @ ΔW` is three small contractions per token (d_in -> k*d
-> k*d -> d_out): O(n k (d_in + d_out + d²)) work, never the d_in x d_out matrix. On a CPU that arithmetic costs
less than creating one new (n, d_out) or (n, d_in) tensor (its pages must be faulted in) or one more pass over
such a tensor. So `DCFTLinear.forward` runs base layer and adapter as one autograd node (`_KronLinearFunction` in
`src/dcft_lab/adapters/dcft/kernels.py`, reached through `kernels.dcft_delta`): forward writes bias + adapter output into the output buffer and the base
GEMM accumulates onto it (`addmm_` with beta = 1, the way `F.linear` adds its bias); backward does the same for
the input gradient; alpha / r is folded into the d x d kernel; only two (n, k, d) projections are saved besides
what the base layer keeps. PEFT LoRA r=1 creates several (n, d_out) and (n, d_in) temporaries per call; the
materializing variants (the paper's code path, LoKr) also build and differentiate a full d_in x d_out matrix per
call.
"""


def write_document(path: str, results: dict, targets: list) -> None:
    text = DOC_HEAD + "\n" + format_report(results, targets) + DOC_TAIL
    Path(path).write_text(text, encoding="utf-8")


# ---- command line -----------------------------------------------------------------------------------------------


def parse_shapes(text: str) -> list:
    shapes = []
    for item in text.split(","):
        try:
            d_in, d_out = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bench_adapters.py: bad --shapes entry {item!r}; expected D_INxD_OUT such as 768x3072") \
                from None
        if d_in % 8 or d_out % 8:
            raise SystemExit(f"bench_adapters.py: shape {item!r} is not divisible by 8 (DCFT d=8, LoKr f=8)")
        shapes.append((d_in, d_out))
    return shapes


def make_settings(args: argparse.Namespace) -> Settings:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench_adapters.py: --device cuda requested, but CUDA is not available to torch "
                         f"{torch.__version__}; run on a GPU machine or use --device cpu")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    threads = args.threads or os.cpu_count() or 1
    if args.smoke:
        shapes, tokens = SMOKE_SHAPES, 64
        schedules = {s: Schedule(2, 2, 0) for s in shapes}
        model = ModelSettings("tiny DeBERTaV3-style model (hidden 32, 2 layers)", TINY_MODEL, 2, 16, 1, 0)
        mode = "smoke"
    else:
        shapes, tokens = SHAPE_SETS[args.shape_set], 4096
        if device.type == "cuda":
            schedules = {s: CUDA_SCHEDULE for s in shapes}
        else:
            schedules = QUICK_SCHEDULES if args.quick else CPU_SCHEDULES
        if args.quick:
            model = ModelSettings("small DeBERTaV3-style model (hidden 256, 4 layers, FFN 1024)", SMALL_MODEL,
                                  8, 64, 3, 1)
        else:
            reps, warmup = (20, 3) if device.type == "cuda" else (5, 1)
            model = ModelSettings("DeBERTaV3-base (hidden 768, 12 layers, FFN 3072, vocab 128,100)", {}, 8, 128,
                                  reps, warmup)
        mode = "quick" if args.quick else "full"
    if args.shapes:
        shapes = parse_shapes(args.shapes)
    if args.tokens:
        tokens = args.tokens
    default = Schedule(7, 5, 1)
    schedules = {s: schedules.get(s, default) for s in shapes}
    if args.reps:
        schedules = {s: Schedule(args.reps, args.reps, sch.warmup) for s, sch in schedules.items()}
    return Settings(mode, device, dtype, tokens, shapes, schedules, None if args.skip_model else model, threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu runs float32; cuda runs bfloat16 (default: cpu)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer repetitions, a small model for the full step")
    size.add_argument("--smoke", action="store_true", help="tiny shapes and model, 2 repetitions (for tests)")
    parser.add_argument("--write", metavar="FILE", help="also write the report as Markdown to FILE")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: all logical CPUs)")
    parser.add_argument("--shape-set", choices=sorted(SHAPE_SETS), default="all",
                        help="layer shapes: classic (768x768, 768x3072, 4096x4096, 4096x11008), llama3-8b (4096x4096, "
                             "4096x1024, 4096x14336, 14336x4096) or all (both; default)")
    parser.add_argument("--shapes", help="comma-separated D_INxD_OUT layer shapes instead of the defaults")
    parser.add_argument("--tokens", type=int, help="tokens per layer call (default 4096)")
    parser.add_argument("--reps", type=int, help="timed repetitions for every shape and variant")
    parser.add_argument("--skip-model", action="store_true", help="skip the full-model training step")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if a target fails")
    return parser


def main(argv: list | None = None) -> dict:
    args = build_parser().parse_args(argv)
    settings = make_settings(args)
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    probe_start = scheduler_probe(settings.threads)
    results: dict = {
        "command": " ".join(["python", "scripts/bench_adapters.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(settings), "dtype_obj": settings.dtype,
        "settings": {"mode": settings.mode, "device": str(settings.device), "dtype": str(settings.dtype).split(".")[-1],
                     "tokens": settings.tokens},
        "layers": [bench_layer(d_in, d_out, settings, settings.schedules[(d_in, d_out)])
                   for d_in, d_out in settings.shapes],
    }
    results["model"] = bench_model(settings) if settings.model else None
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results["load"] = (f"{load_start:.2f}", f"{load_end:.2f}")
    results["probe"] = (probe_start, scheduler_probe(settings.threads))
    results["wall_s"] = time.perf_counter() - started
    targets = evaluate_targets(results)
    results["targets"] = targets
    print(format_report(results, targets))
    for target, measured, status in targets:
        print(f"{status}: {target} -- {measured}")
    if args.write:
        write_document(args.write, results, targets)
        _log(f"wrote {args.write}")
    if args.strict and any(status == "FAIL" for _, _, status in targets):
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
