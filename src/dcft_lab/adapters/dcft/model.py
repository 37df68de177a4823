"""DCFT as a PEFT tuner: which modules to wrap, and the orthogonal regularizer over all DCFT layers.

The regularizer is part of the model's training objective, as AdaLoRA's is in PEFT: a forward in training mode whose
output has a ``loss`` (labels given) returns ``loss + gamma * R``, so ``transformers.Trainer`` and plain loops train
what ``dcft_lab.run`` trains. Eval mode returns the task loss alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from transformers.pytorch_utils import Conv1D

from ..targets import ALL_TARGETS
from .config import DCFTConfig
from .layer import DCFTLayer, DCFTLinear


def _adapter_names_pre_forward_hook(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names  # handed to DCFTLinear.forward / ModulesToSaveWrapper.forward
    return args, kwargs


def _get_encoder(model: torch.nn.Module) -> torch.nn.Module | None:
    """The encoder of an encoder-decoder model, else None (transformers v5 returns the model itself then)."""
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else None
    return None if encoder is model else encoder


class DCFTModel(BaseTuner):
    prefix: str = "dcft_"
    tuner_layer_cls = DCFTLayer
    target_module_mapping = ALL_TARGETS  # the paper's ALL setting when a config names no target_modules
    # Whether a training forward adds ``loss_regularizer()`` to ``outputs.loss`` (``_orth_reg_in_loss``). A runtime
    # switch of this object, never saved: a loaded adapter adds it again. Whoever turns it off adds the term itself
    # (dcft_lab's DCFTMethod does, to log task loss and regularizer apart).
    add_orth_reg_to_loss: bool = True
    _orth_reg_hook = None  # the forward hook on self.model while a forward is inside _orth_reg_in_loss

    def _create_and_replace(self, config: DCFTConfig, adapter_name, target, target_name, parent, current_key, **kw):
        if isinstance(target, DCFTLinear):
            target.update_layer(adapter_name, config, current_key)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, (torch.nn.Linear, Conv1D)):
            raise TypeError(
                f"DCFT target '{current_key}' is a {type(base).__name__}; "
                "expected torch.nn.Linear or transformers Conv1D"
            )
        new_module = DCFTLinear(target, adapter_name, config, module_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def forward(self, *args, **kwargs):
        with self._orth_reg_in_loss():  # called as the tuner: PeftModelForSequenceClassification, CausalLM, ...
            return self.model(*args, **kwargs)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        # PeftModel enters this around every forward, the plain PeftModel (no task_type) included, whose forward
        # calls the transformers model directly and never reaches self.forward.
        with self._orth_reg_in_loss(), self._adapter_names_hooks(*args, **kwargs):
            yield

    @contextmanager
    def _orth_reg_in_loss(self):
        """While entered in training mode, the wrapped model's output gets ``loss + loss_regularizer()``.

        A forward hook on the transformers model, not an addition in ``forward``: ``PeftModel.forward`` (no task
        type) bypasses the tuner's forward. Re-entrant, so the term is added once when a PeftModel subclass enters
        it and then calls ``self.forward``, which enters it again. Outside training nothing is registered.
        """
        if self._orth_reg_hook is not None or not (self.training and self.add_orth_reg_to_loss):
            yield
            return
        self._orth_reg_hook = self.model.register_forward_hook(self._add_orth_reg_to_output)
        try:
            yield
        finally:
            self._orth_reg_hook.remove()
            self._orth_reg_hook = None

    def _add_orth_reg_to_output(self, module, args, output):
        # As PeftModel's AdaLoRA: only a ModelOutput-like result with a tensor ``loss`` (labels were given).
        loss = getattr(output, "loss", None)
        if not isinstance(loss, torch.Tensor):
            return None
        reg = self.loss_regularizer()
        if reg is None:
            return None
        output.loss = loss + reg  # out of place: a ModelOutput's item and attribute both take the new tensor
        return output

    @contextmanager
    def _adapter_names_hooks(self, *args, **kwargs):
        """``model(x, adapter_names=[...])`` / ``generate``: hand each DCFT layer the per-row adapter names.

        PeftModel enters this around every forward and generate call. As LoRA does: inference only (a training step
        would mix the gradients of different adapters in one batch), names are checked once for the whole model (a
        layer only knows its own adapters, so a typo would otherwise pass silently), and with beam search the names are
        repeated per beam except in the encoder of an encoder-decoder model, which sees the un-repeated batch.
        """
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        known = set()
        for module in self.modules():
            if isinstance(module, DCFTLayer):
                known |= module.dcft_A.keys()
        unknown = {name for name in adapter_names if name != "__base__"} - known
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")

        num_beams = kwargs.get("num_beams", None)
        per_row = adapter_names
        if isinstance(num_beams, int) and num_beams > 1:
            if not isinstance(adapter_names, (list, tuple)):
                raise TypeError(f"Got adapter names of type {type(adapter_names)}, expected a list of str.")
            per_row = [name for name in adapter_names for _ in range(num_beams)]
        routed = (DCFTLayer, AuxiliaryTrainingWrapper)  # the wrapper routes modules_to_save rows the same way
        handles = [
            module.register_forward_pre_hook(
                partial(_adapter_names_pre_forward_hook, adapter_names=per_row), with_kwargs=True
            )
            for module in self.modules() if isinstance(module, routed)
        ]
        encoder = _get_encoder(self.model)
        if per_row is not adapter_names and encoder is not None:
            # registered after the hooks above, so these run last and win for the encoder's layers
            handles += [
                module.register_forward_pre_hook(
                    partial(_adapter_names_pre_forward_hook, adapter_names=list(adapter_names)), with_kwargs=True
                )
                for module in encoder.modules() if isinstance(module, routed)
            ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def loss_regularizer(self) -> torch.Tensor | None:
        """The term a training step adds to the task loss: the sum of ``orthogonal_regularizer`` over the active
        adapters that train (not in inference mode, weight > 0); None when there is none or the DCFT layers are
        disabled (``disable_adapter()``). One adapter: exactly ``orthogonal_regularizer()``."""
        layers = [m for m in self.model.modules() if isinstance(m, DCFTLayer)]
        if not layers or all(m.disable_adapters for m in layers):
            return None
        terms = []
        for name in self.active_adapters:
            config = self.peft_config.get(name)
            if config is None or config.inference_mode or not config.orth_reg_weight:
                continue
            if any(name in m.dcft_A for m in layers):
                terms.append(self.orthogonal_regularizer(name))
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else torch.stack(terms).sum()

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
