"""Exact parameter counts of an adapted model, split into adapter / head / frozen."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn


@dataclass(frozen=True)
class ParamCounts:
    adapter: int  # trainable parameters inside adapter layers (what papers report)
    head: int  # trainable modules_to_save copies (classifier, pooler, ...), counted separately as the paper does
    trainable: int  # adapter + head (+ biases if trained)
    total: int  # every parameter of the adapted model, frozen base included (head originals excluded)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def head_prefixes(model: nn.Module) -> list[str]:
    """Name prefixes of the trained head: PEFT's modules_to_save wrappers (pooler, classifier), or the head modules
    a head-only model records (no PEFT wrapper; see methods._head_only_model)."""
    prefixes = [name + "." for name, m in model.named_modules() if isinstance(m, AuxiliaryTrainingWrapper)]
    return prefixes + [name + "." for name in getattr(model, "dcft_lab_head_modules", [])]


def count_parameters(model: nn.Module) -> ParamCounts:
    head_prefixes_ = head_prefixes(model)
    trainable = head = total = 0
    for name, p in model.named_parameters():
        n = p.numel()
        if any(name.startswith(pre) for pre in head_prefixes_):
            # A ModulesToSaveWrapper keeps the frozen original next to the trained copy: count the copy only.
            if p.requires_grad:
                head += n
                trainable += n
                total += n
            continue
        total += n
        if p.requires_grad:
            trainable += n
    return ParamCounts(adapter=trainable - head, head=head, trainable=trainable, total=total)
