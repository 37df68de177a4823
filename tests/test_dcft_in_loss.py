"""DCFT's orthogonality regularizer is part of the PEFT model's training loss (as AdaLoRA's is in PEFT), so
``transformers.Trainer``, a plain loop and ``dcft_lab``'s LightningModule train the same objective, and the lab, which
adds ``method.regularizer(model)`` itself to log it apart, does not count it twice."""

import peft
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from dcft_lab.adapters import DCFTConfig, build_method
from dcft_lab.backbones import build_backbone
from dcft_lab.config_schema import section
from dcft_lab.module import AdapterModule

torch.set_num_threads(1)
LR = 1e-3


def _tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     num_labels=2)
    return transformers.BertForSequenceClassification(config)


def _dcft_bert(task_type="SEQ_CLS", orth_reg_weight=0.3, seed=0):
    model = _tiny_bert(seed)
    torch.manual_seed(seed + 1)
    config = DCFTConfig(kernel_size=8, orth_reg_weight=orth_reg_weight, target_modules=["query", "value", "dense"],
                        modules_to_save=["classifier"], task_type=task_type)
    return peft.get_peft_model(model, config)


def _batch(n=6, length=7, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 2, (n,), generator=g)


def _factor_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and "dcft_" in n}


@pytest.mark.parametrize("task_type", ["SEQ_CLS", None])  # None: PeftModel.forward bypasses the tuner's forward
def test_training_loss_includes_the_regularizer_and_eval_loss_does_not(task_type):
    model = _dcft_bert(task_type)
    inputs, labels = _batch()
    reg = model.base_model.orthogonal_regularizer()
    assert reg.item() > 0.01
    model.train()
    out = model(**inputs, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels) + reg)
    torch.testing.assert_close(out["loss"], out.loss)  # the ModelOutput's item too (transformers.Trainer reads it)
    assert not model.base_model.model._forward_hooks  # the hook lives for one forward only
    assert model(**inputs).loss is None  # no labels: nothing to add to
    model.eval()
    out = model(**inputs, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    model.train()
    with model.disable_adapter():  # adapter off: the base model's loss alone
        out = model(**inputs, labels=labels)
        torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))


def test_plain_loop_backward_includes_the_regularizer():
    """``model(**batch, labels=...).loss.backward()``: A and B get the regularizer's gradient, C none of it."""
    inputs, labels = _batch()
    grads = {}
    for weight in (0.3, 0.0):
        model = _dcft_bert(orth_reg_weight=weight).train()
        model(**inputs, labels=labels).loss.backward()
        grads[weight] = _factor_grads(model)
    assert grads[0.3].keys() == grads[0.0].keys() and grads[0.3]
    for name, grad in grads[0.3].items():
        if "dcft_C" in name:
            torch.testing.assert_close(grad, grads[0.0][name])  # the kernel is not regularized
        else:
            assert not torch.allclose(grad, grads[0.0][name]), name
    # and it is exactly the task loss plus gamma * R, added once
    model = _dcft_bert(orth_reg_weight=0.3).train()
    model.base_model.add_orth_reg_to_loss = False
    out = model(**inputs, labels=labels)
    (out.loss + model.base_model.orthogonal_regularizer()).backward()
    for name, grad in _factor_grads(model).items():
        torch.testing.assert_close(grad, grads[0.3][name])


def test_inference_mode_adapter_adds_nothing(tmp_path):
    _dcft_bert().save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(_tiny_bert(), tmp_path).train()  # is_trainable=False: nothing trains
    inputs, labels = _batch()
    out = loaded(**inputs, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    trainable = peft.PeftModel.from_pretrained(_tiny_bert(), tmp_path, is_trainable=True).train()
    out = trainable(**inputs, labels=labels)
    reg = trainable.base_model.orthogonal_regularizer()
    assert trainable.peft_config["default"].orth_reg_weight == 0.3  # saved and loaded with the adapter
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels) + reg)


def test_method_regularizer_refuses_a_model_that_adds_it_itself():
    method = build_method({"name": "dcft", "kernel_size": 8})
    with pytest.raises(RuntimeError, match="count it twice"):
        method.regularizer(_dcft_bert())


# ---- one step under transformers.Trainer == one step of the lab's LightningModule -------------------------------
def _deberta_dcft(user_code: bool):
    """The lab's tiny DeBERTa with the lab's DCFT method; ``user_code``: the same adapter built with plain
    ``peft.get_peft_model`` from the method's own DCFTConfig, as code outside the lab would."""
    model, _, spec = build_backbone("tiny-deberta", "classification", 2, seed=0)
    for module in model.modules():  # no dropout: both steps see the same function
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    method = build_method({"name": "dcft", "kernel_size": 8, "orth_reg_weight": 0.3})
    targets, heads = spec.target_modules("all"), spec.head_modules("classification")
    torch.manual_seed(1)  # adapter init
    if user_code:
        return method, peft.get_peft_model(model, method.peft_config(targets, heads, "SEQ_CLS", None))
    return method, method.build(model, target_modules=targets, modules_to_save=heads, task_type="SEQ_CLS")


def _deberta_batch(model, n=8, length=10):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, model.config.vocab_size, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (n,), generator=g)}


class _HFGrads(transformers.TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


class _PLGrads(pl.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.requires_grad}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = outputs["loss"].detach().clone()


def test_one_transformers_trainer_step_equals_one_lab_step(tmp_path):
    _, hf_model = _deberta_dcft(user_code=True)
    method, lab_model = _deberta_dcft(user_code=False)
    assert hf_model.base_model.add_orth_reg_to_loss and not lab_model.base_model.add_orth_reg_to_loss
    for (name, a), (_, b) in zip(hf_model.state_dict().items(), lab_model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # the same model and adapter init
    batch = _deberta_batch(hf_model)
    n = batch["input_ids"].shape[0]

    hf_grads = _HFGrads()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=n, max_steps=1, learning_rate=LR,
        max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=0)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
    hf_loss = transformers.Trainer(model=hf_model, args=args, train_dataset=rows,
                                   callbacks=[hf_grads]).train().training_loss

    pl_grads = _PLGrads()
    optim = section("optim", {"lr": LR, "weight_decay": 0.0})  # conf/ defaults for the rest
    module = AdapterModule(lab_model, method, nn.Module(), main_metric="accuracy", eval_names=("validation",),
                           optim=optim)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[pl_grads], default_root_dir=str(tmp_path / "pl"))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))

    # the same objective: loss and every trainable gradient (adapter A, B, C and the head)
    assert pl_grads.loss.item() == pytest.approx(hf_loss, rel=1e-5)
    assert hf_grads.grads.keys() == pl_grads.grads.keys()
    assert any("dcft_A" in name for name in hf_grads.grads)
    for name, grad in hf_grads.grads.items():
        torch.testing.assert_close(pl_grads.grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    # and the lab's logs keep the two parts apart: task loss = the model's loss (no regularizer in it), reg > 0
    logged = trainer.callback_metrics
    reg = logged["train/reg_loss"].item()
    assert reg > 0.01
    assert logged["train/task_loss"].item() + reg == pytest.approx(logged["train/loss"].item(), rel=1e-6)
    assert logged["train/loss"].item() == pytest.approx(hf_loss, rel=1e-5)
