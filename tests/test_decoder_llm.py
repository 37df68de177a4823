"""Decoder-only LLMs as backbones: exact adapter counts at full size (meta device), the tiny llama / qwen2 / gpt2
backbones through the normal run (classification, causal LM on prompt/response JSON lines, summarization), and the
saved adapters: reload, merge, and merged generation == unmerged generation token for token.

Runs go in-process (Hydra's compose API + ``training.execute``, as ``python -m dcft_lab.run`` does); one goes through
the real CLI. Everything is offline: tiny random models, the tiny tokenizers, tests/data/sft_tiny_*.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcft_lab import params
from dcft_lab.backbones import build_backbone, get_backbone
from helpers import compose_config, restored_globals

REPO = Path(__file__).resolve().parents[1]
SFT_TRAIN = REPO / "tests" / "data" / "sft_tiny_train.jsonl"
SFT_DEV = REPO / "tests" / "data" / "sft_tiny_dev.jsonl"
TINY_DECODERS = ("tiny-llama", "tiny-qwen2", "tiny-gpt2")
QUIET = ["logger=csv", "trainer=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
         "run.threads=1"]
SFT = ["task=sft", f"task.train_file={SFT_TRAIN}", f"task.eval_file={SFT_DEV}", "task.max_length=64",
       "task.train_batch_size=4", "task.eval_batch_size=8"]
# a DCFT update large enough that merged vs unmerged and reload checks are not vacuous: LoRA-style init (A = 0,
# O(1) gradients) and a high learning rate for 4 steps
STRONG_DCFT = ["method=dcft", "method.init=lora", "optim.lr=3e-2", "trainer.max_steps=4"]

torch.set_num_threads(1)


# ---- exact counts at full size ----------------------------------------------------------------------------------
# Per adapted matrix W (d_in x d_out), subspace rank k = 1, stride = kernel size d:
#     DCFT: k * (d_in / d + d_out / d) + d^2          LoRA rank r: r * (d_in + d_out)
# Matrices per layer, from the published architectures (d_in x d_out):
#   Llama / Mistral / Qwen2: q, o: H x H; k, v: H x KV (KV = kv_heads * head_dim; GQA when KV < H);
#                            gate, up: H x F; down: F x H
#   GPT-2: c_attn H x 3H, attn.c_proj H x H, c_fc H x 4H, mlp.c_proj 4H x H
def _decoder_matrices(layers, hidden, ffn, kv=None, gpt2=False):
    if gpt2:
        per_layer = [(hidden, 3 * hidden), (hidden, hidden), (hidden, 4 * hidden), (4 * hidden, hidden)]
    else:
        kv = kv or hidden
        per_layer = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
                     (hidden, ffn), (hidden, ffn), (ffn, hidden)]
    return per_layer * layers


def _dcft(matrices, d, k=1):
    return sum(k * (a // d + b // d) + d * d for a, b in matrices)


def _lora(matrices, r):
    return sum(r * (a + b) for a, b in matrices)


ARCHITECTURES = {  # (layers, hidden, FFN, k/v width) of the published configs
    "llama-2-7b": _decoder_matrices(32, 4096, 11008),
    "llama-3-8b": _decoder_matrices(32, 4096, 14336, kv=1024),  # 8 kv heads x 128
    "qwen2.5-0.5b": _decoder_matrices(24, 896, 4864, kv=128),  # 2 kv heads x 64
    "gpt2": _decoder_matrices(12, 768, 3072, gpt2=True),
    "mistral-7b": _decoder_matrices(32, 4096, 14336, kv=1024),
    "llama-3.2-1b": _decoder_matrices(16, 2048, 8192, kv=512),  # 8 kv heads x 64
}
# The issue's table, checked against the formula below (every number of the issue is right) and against the
# models built on the meta device.
ISSUE_TABLE = {  # DCFT d=8, DCFT d=2, LoRA r=1, LoRA r=8
    "llama-2-7b": (326_656, 1_250_176, 2_498_560, 19_988_480),
    "llama-3-8b": (342_016, 1_311_616, 2_621_440, 20_971_520),
    "qwen2.5-0.5b": (79_488, 275_616, 549_888, 4_399_104),
    "gpt2": (21_504, 73_920, 147_456, 1_179_648),
}
# Frozen sizes of the published checkpoints (embeddings counted once where tied): guards the configs themselves.
PUBLISHED_SIZES = {"llama-2-7b": 6_738_415_616, "llama-3-8b": 8_030_261_248, "mistral-7b": 7_241_732_096,
                   "llama-3.2-1b": 1_235_814_400, "qwen2.5-0.5b": 494_032_768, "gpt2": 124_439_808}


@pytest.fixture(scope="module")
def llm_table():
    """The rows `python -m dcft_lab.params --table` prints (all six LLM backbones, built on the meta device)."""
    return {row["backbone"]: row for row in params.table()}


@pytest.mark.parametrize("backbone", sorted(ISSUE_TABLE))
def test_issue_count_table(llm_table, backbone):
    matrices = ARCHITECTURES[backbone]
    by_formula = (_dcft(matrices, 8), _dcft(matrices, 2), _lora(matrices, 1), _lora(matrices, 8))
    assert by_formula == ISSUE_TABLE[backbone]
    row = llm_table[backbone]
    assert (row["DCFT d=8"], row["DCFT d=2"], row["LoRA r=1"], row["LoRA r=8"]) == ISSUE_TABLE[backbone]


def test_other_llm_rows_and_published_sizes(llm_table):
    for backbone in ("mistral-7b", "llama-3.2-1b"):
        matrices = ARCHITECTURES[backbone]
        row = llm_table[backbone]
        assert (row["DCFT d=8"], row["DCFT d=2"], row["LoRA r=1"], row["LoRA r=8"]) == (
            _dcft(matrices, 8), _dcft(matrices, 2), _lora(matrices, 1), _lora(matrices, 8))
    assert {name: row["base"] for name, row in llm_table.items()} == PUBLISHED_SIZES
    text = params.format_table(list(llm_table.values()))
    assert "| llama-3-8b (32 x 4096 / 14336, k/v 1024) | 8.03B | 342,016 | 1,311,616 | 2,621,440 | 20,971,520 |" in text


def test_params_command_per_module(capsys):
    assert params.main(["backbone=qwen2.5-0.5b", "method=dcft", "method.kernel_size=8"]) == 0
    out = capsys.readouterr().out
    # k_proj: 896 -> 128 (GQA), 24 layers: 1 * (112 + 16) + 64 = 192 each
    assert "k_proj" in out and "896 x 128" in out and "4,608" in out
    assert "adapter 79,488  head 0  trainable 79,488" in out
    # a subset and a classification head: Q, K, V, O only; the score head (896 x 2, no bias) is counted apart
    assert params.main(["backbone=llama-3-8b", "method=lora", "method.r=8", "method.targets=qkvo", "task=sst2"]) == 0
    out = capsys.readouterr().out
    assert "adapter 6,815,744  head 8,192" in out  # 32 * 8 * (2 * 8192 + 2 * 5120)
    assert params.main(["backbone=gpt2", "method=dcft", "method.targets=qv"]) == 2
    assert "GPT-2 fuses q, k, v into c_attn" in capsys.readouterr().err


def test_decoder_targets_and_tiny_architectures():
    llama = get_backbone("tiny-llama")
    assert llama.target_modules("all") == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert llama.target_modules("qv") == ["q_proj", "v_proj"]
    assert get_backbone("gpt2").target_modules("all") == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
    assert get_backbone("gpt2").target_modules("qkvo") == ["c_attn", "attn.c_proj"]
    assert llama.model_family("seq2seq") == "causal_lm" and llama.model_family("classification") == "classification"
    with pytest.raises(ValueError, match="does not support task family 'qa'"):
        llama.model_family("qa")
    with pytest.raises(ValueError, match="needs a decoder-only backbone"):
        get_backbone("tiny-deberta").model_family("causal_lm")
    model, tokenizer, _ = build_backbone("tiny-llama", "causal_lm")
    attention = model.model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.k_proj.out_features) == (64, 32)  # GQA: k/v narrower
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>" and tokenizer.padding_side == "right"
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id  # Llama-style BOS
    _, qwen_tokenizer, _ = build_backbone("tiny-qwen2", "causal_lm")
    assert qwen_tokenizer.pad_token == "<|endoftext|>"


def test_prompt_masking_and_padding():
    from dcft_lab.data.causal_lm import CausalLMCollator, build_rows

    columns, dropped = build_rows([[5, 6], [7, 8, 9, 10]], [[11], [12]], prefix=[1], eos=2, max_length=5)
    assert columns["input_ids"] == [[1, 5, 6, 11, 2]]  # row 2 is dropped: its prompt fills max_length
    assert columns["labels"] == [[-100, -100, -100, 11, 2]] and dropped == 1
    rows = [{"input_ids": [3, 4], "attention_mask": [1, 1], "labels": [-100, 4]},
            {"input_ids": [5], "attention_mask": [1], "labels": [5]}]
    right = CausalLMCollator(0, "right")(rows)
    assert right["input_ids"].tolist() == [[3, 4], [5, 0]] and right["labels"].tolist() == [[-100, 4], [5, -100]]
    left = CausalLMCollator(0, "left")(rows)
    assert left["input_ids"].tolist() == [[3, 4], [0, 5]] and left["attention_mask"].tolist() == [[1, 1], [0, 1]]


# ---- runs through the normal pipeline ---------------------------------------------------------------------------
def run(run_dir: Path, overrides: list[str], data_root: Path | None = None) -> dict:
    from omegaconf import OmegaConf

    from dcft_lab.config_schema import validate
    from dcft_lab.training import execute

    data = [f"data.root={data_root}", f"data.cache_dir={run_dir.parent / 'cache'}"] if data_root else []
    cfg = compose_config([*QUIET, *data, *overrides])
    with restored_globals():
        record = execute(validate(cfg), OmegaConf.to_container(cfg, resolve=True), run_dir)
    assert record["status"] == "completed"
    return record


def reload(run_dir: Path, overrides: list[str], data_root: Path | None = None):
    """(base model rebuilt as the run built it, its saved adapter loaded, data module, config) of a finished run."""
    import peft

    from dcft_lab.config_schema import validate
    from dcft_lab.data.factory import build_datamodule
    from dcft_lab.data.tasks import get_task

    data = [f"data.root={data_root}", f"data.cache_dir={run_dir.parent / 'cache'}"] if data_root else []
    rc = validate(compose_config([*QUIET, *data, *overrides]))
    spec = get_task(rc.task.name)
    family = get_backbone(rc.backbone.name).model_family(spec.family)
    base, tokenizer, _ = build_backbone(rc.backbone.name, family, spec.head_size, seed=rc.seed)
    model = peft.PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    datamodule = build_datamodule(spec, rc.task, rc.data, tokenizer, rc.seed, model_family=family)
    datamodule.setup("fit")
    return model, tokenizer, datamodule


def evaluate(model, datamodule) -> dict:
    evaluator = datamodule.make_evaluator()
    with torch.no_grad():
        for batch in datamodule.val_dataloader()[0]:
            evaluator.update(model, batch)
    return evaluator.compute()


def greedy(model, tokenizer, prompts: list[str], new_tokens: int = 8) -> torch.Tensor:
    tokenizer.padding_side = "left"  # generation: every prompt ends at the last position
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:]


# tiny architectures (hidden 64, 2 layers), DCFT d=8, k=1:
#   llama / qwen2: q, o 64x64: 8+8+64 = 80; k, v 64x32: 8+4+64 = 76; gate, up 64x128 and down: 8+16+64 = 88
#                  -> 2 * (2*80 + 2*76 + 3*88) = 1152
#   gpt2: c_attn 64x192: 8+24+64 = 96; attn.c_proj 80; c_fc 64x256 and mlp.c_proj: 8+32+64 = 104 -> 2 * 384 = 768
TINY_DCFT = {"tiny-llama": 1152, "tiny-qwen2": 1152, "tiny-gpt2": 768}


@pytest.mark.parametrize("backbone", TINY_DECODERS)
def test_causal_lm_run_reload_merge_generate(tmp_path, backbone):
    overrides = [f"backbone={backbone}", *SFT, *STRONG_DCFT, "eval_every_n_steps=2"]
    record = run(tmp_path / "run", overrides)
    assert record["model_family"] == "causal_lm" and record["head_modules"] == []
    assert record["params"]["adapter"] == TINY_DCFT[backbone] and record["params"]["head"] == 0
    assert record["data"]["n_train"] == 20 and record["data"]["n_eval"] == 8
    assert record["data"]["response_tokens"]["eval"] > 0
    final = record["metrics"]["final"]
    assert set(final) == {"loss", "perplexity"} and math.isclose(final["perplexity"], math.exp(final["loss"]))
    losses = [e["metrics"]["loss"] for e in record["evaluations"]]
    assert len(losses) == 2 and losses[1] < losses[0]  # trained on the response tokens: dev loss goes down
    assert record["best_step"] == 4  # lower is better for perplexity
    adapter_config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "DCFT" and adapter_config["task_type"] == "CAUSAL_LM"

    model, tokenizer, datamodule = reload(tmp_path / "run", overrides)
    # save/load: the reloaded adapter scores the dev set exactly as the run's last evaluation did
    assert evaluate(model, datamodule)["loss"] == pytest.approx(final["loss"], rel=1e-5)
    prompts = ["Question: Where did the cat sit?\nAnswer:", "Question: When was the film released?\nAnswer:"]
    batch = next(iter(datamodule.val_dataloader()[0]))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        adapted_logits = model(**inputs).logits
        with model.disable_adapter():  # the adapter moves the logits: the equalities below are not vacuous
            assert (adapted_logits - model(**inputs).logits).abs().max() > 1e-2
    unmerged = greedy(model, tokenizer, prompts, new_tokens=12)
    merged = model.merge_and_unload()
    assert not any("dcft_" in name for name, _ in merged.named_parameters())
    assert torch.equal(greedy(merged, tokenizer, prompts, new_tokens=12), unmerged)  # token for token
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone", TINY_DECODERS)
def test_classification_run_pools_last_token_and_reloads(tmp_path, glue_tsv_root, backbone):
    root = glue_tsv_root("sst2")
    overrides = [f"backbone={backbone}", "task=sst2", "task.max_length=32", "task.train_batch_size=4",
                 *STRONG_DCFT]
    record = run(tmp_path / "run", overrides, data_root=root)
    assert record["model_family"] == "classification" and record["head_modules"] == ["score"]
    # score head: hidden 64 -> 2 labels, no bias, trained in full and counted apart from the adapter
    assert record["params"]["head"] == 64 * 2 and record["params"]["adapter"] == TINY_DCFT[backbone]
    accuracy = record["metrics"]["final"]["accuracy"]
    model, tokenizer, datamodule = reload(tmp_path / "run", overrides, data_root=root)
    assert evaluate(model, datamodule)["accuracy"] == accuracy
    batch = next(iter(datamodule.val_dataloader()[0]))
    assert (batch["input_ids"] == tokenizer.pad_token_id).any()  # right padding present: pooling must skip it
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        unmerged = model(**inputs).logits
        merged = model.merge_and_unload()(**inputs).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)


def test_summarization_on_a_decoder(tmp_path, text_data_root):
    """XSum as prompt -> summary on tiny-llama: causal-LM training on the summary, ROUGE of generate()."""
    from dcft_lab.data.causal_lm import DecoderRougeEvaluator

    overrides = ["backbone=tiny-llama", "task=xsum", "task.max_source_length=96", "task.train_batch_size=4",
                 "task.eval_batch_size=4", "task.generation={num_beams: 1, max_length: 10, min_length: 0, "
                 "no_repeat_ngram_size: 0}", "data.train_from_eval=8", "data.eval_limit=4", *STRONG_DCFT]
    record = run(tmp_path / "run", overrides, data_root=text_data_root)
    assert record["model_family"] == "causal_lm"
    assert record["data"]["prompt_template"] == "{document}\nTL;DR:"
    assert record["data"]["generate_kwargs"]["max_new_tokens"] == 10
    metrics = record["metrics"]["final"]
    assert set(metrics) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert all(0.0 <= v <= 100.0 for v in metrics.values())

    model, tokenizer, datamodule = reload(tmp_path / "run", overrides, data_root=text_data_root)
    batch = next(iter(datamodule.val_dataloader()[0]))
    together = DecoderRougeEvaluator(tokenizer, datamodule.generation)
    together.update(model, batch)
    assert len(together.predictions) == 4 and all(p for p in together.predictions)  # new tokens only, decoded
    # prompts of different lengths, left-padded by the eval collator: padding does not change a row's continuation
    rows = [{"input_ids": datamodule.eval_features[i]["input_ids"][: 40 + 9 * i], "references": "x"} for i in range(3)]
    for row in rows:
        row["attention_mask"] = [1] * len(row["input_ids"])
    padded = datamodule.eval_collator(rows)
    assert padded["attention_mask"][:, -1].all() and padded["attention_mask"][0, :18].sum() == 0
    together = DecoderRougeEvaluator(tokenizer, datamodule.generation)
    together.update(model, padded)
    for i, row in enumerate(rows):
        alone = DecoderRougeEvaluator(tokenizer, datamodule.generation)
        alone.update(model, datamodule.eval_collator([row]))
        assert alone.predictions == together.predictions[i:i + 1]


def test_llm_memory_switches(tmp_path):
    """bf16-mixed autocast, gradient checkpointing and bfloat16 frozen weights on a tiny decoder."""
    overrides = ["backbone=tiny-llama", *SFT, "method=dcft", "trainer.max_steps=2", "trainer.precision=bf16-mixed",
                 "backbone.gradient_checkpointing=true", "backbone.dtype=bfloat16"]
    record = run(tmp_path / "run", overrides)
    assert record["backbone_options"] == {"gradient_checkpointing": True, "dtype": "bfloat16"}
    assert math.isfinite(record["metrics"]["final"]["loss"])
    assert record["params"]["adapter"] == TINY_DCFT["tiny-llama"]
    model, _, _ = build_backbone("tiny-llama", "causal_lm", gradient_checkpointing=True, dtype="bfloat16")
    assert model.is_gradient_checkpointing and model.dtype == torch.bfloat16
    adapted, _, _ = params.adapt(model, "tiny-llama", "causal_lm", {"name": "dcft"})
    dtypes = {p.dtype for n, p in adapted.named_parameters() if "dcft_" in n}
    assert dtypes == {torch.float32}  # frozen weights in bfloat16, the trained adapter in float32


def test_hub_backbone_from_a_local_folder(tmp_path):
    """backbone=llama-3-8b backbone.path=FOLDER: from_pretrained of a local HF folder (model and tokenizer), the code
    path a hub user takes, here with a tiny Llama saved there; its tokenizer has no pad token (pad = EOS)."""
    from dcft_lab.tiny_tokenizers import tiny_decoder_tokenizer

    folder = tmp_path / "my-llama"
    model, _, _ = build_backbone("tiny-llama", "causal_lm")
    model.save_pretrained(str(folder))
    saved_tokenizer = tiny_decoder_tokenizer("llama", save_dir=folder)
    assert saved_tokenizer.pad_token is None
    overrides = ["backbone=llama-3-8b", f"backbone.path={folder}", *SFT, "trainer.max_steps=2"]
    record = run(tmp_path / "run", overrides)
    assert record["params"]["adapter"] == TINY_DCFT["tiny-llama"] and record["model_family"] == "causal_lm"
    counts, groups, _, base_total = params.count("llama-3-8b", {"name": "dcft"}, path=str(folder))
    assert counts.adapter == TINY_DCFT["tiny-llama"] and base_total == sum(p.numel() for p in model.parameters())
    assert [(g.target, g.shape) for g in groups][:2] == [("q_proj", (64, 64)), ("k_proj", (64, 32))]


def test_a_decoder_only_task_on_an_encoder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="needs a decoder-only backbone"):
        run(tmp_path / "bad", ["backbone=tiny-deberta", *SFT])


@pytest.mark.slow  # a run in a subprocess
def test_cli_run(tmp_path):
    """The real command line: the offline smoke preset on tiny-gpt2 (Conv1D)."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}
    args = [sys.executable, "-m", "dcft_lab.run", "experiment=smoke/sft", "backbone=tiny-gpt2", "trainer.max_steps=2",
            "trainer.enable_progress_bar=false"]
    done = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'ok'}"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(REPO))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sft | DCFT d=8 s=8 k=1 | tiny-gpt2" in done.stdout and "dev perplexity: best" in done.stdout
    record = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert record["status"] == "completed" and record["params"]["adapter"] == TINY_DCFT["tiny-gpt2"]
