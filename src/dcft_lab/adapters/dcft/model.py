"""DCFT as a PEFT tuner: which modules to wrap, and the orthogonal regularizer over all DCFT layers."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

from .config import DCFTConfig
from .layer import DCFTLayer, DCFTLinear

# Paper's "ALL" setting for common architectures (suffix-matched module names).
DCFT_TARGET_MODULES = {
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense", "output.dense"],
    "bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


class DCFTModel(BaseTuner):
    prefix: str = "dcft_"
    tuner_layer_cls = DCFTLayer
    target_module_mapping = DCFT_TARGET_MODULES

    def _create_and_replace(self, config: DCFTConfig, adapter_name, target, target_name, parent, current_key, **kw):
        if isinstance(target, DCFTLinear):
            target.update_layer(adapter_name, config, current_key)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, torch.nn.Linear):
            raise TypeError(
                f"DCFT target '{current_key}' is a {type(base).__name__}; expected torch.nn.Linear"
            )
        new_module = DCFTLinear(target, adapter_name, config, module_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def orthogonal_regularizer(self, adapter_name: str | None = None) -> torch.Tensor:
        """gamma * R over this adapter's DCFT layers (see ``orthogonal_penalty``)."""
        adapter_name = adapter_name or self.active_adapters[0]
        config = self.peft_config[adapter_name]
        factors = []
        for module in self.model.modules():
            if isinstance(module, DCFTLayer) and adapter_name in module.dcft_A:
                factors += [module.dcft_B[adapter_name], module.dcft_A[adapter_name].t()]
        return config.orth_reg_weight * orthogonal_penalty(factors, config.orth_reg)


def orthogonal_penalty(factors: list[torch.Tensor], form: str = "official") -> torch.Tensor:
    """Penalty pushing each factor's k columns towards orthonormality (the kernel is not regularized).

    For each factor G (m x k): ``official`` = mean of ||G^T G - I_k||_F (the official code, not squared);
    ``paper`` = sum of ||G^T G - I_k||_F^2 (Eq. 4; the Gram is taken over the rank dimension, the only one
    where G^T G = I is attainable for k <= m).
    """
    if not factors:
        raise ValueError("no DCFT factors found: is the model adapted with DCFT?")
    norms = []
    for G in factors:
        gram = G.t() @ G
        norms.append(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=G.dtype, device=G.device)))
    norms = torch.stack(norms)
    if form == "official":
        return norms.mean()
    if form == "paper":
        return norms.pow(2).sum()
    raise ValueError(f"orth_reg form {form!r} is unknown; expected 'official' or 'paper'")
