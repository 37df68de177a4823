"""Task config -> the data module of its family (GLUE classification / regression, SQuAD, summarization; on a
decoder-only backbone also prompt -> response and summarization as prompt -> summary)."""

from __future__ import annotations

from typing import Any

from .tasks import get_task

# QA / summarization with no local train file and no data.train_from_eval: the run can only check the pipeline, so
# it carves 10% of the eval file (at most this many examples) for training and, unless data.eval_limit is set,
# evaluates on this many of the rest (recorded under data.fallback in results.json). Small enough that the tiny
# test backbones finish in minutes on 2 CPU cores; set data.train_from_eval to choose the slice yourself.
FALLBACK_TRAIN_CAP = 100
FALLBACK_EVAL_LIMIT = 100


def build_datamodule(task_cfg: Any, data_cfg: Any, tokenizer: Any, seed: int, model_family: str | None = None):
    """``model_family`` (``BackboneSpec.model_family``; default the task's family) is "causal_lm" for generation
    tasks on a decoder-only backbone. The task spec is looked up here, once, and handed to the data module (and by
    it to its evaluator)."""
    spec = get_task(task_cfg.name)
    common = dict(
        tokenizer=tokenizer, data_root=data_cfg.root, source=data_cfg.source,
        train_batch_size=task_cfg.train_batch_size, eval_batch_size=task_cfg.eval_batch_size,
        train_limit=data_cfg.train_limit, eval_limit=data_cfg.eval_limit, seed=seed, num_workers=data_cfg.num_workers,
    )
    if spec.family in ("classification", "regression"):
        from .glue import GlueDataModule

        if data_cfg.train_from_eval:
            raise ValueError(f"data.train_from_eval is for QA / summarization smoke runs; GLUE task '{spec.name}' "
                             "has its own train split (use data.train_limit to subsample)")
        return GlueDataModule(spec, max_length=task_cfg.max_length, cache_dir=data_cfg.cache_dir,
                              train_holdout=data_cfg.train_holdout, train_subset_seed=data_cfg.train_subset_seed,
                              **common)
    if data_cfg.train_holdout:
        raise ValueError(f"data.train_holdout={data_cfg.train_holdout} is implemented for GLUE tasks only; "
                         f"task '{spec.name}' is {spec.family}")
    if model_family == "causal_lm" or spec.family == "causal_lm":
        return _causal_lm_datamodule(spec, task_cfg, data_cfg, common)
    if spec.family == "qa":
        from .squad import SquadDataModule

        return SquadDataModule(
            spec, max_length=task_cfg.max_length, doc_stride=task_cfg.doc_stride,
            train_from_eval=data_cfg.train_from_eval, n_best=task_cfg.n_best,
            max_answer_length=task_cfg.max_answer_length,
            null_score_diff_threshold=task_cfg.null_score_diff_threshold,
            fallback_train_cap=FALLBACK_TRAIN_CAP, fallback_eval_limit=FALLBACK_EVAL_LIMIT, **common,
        )
    if spec.family == "seq2seq":
        from .summarization import Seq2SeqDataModule

        return Seq2SeqDataModule(
            spec, max_source_length=task_cfg.max_source_length, max_target_length=task_cfg.max_target_length,
            train_from_eval=data_cfg.train_from_eval, generation=dict(task_cfg.generation) or None,
            fallback_train_cap=FALLBACK_TRAIN_CAP, fallback_eval_limit=FALLBACK_EVAL_LIMIT, **common,
        )
    raise ValueError(f"task '{spec.name}' has unknown family {spec.family!r}")


def _causal_lm_datamodule(spec, task_cfg: Any, data_cfg: Any, common: dict):
    from .causal_lm import DecoderSummarizationDataModule, PromptResponseDataModule

    if spec.family == "causal_lm":
        return PromptResponseDataModule(
            spec, train_file=task_cfg.train_file, eval_file=task_cfg.eval_file, max_length=task_cfg.max_length,
            train_from_eval=data_cfg.train_from_eval, **common)
    if spec.family == "seq2seq":
        return DecoderSummarizationDataModule(
            spec, max_source_length=task_cfg.max_source_length, max_target_length=task_cfg.max_target_length,
            train_from_eval=data_cfg.train_from_eval, generation=dict(task_cfg.generation) or None,
            prompt_template=task_cfg.prompt_template, fallback_train_cap=FALLBACK_TRAIN_CAP,
            fallback_eval_limit=FALLBACK_EVAL_LIMIT, **common)
    raise ValueError(f"task '{spec.name}' ({spec.family}) has no decoder-only (causal LM) form; expected a "
                     "classification, regression, summarization or sft task")
