"""The modules each method adapts, per architecture (the one table: DCFT's PEFT default and the lab's backbones).

Names are suffix-matched, as PEFT does. "all" is the paper's ALL setting: Q, K, V, the attention output and both FFN
matrices of every layer; the subsets are the paper's Table 6 (Q, K, V, O are the first four names of a family).
Keys are transformers' ``model_type`` (what PEFT's ``target_module_mapping`` is looked up by).
"""

from __future__ import annotations

_ENCODERS = {
    "deberta-v2": ("query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense",
                   "output.dense"),
    "bert": ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
    "roberta": ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
}
SUBSETS = {"qk": (0, 1), "qv": (0, 2), "qkv": (0, 1, 2), "qkvo": (0, 1, 2, 3), "all": (0, 1, 2, 3, 4, 5)}

# Decoder-only families: Q, K, V, O and the three gated-FFN matrices (Llama, Mistral, Qwen2 share the names; with
# GQA k_proj / v_proj are narrower than q_proj). GPT-2 fuses Q, K, V into one Conv1D (c_attn), so its subsets stop at
# the fused block: "qv" / "qk" cannot be expressed.
_LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DECODERS = {
    "llama": {"all": _LLAMA_STYLE, **{name: tuple(_LLAMA_STYLE[i] for i in idx) for name, idx in SUBSETS.items()
                                      if name != "all"}},
    "gpt2": {"all": ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"), "qkvo": ("c_attn", "attn.c_proj"),
             "qkv": ("c_attn",)},
}
_DECODERS["mistral"] = _DECODERS["qwen2"] = _DECODERS["llama"]
DECODER_ARCHS = tuple(_DECODERS)
# BART: self- and cross-attention q/k/v/out projections and both FFN matrices ("all" only).
_BART = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ARCHS = (*_ENCODERS, "bart", *DECODER_ARCHS)


def target_modules(arch: str, target_set: str = "all") -> list[str]:
    """The module names of ``target_set`` (all | qkvo | qkv | qv | qk) on architecture ``arch``."""
    if arch in _DECODERS:
        sets = _DECODERS[arch]
        if target_set not in sets:
            why = " (GPT-2 fuses q, k, v into c_attn)" if arch == "gpt2" and target_set in SUBSETS else ""
            raise ValueError(f"unknown target set {target_set!r} for {arch}{why}; expected one of {sorted(sets)}")
        return list(sets[target_set])
    if arch == "bart":
        if target_set != "all":
            raise ValueError(f"target set {target_set!r} is defined for encoders only; expected 'all' for BART")
        return list(_BART)
    if arch not in _ENCODERS:
        raise ValueError(f"no target modules known for architecture {arch!r}; expected one of {list(ARCHS)} "
                         "or explicit target_modules")
    if target_set not in SUBSETS:
        raise ValueError(f"unknown target set {target_set!r}; expected one of {sorted(SUBSETS)}")
    return [_ENCODERS[arch][i] for i in SUBSETS[target_set]]


# PEFT's default when a config leaves target_modules out (DCFTModel.target_module_mapping): the ALL setting.
ALL_TARGETS = {arch: target_modules(arch) for arch in ARCHS}
