"""A run's parts, built from its config one way for everyone: training (``training.py``) and a reopened run
(``saved_run.py``, hence ``evaluate`` and ``export``) call these, so they see the same model and data. The caller
looks up the task spec and the backbone spec once and resolves the model family (``BackboneSpec.model_family``: the
task's family, or "causal_lm" for generation on a decoder-only backbone; a saved run: the one its record names), then
hands them down:

- ``build_model``: the backbone with the head of its model family and the LLM options (same seed: the tiny random
  backbones and the random heads come out identical),
- ``adapt_model``: the method applied to it (target / head modules from the backbone, PEFT task type from the model
  family, ``TASK_TYPES``),
- ``run_datamodule``: the data module for the model family (training checks the data root first,
  ``check_data_root``).
"""

from __future__ import annotations

from pathlib import Path

# PEFT task_type by model family (the task's family, or "causal_lm" for generation on a decoder-only backbone)
TASK_TYPES = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "qa": "QUESTION_ANS", "seq2seq": "SEQ_2_SEQ_LM",
              "causal_lm": "CAUSAL_LM"}
_BACKBONE_OPTIONS = ("gradient_checkpointing", "dtype")


# ------------------------------------------------------------------------------------------------ the model
def backbone_options(rc) -> dict:
    """The optional build_backbone arguments set in the config (decoder-only LLM options), unset ones left out."""
    return {name: getattr(rc.backbone, name) for name in _BACKBONE_OPTIONS if getattr(rc.backbone, name, None)}


def build_model(rc, spec, backbone, family: str, options: dict | None = None):
    """(model, tokenizer): the run's backbone (``backbone``, its BackboneSpec) with the head of ``family``, for
    task ``spec``. ``options`` default to ``backbone_options(rc)``; a saved run passes the ones its record names."""
    from .backbones import build_backbone

    options = backbone_options(rc) if options is None else options
    model, tokenizer, _ = build_backbone(
        backbone, family, spec.head_size, weights=rc.backbone.weights, path=rc.backbone.path,
        classifier_dropout=rc.optim.classifier_dropout, seed=rc.seed, **options,
    )
    return model, tokenizer


def adapt_model(model, method, backbone, family: str):
    """(adapted model, target modules, head modules): ``method`` applied to ``model`` -- its own target / head modules
    when the config names them, else the method's default on this backbone (``Method.default_targets``: the
    backbone's named target set; the adapter sites of HAdapter / PAdapter; none for full / BitFit) and the
    backbone's head for the model family."""
    targets = method.target_modules or method.default_targets(backbone)
    heads = method.modules_to_save or backbone.head_modules(family)
    return method.build(model, targets, heads, TASK_TYPES[family]), targets, heads


# ------------------------------------------------------------------------------------------------- the data
def check_data_root(data) -> None:
    """A configured data root (data.root / $DCFT_LAB_DATA) must exist unless data.source=hub: with source=auto a
    missing root would otherwise fall back to the hub and report only that."""
    if data.root is not None and data.source != "hub" and not Path(data.root).is_dir():
        raise FileNotFoundError(f"data root {data.root} not found (data.root / $DCFT_LAB_DATA); expected a folder "
                                "laid out like <root>/glue/<Task>/train.tsv")


def hub_fallback_note(data, task) -> str | None:
    """One line for the console when no local data root is configured (data.root / $DCFT_LAB_DATA unset) and the
    task's public dataset will come from the Hugging Face hub (data.source=auto); None otherwise."""
    if data.root not in (None, "") or data.source != "auto" or task.train_file:
        return None
    return (f"data: no local data root (data.root / $DCFT_LAB_DATA unset): loading the public {task.name} dataset "
            "from the Hugging Face hub (no token needed)")


def run_datamodule(rc, spec, tokenizer, family: str):
    """The run's data module for task ``spec`` and the model family (generation tasks on a decoder: the causal-LM
    data modules)."""
    from .data.factory import build_datamodule

    return build_datamodule(spec, rc.task, rc.data, tokenizer, rc.seed, model_family=family)
