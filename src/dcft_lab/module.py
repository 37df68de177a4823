"""The LightningModule: trains whatever adapted model it is given, through the method interface.

It knows neither the method (it calls ``method.regularizer`` / ``method.on_step``) nor the task family (the data
module's evaluator scores each validation batch). Checkpoint files, the data position of a resumed run and the
fault-injection testing hook are the run's callbacks (``callbacks.py``), not the module's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from .adapters.counting import head_prefixes
from .adapters.methods import Method
from .data.evaluator import keep_metrics_local

if TYPE_CHECKING:
    from .config_schema import OptimConfig


def best_evaluation(evaluations: list[dict], metric: str, greater_is_better: bool = True) -> dict | None:
    """The evaluation with the best ``metric`` (max, or min when lower is better; the first on ties), or None."""
    # NaN (e.g. Pearson of a constant prediction, undefined as in scipy) is never the best: max() would keep a
    # leading NaN whatever followed, since no comparison with it is true.
    scored = [e for e in evaluations if math.isfinite(e["metrics"].get(metric, math.nan))]
    if not scored:
        return None
    pick = max if greater_is_better else min
    return pick(scored, key=lambda e: e["metrics"][metric])


class NonFiniteLossError(RuntimeError):
    def __init__(self, step: int, value: float):
        where = f"({value})" if not math.isfinite(value) else f"on another process (this one's: {value:.4g})"
        super().__init__(f"non-finite training loss {where} at step {step}")
        self.step = step


def _no_decay(name: str, param: nn.Parameter) -> bool:
    lowered = name.lower()
    return param.ndim < 2 or name.endswith(".bias") or "layernorm" in lowered or "layer_norm" in lowered


def build_optimizer(model: nn.Module, method: Method, *, lr: float, weight_decay: float, betas, eps: float,
                    warmup_steps: int, warmup_ratio: float, total_steps: int, head_lr: float | None = None,
                    factor_lr_ratio: float = 1.0):
    """(AdamW, linear warmup-then-decay schedule) of a run: weight decay off biases / LayerNorm; ``warmup_steps``, else
    ``ceil(warmup_ratio * total_steps)``. Also used by scripts/update_growth.py to replay a run's first steps.

    Three learning rates (LoRA+-style per-factor rates, plus the head apart):
    - the head (pooler / classifier: PEFT's modules_to_save copies, or a head-only model's head) trains at
      ``head_lr`` (None: ``lr``), so methods whose adapters want different rates can share one head rate;
    - adapter parameters whose name contains one of ``method.fast_factors`` (the method's fast factor: LoRA's B as
      in LoRA+, DCFT's kernel C, LoKr's w1, SoRA's B) at ``lr * factor_lr_ratio``;
    - every other trainable parameter at ``lr``.
    Why not ``peft.optimizers.create_loraplus_optimizer``: it puts every 1-D parameter (the head's biases too) into
    B's group at ``lr * ratio``, has no head group and knows only LoRA's B.
    With ``head_lr`` None and ratio 1 the groups all share ``lr``: AdamW's update is per element, so the run is the
    same as with one group.

    The optimizer is AdamW over these groups unless ``method.make_optimizer`` returns its own (LoRA-FA: PEFT's
    LoRA-FA optimizer over the same groups); either way the schedule below is built on it.
    """
    heads = head_prefixes(model)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(name.startswith(pre) for pre in heads):
            role = "head"
        elif any(f in name for f in method.fast_factors):
            role = "fast"
        else:
            role = "adapter"
        groups.setdefault((role, _no_decay(name, param)), []).append(param)
    rates = {"adapter": lr, "fast": lr * factor_lr_ratio, "head": lr if head_lr is None else head_lr}
    param_groups = [{"params": params, "lr": rates[role], "weight_decay": 0.0 if no_decay else weight_decay,
                     "name": f"{role}{'/no_decay' if no_decay else ''}"}
                    for (role, no_decay), params in sorted(groups.items(), key=lambda kv: (ROLES.index(kv[0][0]),
                                                                                             kv[0][1]))]
    optimizer = method.make_optimizer(model, param_groups, lr=lr, betas=tuple(betas), eps=eps)
    if optimizer is None:
        optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), eps=eps)
    warmup = warmup_steps or int(math.ceil(warmup_ratio * total_steps))
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, max(total_steps, 1))


ROLES = ("adapter", "fast", "head")


class AdapterModule(pl.LightningModule):
    """``optim``: the run's optimizer settings (``build_optimizer``'s learning rates, weight decay, AdamW's betas and
    eps, warmup); None for a module that only evaluates (``evaluate.py``)."""

    def __init__(self, model: nn.Module, method: Method, evaluator: nn.Module, *, main_metric: str,
                 eval_names: tuple[str, ...], optim: OptimConfig | None = None, greater_is_better: bool = True,
                 seed: int = 0, fail_on_nonfinite_loss: bool = True,
                 on_evaluation: Callable[[dict], None] | None = None):
        super().__init__()
        self.model = model
        self.method = method
        self.evaluator = evaluator
        keep_metrics_local(evaluator)  # under DDP every process scores the gathered outputs (see below)
        self.main_metric = main_metric
        self.greater_is_better = greater_is_better  # False: the best evaluation has the lowest main metric (perplexity)
        self.eval_names = tuple(eval_names)
        self.optim = optim
        self.fail_on_nonfinite_loss = fail_on_nonfinite_loss
        self.on_evaluation = on_evaluation
        self.seed = seed
        self.evaluations: list[dict] = []
        self._scored: list[tuple[int, int, Any]] = []  # DDP: (eval set, batch index, evaluator input) of this process
        # Only adapter / head weights are trainable; checkpoints hold just those (and load non-strictly).
        self.strict_loading = False

    # ---- training ---------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # from_pretrained() returns modules in eval mode and Lightning keeps each module's mode, so switch the
        # model to train mode explicitly (dropout on, as in the paper's runs); validation restores it afterwards.
        self.model.train()

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k != "meta"}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout masks depend on (seed, step, micro-batch, rank) only — not on what ran before (evaluations, a
        # resume) — so a killed-and-resumed run draws exactly what an uninterrupted one draws. The micro-batch of an
        # accumulation window (global_step moves once per window) adds 0 without accumulation: the same seeds as ever.
        micro = batch_idx % max(int(self.trainer.accumulate_grad_batches), 1)
        torch.manual_seed((self.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank + 7_919 * micro)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.model(**self.model_inputs(batch))
        task_loss = outputs.loss  # a model from method.build adds no regularizer itself (DCFT: methods.DCFTMethod)
        reg = self.method.regularizer(self.model)
        loss = task_loss + reg
        if self.fail_on_nonfinite_loss:
            bad = (~torch.isfinite(loss.detach())).float()
            if self.trainer.world_size > 1:  # all ranks stop together: one alone would leave the others waiting
                bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
            if bad > 0:
                raise NonFiniteLossError(self.global_step, float(loss.detach()))
        batch_size = batch["input_ids"].shape[0]
        sync = self.trainer.world_size > 1  # DDP: log the mean over processes (the global batch), not rank 0's share
        self.log("train/task_loss", task_loss.detach(), prog_bar=True, batch_size=batch_size, sync_dist=sync)
        self.log("train/reg_loss", reg.detach(), batch_size=batch_size, sync_dist=sync)
        self.log("train/loss", loss.detach(), batch_size=batch_size, sync_dist=sync)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Lightning zeroes gradients inside the next step's closure, so right after optimizer.step() the
        # gradients are still there: the place AdaLoRA's update_and_allocate needs (global_step is 0-based).
        super().optimizer_step(*args, **kwargs)
        self.method.on_step(self.model, self.global_step)

    def configure_optimizers(self):
        optim = self.optim
        if optim is None:
            raise RuntimeError("AdapterModule was built without optim settings (an evaluation-only module)")
        total_steps = int(self.trainer.estimated_stepping_batches)
        self.method.set_total_steps(self.model, total_steps)
        optimizer, scheduler = build_optimizer(
            self.model, self.method, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas, eps=optim.eps,
            warmup_steps=optim.warmup_steps, warmup_ratio=optim.warmup_ratio, total_steps=total_steps,
            head_lr=optim.head_lr, factor_lr_ratio=optim.factor_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- evaluation -------------------------------------------------------------------------
    # Under DDP every process evaluates whole single-process batches, each batch on exactly one process
    # (data/resumable.py: eval_loader). The evaluator's model part (score_batch) runs here; its metric part
    # (add_scored) runs at the end of the pass on every process, over all processes' outputs put back into
    # single-process order, so the metrics (floating-point sums included) are exactly those of one process.
    def _distributed_eval(self) -> bool:
        return self._trainer is not None and self.trainer.world_size > 1

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._distributed_eval():
            self.evaluator.update(self.model, batch, dataloader_idx)
            return
        scored = self.evaluator.score_batch(self.model, batch, dataloader_idx)
        index = self._single_process_batch_index(batch_idx, dataloader_idx)
        if index is not None:
            self._scored.append((dataloader_idx, index, _to_device(scored, "cpu")))

    def _single_process_batch_index(self, batch_idx: int, dataloader_idx: int) -> int | None:
        from .data.resumable import EvalBatches

        loaders = self.trainer.val_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        sampler = getattr(loader, "batch_sampler", None)
        if not isinstance(sampler, EvalBatches):
            raise RuntimeError("distributed evaluation needs the data module's eval_loader (data/resumable.py); "
                               f"eval set {dataloader_idx} has a {type(sampler).__name__}")
        return sampler.global_index(batch_idx)

    def _add_all_processes_scored(self) -> None:
        import torch.distributed as dist

        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self._scored)
        self._scored = []
        merged = {}
        for loader_idx, index, scored in sorted((item for part in gathered for item in part), key=lambda t: t[:2]):
            merged.setdefault((loader_idx, index), scored)
        for (loader_idx, _), scored in merged.items():
            self.evaluator.add_scored(_to_device(scored, self.device), loader_idx)

    def on_validation_epoch_end(self) -> None:
        if self._distributed_eval():
            self._add_all_processes_scored()
        metrics = {k: float(v) for k, v in self.evaluator.compute().items()}
        self.evaluator.reset()
        if self.trainer.sanity_checking or not metrics:
            return
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == self.main_metric, sync_dist=False)
        record = {"step": int(self.global_step), "epoch": int(self.current_epoch), "metrics": metrics}
        diagnostics = self.method.diagnostics(self.model)
        if diagnostics:  # factor norms and ||ΔW|| / ||W|| at this evaluation (what grew, and when)
            record["diagnostics"] = diagnostics
            for name, value in diagnostics.items():
                self.log(f"diag/{name}", value, sync_dist=False)
        # a repeated evaluation at the same step (e.g. end of epoch right after a periodic one) is kept once
        if not self.evaluations or self.evaluations[-1]["step"] != record["step"]:
            self.evaluations.append(record)
            if self.on_evaluation is not None and self.trainer.is_global_zero:
                self.on_evaluation(record)

    def best_evaluation(self) -> dict | None:
        return best_evaluation(self.evaluations, self.main_metric, self.greater_is_better)

    # ---- checkpoints: trainable weights + the run's evaluation history + method state ------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        buffers = {n for n, _ in self.named_buffers()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in trainable or k in buffers and "lora_" in k}
        checkpoint["dcft_lab"] = {"evaluations": self.evaluations, "method_state": _method_state(self.model)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # (where the data stood is callbacks.ResumePosition's part of the checkpoint)
        state = checkpoint.get("dcft_lab", {})
        self.evaluations = list(state.get("evaluations", []))
        _load_method_state(self.model, state.get("method_state"))


def _to_device(value: Any, device: Any) -> Any:
    """Tensors inside tuples / lists / dicts moved to device (other values as they are)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _method_state(model: nn.Module) -> dict | None:
    """AdaLoRA's importance statistics (its allocator's state), so a resumed run allocates ranks identically."""
    tuner = getattr(model, "base_model", None)
    alloc = getattr(tuner, "rankallocator", None)
    if alloc is None:
        return None
    return {"ipt": dict(alloc.ipt), "exp_avg_ipt": dict(alloc.exp_avg_ipt), "exp_avg_unc": dict(alloc.exp_avg_unc),
            "rank_pattern": getattr(tuner.peft_config[tuner.trainable_adapter_name], "rank_pattern", None)}


def _load_method_state(model: nn.Module, state: dict | None) -> None:
    tuner = getattr(model, "base_model", None)
    alloc = getattr(tuner, "rankallocator", None)
    if alloc is None or not state:
        return
    alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
    if state.get("rank_pattern") is not None:
        tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = state["rank_pattern"]
