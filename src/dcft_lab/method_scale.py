"""A method's update scale: its update is ΔW = (alpha / <denominator>) · (the product of its factors), and this file
is the one home of which config key the denominator is.

``adapters.methods.Method.update_scale`` / ``Method.alpha_for`` read it for a built method; the report (which must
start fast, so never imports torch or PEFT) and the study driver read it from a method config mapping (a record's
``config.method``, a grid row's composed ``method`` node). Standard library only, for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

# method name -> the key of its config that alpha is divided by, as its layers compute the scaling:
# - lora, lorafa: PEFT's LoraLayer, scaling = lora_alpha / r (LoRA-FA is that layer with A frozen; PEFT's LoRA-FA
#   optimizer uses the same lora_alpha / r);
# - lokr: PEFT's LoKrLayer, scaling = alpha / r;
# - adalora: PEFT's SVDLinear multiplies by lora_alpha / (ranknum + 1e-5), and ranknum is float(init_r), fixed (the
#   budget allocator masks entries of E, it does not change ranknum);
# - dcft: DCFTLayer.dcft_scaling = alpha / r (the official code's lora_r: a constant, no shape);
# - sora: SoRALayer.sora_scaling = alpha / r (r_max; the gate zeroes ranks, the scaling stays).
# Methods not listed have no alpha and no update scale: head-only (none), full, bitfit, hadapter, padapter.
SCALE_RANK_KEY: Mapping[str, str] = MappingProxyType(
    {"dcft": "r", "lora": "r", "lorafa": "r", "lokr": "r", "sora": "r", "adalora": "init_r"})


def scale_rank_key(method_cfg) -> str | None:
    """The config key alpha is divided by for this method config (a mapping with ``name``), or None when the method
    has no update scale."""
    return SCALE_RANK_KEY.get(method_cfg.get("name")) if isinstance(method_cfg, Mapping) else None


def update_scale(method_cfg) -> float | None:
    """alpha / <denominator> of a resolved method config: alpha / r for dcft, lora, lorafa, lokr and sora;
    alpha / init_r for adalora. None for a method without an update scale (head-only, full, BitFit, the bottleneck
    adapters) and when the config lacks the numbers (e.g. an unresolved interpolation)."""
    rank_key = scale_rank_key(method_cfg)
    if rank_key is None:
        return None
    alpha, rank = method_cfg.get("alpha"), method_cfg.get(rank_key)
    if not (_is_number(alpha) and _is_number(rank)) or rank == 0:
        return None
    return alpha / rank


def alpha_for(method_cfg, scale: float | None) -> float | None:
    """The alpha that gives this method config the update scale ``scale`` (``update_scale`` of the result is
    ``scale``): ``scale`` x its denominator. None when ``scale`` is None or the method has no update scale;
    ValueError when the config lacks a positive denominator."""
    rank_key = scale_rank_key(method_cfg)
    if scale is None or rank_key is None:
        return None
    rank = method_cfg.get(rank_key)
    if not _is_number(rank) or rank <= 0:
        raise ValueError(f"method.{rank_key}={rank!r}: the update scale of {method_cfg.get('name')} is "
                         f"alpha / {rank_key}; expected a positive number")
    return float(scale) * float(rank)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
