"""Task config -> the data module of its family (GLUE classification / regression, SQuAD, summarization; on a
decoder-only backbone also prompt -> response and summarization as prompt -> summary)."""

from __future__ import annotations

from typing import Any

# QA / summarization with no local train file and no data.train_from_eval: the run can only check the pipeline, so
# it carves 10% of the eval file (at most this many examples) for training and, unless data.eval_limit is set,
# evaluates on this many of the rest (recorded under data.fallback in results.json). Small enough that the tiny
# test backbones finish in minutes on 2 CPU cores; set data.train_from_eval to choose the slice yourself.
FALLBACK_TRAIN_CAP = 100
FALLBACK_EVAL_LIMIT = 100


def build_datamodule(spec: Any, task_cfg: Any, data_cfg: Any, tokenizer: Any, seed: int,
                     model_family: str | None = None):
    """The data module of ``spec`` (data.tasks.TaskSpec, looked up once by the caller) with the run's typed
    ``task_cfg`` / ``data_cfg`` (config_schema.TaskConfig / DataConfig) and seed. ``model_family``
    (``BackboneSpec.model_family``; default the task's family) is "causal_lm" for generation tasks on a decoder-only
    backbone."""
    args = (spec, task_cfg, data_cfg, tokenizer, seed)
    fallback = dict(fallback_train_cap=FALLBACK_TRAIN_CAP, fallback_eval_limit=FALLBACK_EVAL_LIMIT)
    if spec.family in ("classification", "regression"):
        from .glue import GlueDataModule

        if data_cfg.train_from_eval:
            raise ValueError(f"data.train_from_eval is for QA / summarization smoke runs; GLUE task '{spec.name}' "
                             "has its own train split (use data.train_limit to subsample)")
        return GlueDataModule(*args)
    if data_cfg.train_holdout:
        raise ValueError(f"data.train_holdout={data_cfg.train_holdout} is implemented for GLUE tasks only; "
                         f"task '{spec.name}' is {spec.family}")
    if model_family == "causal_lm" or spec.family == "causal_lm":
        from .causal_lm import DecoderSummarizationDataModule, PromptResponseDataModule

        if spec.family == "causal_lm":
            return PromptResponseDataModule(*args)
        if spec.family == "seq2seq":
            return DecoderSummarizationDataModule(*args, **fallback)
        raise ValueError(f"task '{spec.name}' ({spec.family}) has no decoder-only (causal LM) form; expected a "
                         "classification, regression, summarization or sft task")
    if spec.family == "qa":
        from .squad import SquadDataModule

        return SquadDataModule(*args, **fallback)
    if spec.family == "seq2seq":
        from .summarization import Seq2SeqDataModule

        return Seq2SeqDataModule(*args, **fallback)
    raise ValueError(f"task '{spec.name}' has unknown family {spec.family!r}")
