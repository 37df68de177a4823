"""scripts/bench_adapters.py: its smoke run checks every variant before timing it, its checks catch wrong
kernels, its memory instrument and target logic give hand-computed answers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_adapters.py"
LAYER_KEYS = {"base", "dcft_d2", "dcft_d8", "ref_d8", "lora_r1", "lora_r8", "lokr",
              "base_infer", "dcft_d8_merged", "dcft_d8_infer"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_adapters", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_adapters"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_adapters", None)


@pytest.fixture(scope="module")
def smoke(bench):
    threads = torch.get_num_threads()
    try:
        return bench.main(["--smoke", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def _variants(bench, d_in=64, d_out=64, tokens=32, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(d_in, d_out)
    variants = {v.key: v for v in bench.build_layer_variants(base, torch.float32, generator)}
    x = torch.randn(tokens, d_in, generator=generator)
    return base, variants, x, bench.check_rows(tokens, 8), generator


def test_smoke_run_checks_every_variant_before_timing(bench, smoke):
    assert [tuple(layer["shape"]) for layer in smoke["layers"]] == bench.SMOKE_SHAPES
    for layer in smoke["layers"]:
        rows = {v["key"]: v for v in layer["variants"]}
        assert set(rows) == LAYER_KEYS
        for key, row in rows.items():
            assert 0 <= row["check_error"] <= bench.CHECK_TOL[torch.float32], key
            assert row["time"]["n"] == 2 and row["time"]["median"] > 0, key
        assert layer["fused"] == {"dcft_d2": True, "dcft_d8": True}  # the timed DCFT is the fused kernel
        assert layer["merge_max_abs_diff"] <= 1e-5
    methods = smoke["model"]["methods"]
    assert set(methods) == {"dcft_d8", "lora_r1", "head_only"}
    # tiny model: 2 layers x 6 matrices; DeBERTa also runs query/key projections on the relative embeddings
    assert methods["dcft_d8"]["dcft_layers"] == 12
    assert methods["dcft_d8"]["fused_calls"] == methods["dcft_d8"]["dcft_calls"] > 12
    assert [status for _, _, status in smoke["targets"]].count("SKIP") == 2  # the 4096 shapes are not run


def test_smoke_memory_numbers_are_hand_computable(smoke):
    """Frozen base: output (n x d_out) + input gradient (n x d_in), float32. Besides what the base keeps, DCFT
    saves only its two (n x k x d) projections and its scaled d x d kernel."""
    tokens = smoke["settings"]["tokens"]
    for layer in smoke["layers"]:
        d_in, d_out = layer["shape"]
        rows = {v["key"]: v for v in layer["variants"]}
        assert rows["base"]["peak_bytes"] == 4 * tokens * (d_in + d_out)
        assert rows["base"]["saved_bytes"] == 0
        assert rows["dcft_d8"]["saved_bytes"] == 4 * (2 * tokens * 1 * 8 + 8 * 8)
        assert rows["dcft_d2"]["saved_bytes"] == 4 * (2 * tokens * 1 * 2 + 2 * 2)
        # the materializing reference keeps B @ A and ΔW (d_in x d_out) for backward
        assert rows["ref_d8"]["saved_bytes"] >= 4 * d_in * d_out


def test_checks_pass_on_correct_variants(bench):
    base, variants, x, rows, generator = _variants(bench)
    for key in ("base", "dcft_d2", "dcft_d8", "ref_d8", "lora_r1", "lokr"):
        assert bench.check_training_variant(variants[key], base, x, rows, generator) < 1e-4


def test_check_catches_perturbed_output(bench):
    base, variants, x, rows, generator = _variants(bench)
    variant = variants["dcft_d8"]
    layer = variant.module.base_model.model.linear
    layer.register_forward_hook(lambda mod, inp, out: out + 1e-3 * out.detach().abs().max())
    with pytest.raises(bench.CheckError, match="dcft_d8 output"):
        bench.check_training_variant(variant, base, x, rows, generator)


def test_check_catches_wrong_parameter_gradient(bench):
    base, variants, x, rows, generator = _variants(bench)
    variant = variants["dcft_d2"]
    variant.params["A"].register_hook(lambda g: g * 1.001)
    with pytest.raises(bench.CheckError, match="gradient of A"):
        bench.check_training_variant(variant, base, x, rows, generator)


def test_check_catches_wrong_kernel_orientation(bench):
    """A DCFT whose kernel enters transposed (kron(F, C^T) instead of kron(F, C)) must not pass."""
    base, variants, x, rows, generator = _variants(bench)
    variant = variants["dcft_d8"]
    right = variant.delta
    variant.delta = lambda p: right({**p, "C": p["C"].t()})
    with pytest.raises(bench.CheckError, match="output"):
        bench.check_training_variant(variant, base, x, rows, generator)


def test_check_refuses_a_vacuous_comparison(bench):
    base, variants, x, rows, generator = _variants(bench)
    variant = variants["lora_r1"]
    with torch.no_grad():
        variant.params["B"].mul_(1e-6)  # ΔW ~ 0: a kernel that ignored the adapter would pass
    with pytest.raises(bench.CheckError, match="vacuous"):
        bench.check_training_variant(variant, base, x, rows, generator)


def test_merged_check_tolerance(bench):
    y = torch.tensor([1.0, -2.0, 100.0], dtype=torch.float64)
    close = y + torch.tensor([5e-6, 0.0, 5e-4], dtype=torch.float64)  # 5e-4 <= 1e-5 + 1e-5 * 100
    assert bench.check_merged_equals_unmerged(close, y, 1e-5) == pytest.approx(5e-4)
    with pytest.raises(bench.CheckError, match="merged vs unmerged"):  # 3e-5 > 1e-5 + 1e-5 * 1
        bench.check_merged_equals_unmerged(y + torch.tensor([3e-5, 0.0, 0.0], dtype=torch.float64), y, 1e-5)


def test_relative_error_and_check_close(bench):
    def t(*values):
        return torch.tensor(values, dtype=torch.float64)

    want = t(1.0, -4.0)
    assert bench.relative_error(t(1.0, -3.0), want) == pytest.approx(0.25)
    assert bench.check_close("x", t(1.0, -4.0002), want, 1e-4) == pytest.approx(5e-5)
    with pytest.raises(bench.CheckError, match="exceeds"):
        bench.check_close("x", t(1.0, -4.01), want, 1e-4)
    with pytest.raises(bench.CheckError, match="exceeds"):
        bench.check_close("x", t(float("nan"), -4.0), want, 1e-4)
    with pytest.raises(bench.CheckError, match="shape"):
        bench.check_close("x", torch.zeros(3), want, 1e-4)


def test_cpu_peak_bytes_replays_allocations(bench):
    def run():
        a = torch.empty(1000)  # 4,000 B
        b = torch.empty(2000)  # +8,000 B: 12,000 B live
        del a
        c = torch.empty(500)  # 10,000 B live
        del b, c

    assert bench._cpu_peak_bytes(run) == 12_000


def _layer(shape, medians, peaks, merge_diff=1e-6):
    return {"shape": shape, "merge_max_abs_diff": merge_diff,
            "variants": [{"key": k, "time": {"median": t}, "peak_bytes": peaks.get(k, 0)} for k, t in medians.items()]}


def test_targets_thresholds(bench):
    def medians(d8, d2=1.0, lora=1.06, ref=2.0, merged=1.0):
        return {"base": 1.0, "dcft_d2": d2, "dcft_d8": d8, "ref_d8": ref, "lora_r1": lora,
                "base_infer": 1.0, "dcft_d8_merged": merged}

    peaks = {"base": 100, "dcft_d2": 110, "dcft_d8": 105, "lora_r1": 120}
    results = {"dtype_obj": torch.float32, "model": {"label": "m", "methods": {
        "dcft_d8": {"time": {"median": 1.09}}, "lora_r1": {"time": {"median": 1.0}}}},
        "layers": [_layer((4096, 4096), medians(1.04), peaks), _layer((4096, 11008), medians(1.05), peaks)]}
    assert [s for _, _, s in bench.evaluate_targets(results)] == ["PASS"] * 6

    results["layers"][1] = _layer((4096, 11008), medians(1.06, d2=1.07, merged=1.04),
                                  {**peaks, "dcft_d2": 121})
    results["layers"][0] = _layer((4096, 4096), medians(1.21, ref=2.0), peaks)  # 0.21 > (2.0 - 1.0) / 5
    results["model"]["methods"]["dcft_d8"]["time"]["median"] = 1.11
    assert [s for _, _, s in bench.evaluate_targets(results)] == ["FAIL"] * 6


def test_report_document_holds_command_machine_and_targets(bench, smoke, tmp_path):
    path = tmp_path / "BENCH.md"
    bench.write_document(str(path), smoke, smoke["targets"])
    text = path.read_text()
    assert "python scripts/bench_adapters.py --smoke --threads 1" in text
    assert f"torch {torch.__version__}" in text and "1 intra-op threads" in text
    for target, _, status in smoke["targets"]:
        assert f"| {target} |" in text and f"**{status}**" in text
    assert "### One linear layer, d_in x d_out = 64 x 192" in text
    assert "Peak memory on CPU" in text


def test_cuda_request_without_cuda_is_one_clear_line(bench, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as err:
        bench.main(["--device", "cuda", "--smoke"])
    message = str(err.value.code)
    assert "\n" not in message and "--device cuda" in message and "CUDA is not available" in message


def test_bad_shape_option_is_rejected(bench):
    with pytest.raises(SystemExit, match="768x30"):
        bench.main(["--shapes", "768x30", "--smoke"])


def test_llama3_8b_shapes_in_every_prepared_mode(bench, monkeypatch):
    """The CUDA / bf16 run, the quick and the full CPU run all time Llama-3-8B's four projection shapes, each with a
    schedule of its own; --shape-set picks either family."""
    llama = [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)]
    assert bench.LLAMA3_8B_SHAPES == llama
    parse = bench.build_parser().parse_args
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = bench.make_settings(parse(["--device", "cuda"]))
    assert cuda.dtype == torch.bfloat16 and set(llama) <= set(cuda.shapes)
    assert set(bench.TARGET_SHAPES) <= set(cuda.shapes) and len(cuda.shapes) == 7
    assert all(cuda.schedules[s] == bench.CUDA_SCHEDULE for s in llama)
    for argv, table in (([], bench.CPU_SCHEDULES), (["--quick"], bench.QUICK_SCHEDULES)):
        settings = bench.make_settings(parse(argv))
        assert settings.dtype == torch.float32 and set(llama) <= set(settings.shapes)
        assert all(settings.schedules[s] == table[s] for s in settings.shapes)
    assert bench.make_settings(parse(["--shape-set", "llama3-8b"])).shapes == llama
    assert bench.make_settings(parse(["--shape-set", "classic"])).shapes == bench.TARGET_SHAPES


def test_gqa_like_shapes_run_with_lora_side_by_side(bench):
    """Llama-3-8B's k/v (4:1 narrowing) and down-projection (widening input) layouts at test size: every variant is
    checked, and the per-shape summary puts DCFT next to LoRA r=1 / r=8."""
    threads = torch.get_num_threads()
    try:
        results = bench.main(["--smoke", "--threads", "1", "--shapes", "512x128,128x512", "--skip-model"])
    finally:
        torch.set_num_threads(threads)
    assert [tuple(layer["shape"]) for layer in results["layers"]] == [(512, 128), (128, 512)]
    for layer in results["layers"]:
        rows = {v["key"]: v for v in layer["variants"]}
        assert set(rows) == LAYER_KEYS
        assert all(row["check_error"] <= bench.CHECK_TOL[torch.float32] for row in rows.values())
        d_in, d_out = layer["shape"]
        assert rows["dcft_d8"]["params"] == d_in // 8 + d_out // 8 + 64
        assert (rows["lora_r1"]["params"], rows["lora_r8"]["params"]) == (d_in + d_out, 8 * (d_in + d_out))
    summary = "\n".join(bench.format_shape_summary(results))
    assert "| 512x128 |" in summary and "DCFT d=8 / LoRA r=8" in summary
    # 512x128: DCFT d=8 64 + 16 + 64, d=2 256 + 64 + 4; LoRA r=1 512 + 128, r=8 8 x 640
    assert "| 144 / 324 / 640 / 5,120 |" in summary
