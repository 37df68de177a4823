"""Decoder-only (causal LM) data: prompt -> response fine-tuning from JSON lines (task ``sft``), and XSum / CNN-DM as
prompt -> summary (the summarization tasks on a decoder backbone).

A training row is ``[special prefix] prompt response EOS``, tokenized as two pieces (the prompt, then the response
with EOS appended), right-padded; ``labels`` are -100 on the prompt and on padding, so the causal-LM loss (HF shifts
the labels itself) covers the response tokens and the EOS that ends them. The special prefix is whatever the
tokenizer puts before a single text (Llama's BOS; nothing for GPT-2 / Qwen2). Rows longer than ``max_length`` are
cut at the end; a row whose prompt alone fills ``max_length`` has nothing to learn and is dropped (counted in the
run record). Evaluation: dev loss (mean NLL per response token, nats) and perplexity = exp(loss) for ``sft``;
ROUGE of ``generate`` continuations of left-padded prompts for summarization (the same ROUGE code as BART).

The JSON-lines format of ``task.train_file`` / ``task.eval_file``, one object per line (other fields are ignored)::

    {"prompt": "Translate to French: cheese\\n", "response": "fromage"}

Prompt and response are concatenated as they are: put any separator (a newline, "Answer:") into the prompt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Value
from torch import nn
from torchmetrics import SumMetric

from .base import DataInputError, EvalSet, TaskDataModule
from .evaluator import Evaluator
from .jsonl import iter_jsonl, string_columns
from .splits import eval_subset_rows, train_and_eval_examples
from .summarization import GenerationSettings, RougeEvaluator, Seq2SeqDataModule, sentence_splitter
from .tasks import FAMILY_TASK_KEYS, TaskSpec

PROMPT_FEATURES = Features({"prompt": Value("string"), "response": Value("string")})
IGNORE_INDEX = -100
# Summarization prompt on a decoder (GPT-2's "TL;DR:" cue); the target is " " + summary + EOS.
DEFAULT_SUMMARY_TEMPLATE = "{document}\nTL;DR:"


# ---------------------------------------------------------------------------------------------------- reading
def read_prompt_response_jsonl(path: str | Path) -> Dataset:
    """Rows with string fields ``prompt`` and ``response`` (other fields ignored), one JSON object per line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt/response file not found: {path}; expected JSON lines with string fields "
                                "'prompt' and 'response'")
    rows = string_columns(path, ("prompt", "response"))
    if not rows["prompt"]:
        raise ValueError(f"{path} has no rows; expected JSON lines with 'prompt' and 'response'")
    return Dataset.from_dict(rows, features=PROMPT_FEATURES)


def sft_no_predictions(task: str) -> str:
    return (f"predictions (generated responses) are not supported for task '{task}': it is scored by perplexity on "
            "JSON lines with string fields 'prompt' and 'response'")


def read_scored_file(path: str | Path, task: str) -> Dataset:
    """A user-given prompt/response file to score; a row with a 'prompt' and no 'response' (a request for predictions,
    which perplexity tasks have none of) is a one-line DataInputError naming the row."""
    for number, row in iter_jsonl(path, "an object with string fields 'prompt' and 'response'"):
        if isinstance(row.get("prompt"), str) and "response" not in row:
            raise DataInputError(f"{path}:{number} has no 'response'; {sft_no_predictions(task)}")
    return read_prompt_response_jsonl(path)


# ------------------------------------------------------------------------------------------------ tokenizing
def special_prefix(tokenizer) -> list[int]:
    """The token ids the tokenizer puts before a single text: Llama's BOS, nothing for GPT-2 / Qwen2."""
    full = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; "
                         "a causal LM needs one to end responses")
    return int(tokenizer.eos_token_id)


def build_rows(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], prefix: Sequence[int],
               eos: int, max_length: int) -> tuple[dict[str, list], int]:
    """input_ids / attention_mask / labels of prefix + prompt + response + EOS (labels -100 on prefix and prompt),
    cut at max_length; rows left without a response token are dropped. Returns (columns, number dropped)."""
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    dropped = 0
    for prompt, response in zip(prompt_ids, response_ids):
        context = [*prefix, *prompt]
        target = [*response, eos]
        ids = (context + target)[:max_length]
        labels = ([IGNORE_INDEX] * len(context) + target)[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append(labels)
    return columns, dropped


def tokenize_prompt_response(dataset: Dataset, tokenizer, max_length: int) -> tuple[Dataset, int]:
    """(features, number of rows dropped because the prompt alone fills max_length)."""
    prompts = tokenizer(list(dataset["prompt"]), add_special_tokens=False)["input_ids"]
    responses = tokenizer(list(dataset["response"]), add_special_tokens=False)["input_ids"]
    columns, dropped = build_rows(prompts, responses, special_prefix(tokenizer), _eos_id(tokenizer), max_length)
    if not columns["input_ids"]:
        raise ValueError(f"every prompt fills max_length={max_length} tokens: nothing left to train or score on; "
                         "raise task.max_length")
    return Dataset.from_dict(columns), dropped


class CausalLMCollator:
    """Pads input_ids (with the pad id), attention_mask (0) and labels (-100) to the longest row, on the right
    (training, scoring) or on the left (generation: every prompt then ends at the last position). Reference texts go
    to batch["meta"]["references"]."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}; expected 'left' or 'right'")
        self.pad_token_id, self.padding_side = int(pad_token_id), padding_side

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(row["input_ids"]) for row in rows)
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch: dict[str, Any] = {}
        for key, pad in pads.items():
            if key not in rows[0]:
                continue
            padded = []
            for row in rows:
                values = list(row[key])
                fill = [pad] * (longest - len(values))
                padded.append(fill + values if self.padding_side == "left" else values + fill)
            batch[key] = torch.tensor(padded, dtype=torch.long)
        if "references" in rows[0]:
            batch["meta"] = {"references": [row["references"] for row in rows]}
        return batch


# ------------------------------------------------------------------------------------------------ evaluation
class PerplexityEvaluator(Evaluator):
    """Dev loss and perplexity over the response tokens of the eval set: loss = (sum of token NLLs) / (number of
    tokens) over the whole set (token-weighted, in nats), perplexity = exp(loss). Sums are torchmetrics SumMetrics
    of per-batch (NLL sum, token count) pairs; under DDP the training module gathers those pairs from every process
    and adds them in single-process order (AdapterModule)."""

    def __init__(self):
        super().__init__()
        self.nll = SumMetric()
        self.tokens = SumMetric()

    @torch.no_grad()
    def score_batch(self, model: nn.Module, batch: Mapping[str, Any], dataloader_idx: int = 0) -> tuple:
        """The model's part of update(): (NLL sum, response-token count) of one eval batch, float64 scalars."""
        if "labels" not in batch:
            raise ValueError(f"batch has no 'labels' (keys: {sorted(batch)}); perplexity needs the response labels")
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return self.nll_and_tokens(logits, batch["labels"])

    @staticmethod
    @torch.no_grad()
    def nll_and_tokens(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = labels[:, 1:].reshape(-1)  # position t predicts token t + 1
        flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
        nll = F.cross_entropy(flat, shifted, ignore_index=IGNORE_INDEX, reduction="sum").double()
        return nll, (shifted != IGNORE_INDEX).sum().double()

    def add_scored(self, scored: tuple, dataloader_idx: int = 0) -> None:
        nll, tokens = scored
        self.nll.update(nll)
        self.tokens.update(tokens)

    @torch.no_grad()
    def update_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.add_scored(self.nll_and_tokens(logits, labels))

    def compute(self) -> dict[str, float]:
        tokens = float(self.tokens.compute())
        if tokens == 0:
            return {}
        loss = float(self.nll.compute()) / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    def reset(self) -> None:
        self.nll.reset()
        self.tokens.reset()


def decoder_generate_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    """The summarization beam-search settings for a decoder-only model: lengths count generated tokens only
    (max_new_tokens, else max_length, as the summary's length; min_length -> min_new_tokens). Note: on a decoder,
    no_repeat_ngram_size also sees the prompt (the article); task.generation.no_repeat_ngram_size=0 turns it off."""
    kwargs = settings.generate_kwargs()
    kwargs.pop("max_length", None)
    kwargs["max_new_tokens"] = settings.max_new_tokens if settings.max_new_tokens is not None else settings.max_length
    min_length = kwargs.pop("min_length", 0)
    if min_length:
        kwargs["min_new_tokens"] = min_length
    return kwargs


class DecoderRougeEvaluator(RougeEvaluator):
    """ROUGE (as for BART) of a decoder's continuations: generate from the left-padded prompts, decode the new
    tokens only, score against batch["meta"]["references"]."""

    @torch.no_grad()
    def score_batch(self, model: nn.Module, batch: Mapping[str, Any], dataloader_idx: int = 0) -> tuple:
        """(decoded continuations, references) of one eval batch; update() is RougeEvaluator's."""
        if "meta" not in batch or "references" not in batch["meta"]:
            raise ValueError("summarization eval batch lacks meta['references']; "
                             "use the data module's val_dataloader()")
        prompt_length = batch["input_ids"].shape[1]
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   pad_token_id=self.tokenizer.pad_token_id,
                                   **decoder_generate_kwargs(self.generation))
        predictions = self.tokenizer.batch_decode(generated[:, prompt_length:], skip_special_tokens=True)
        return predictions, batch["meta"]["references"]


# ------------------------------------------------------------------------------------------------ data modules
class PromptResponseDataModule(TaskDataModule):
    """Task ``sft``: {"prompt", "response"} JSON lines for a decoder-only LM; batches input_ids, attention_mask,
    labels (-100 on prompt and padding), right-padded. ``train_from_eval=N`` carves N random rows of the eval file
    for training instead of reading ``train_file``. ``train_limit`` / ``eval_limit`` take seeded (split_seed) subsets;
    ``seed`` shuffles the train loader."""

    task_keys = FAMILY_TASK_KEYS["causal_lm"]

    def __init__(self, spec: TaskSpec, task: Any, data: Any, tokenizer: Any, seed: int, *, split_seed: int = 0):
        """``task`` / ``data``: the run's config_schema.TaskConfig / DataConfig; ``seed``: the run's."""
        if spec.family != "causal_lm":
            raise ValueError(f"task '{spec.name}' is not a prompt/response task; expected family causal_lm")
        if tokenizer is None:
            raise ValueError("PromptResponseDataModule needs a tokenizer")
        if task.eval_file is None:
            raise ValueError(f"task '{spec.name}' needs task.eval_file=<prompt/response .jsonl> (and "
                             "task.train_file=..., or data.train_from_eval=N to carve training rows out of the "
                             "eval file)")
        if task.train_file is None and data.train_from_eval is None:
            raise ValueError(f"task '{spec.name}' needs task.train_file=<prompt/response .jsonl>, or "
                             "data.train_from_eval=N to carve N training rows out of task.eval_file")
        super().__init__(spec, task, data, tokenizer, CausalLMCollator(tokenizer.pad_token_id, "right"), seed)
        self.train_file = Path(task.train_file).expanduser() if task.train_file else None
        self.eval_file = Path(task.eval_file).expanduser()
        self.max_length = task.max_length
        self.train_limit, self.eval_limit, self.train_from_eval = data.train_limit, data.eval_limit, data.train_from_eval
        self.split_seed = split_seed
        self.train_features: Dataset | None = None
        self.eval_features: Dataset | None = None
        self._info: dict[str, Any] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.eval_features is not None:
            return
        train, evaluation, info = train_and_eval_examples(
            read_prompt_response_jsonl(self.eval_file), lambda: read_prompt_response_jsonl(self.train_file),
            source="local", eval_file=self.eval_file.resolve(),
            train_file=self.train_file.resolve() if self.train_file else None, train_from_eval=self.train_from_eval,
            train_limit=self.train_limit, eval_limit=self.eval_limit, fallback_train_cap=None,
            fallback_eval_limit=None, split_seed=self.split_seed, what="rows")
        self.train_features, dropped_train = tokenize_prompt_response(train, self.tokenizer, self.max_length)
        self.eval_features, dropped_eval = tokenize_prompt_response(evaluation, self.tokenizer, self.max_length)
        info.update(dropped_prompt_too_long={"train": dropped_train, "eval": dropped_eval},
                    response_tokens={"train": _label_count(self.train_features),
                                     "eval": _label_count(self.eval_features)})
        self._info = info

    def make_evaluator(self) -> PerplexityEvaluator:
        return PerplexityEvaluator()

    def data_info(self) -> dict[str, Any]:
        self.setup()
        return dict(self._info, task=self.spec.name, family="causal_lm", max_length=self.max_length,
                    tokenizer=self.tokenizer.name_or_path, pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id, special_prefix=special_prefix(self.tokenizer),
                    loss_on="response tokens + EOS (prompt and padding labels -100)")

    # ---- what dcft_lab.evaluate scores: loss and perplexity on the response tokens ------------
    file_expected = "JSON lines with string fields 'prompt' and 'response'"

    def check_eval_input(self, split: str, file: str | None) -> None:
        if split == "test":
            raise DataInputError(f"task '{self.spec.name}' has no test split and {sft_no_predictions(self.spec.name)}; "
                                 "expected split=validation|train, or file=<prompt/response .jsonl> to score "
                                 "perplexity on it")

    def validation_eval_set(self) -> EvalSet:
        self.setup("validate")
        data = self.data_info()
        return EvalSet(self.val_dataloader(), self.make_evaluator(), tuple(self.eval_names), True,
                       _eval_counts(self.eval_features, 0), [str(f) for f in data.get("files", [])][-1:], data=data)

    def train_eval_set(self, limit: int | None) -> EvalSet:
        self.setup("fit")
        data = self.data_info()
        features = self.train_features  # the run's training rows (train_limit, or carved out of the eval file)
        if limit is not None:
            features = features.select(eval_subset_rows(len(features), limit))
        return EvalSet([self._eval_loader(features)], self.make_evaluator(), ("train",), True,
                       _eval_counts(features, 0), [str(f) for f in data.get("files", [])][:1], data=data)

    def file_eval_set(self, paths: list[Path], split: str, limit: int | None) -> EvalSet:
        [path] = paths
        rows = read_scored_file(path, self.spec.name)
        features, dropped = tokenize_prompt_response(rows.select(eval_subset_rows(len(rows), limit)), self.tokenizer,
                                                     self.max_length)
        return EvalSet([self._eval_loader(features)], self.make_evaluator(), ("file",), True,
                       _eval_counts(features, dropped), [str(path)])


def _eval_counts(features: Dataset, dropped: int) -> dict[str, int]:
    counts = {"examples": len(features), "response_tokens": _label_count(features)}
    if dropped:
        counts["dropped_prompt_too_long"] = dropped
    return counts


def _label_count(features: Dataset) -> int:
    return sum(sum(label != IGNORE_INDEX for label in row) for row in features["labels"])


class DecoderSummarizationDataModule(Seq2SeqDataModule):
    """XSum / CNN-DM for a decoder-only LM: the same examples, carving, fallback and ROUGE as ``Seq2SeqDataModule``
    (BART), as prompt -> summary. The prompt is ``prompt_template`` (default ``"{document}\\nTL;DR:"``) with the
    document truncated to ``max_source_length`` tokens; the target is " " + summary (at most ``max_target_length``
    tokens) + EOS. Train batches are right-padded with labels on the summary only; eval batches hold the prompts
    alone, left-padded, for ``generate`` (``task.generation``: lengths count new tokens, see
    ``decoder_generate_kwargs``)."""

    def __init__(self, spec: TaskSpec, task: Any, data: Any, tokenizer: Any, seed: int, **kwargs: Any):
        super().__init__(spec, task, data, tokenizer, seed, **kwargs)
        self.prompt_template = task.prompt_template or DEFAULT_SUMMARY_TEMPLATE
        if self.prompt_template.count("{document}") != 1:
            raise ValueError(f"task.prompt_template={self.prompt_template!r}; expected exactly one '{{document}}'")
        self.collator = CausalLMCollator(tokenizer.pad_token_id, "right")
        self.eval_collator = CausalLMCollator(tokenizer.pad_token_id, "left")

    def _prompts(self, documents: Sequence[str]) -> list[list[int]]:
        before, after = self.prompt_template.split("{document}")
        encode = lambda texts: self.tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
        head = encode([before])[0] if before else []
        tail = encode([after])[0] if after else []
        return [[*head, *doc[: self.max_source_length], *tail] for doc in encode(list(documents))]

    def _features(self, examples: Dataset, train: bool) -> Dataset:
        prompts = self._prompts(examples["document"])
        if not train:
            prefix = special_prefix(self.tokenizer)
            rows = [[*prefix, *prompt] for prompt in prompts]
            return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
                                      "references": list(examples["summary"])})
        summaries = self.tokenizer([" " + s for s in examples["summary"]], add_special_tokens=False)["input_ids"]
        summaries = [s[: self.max_target_length] for s in summaries]
        longest = len(special_prefix(self.tokenizer)) + max(len(p) for p in prompts) + self.max_target_length + 1
        columns, _ = build_rows(prompts, summaries, special_prefix(self.tokenizer), _eos_id(self.tokenizer), longest)
        return Dataset.from_dict(columns)

    def make_evaluator(self) -> DecoderRougeEvaluator:
        return DecoderRougeEvaluator(self.tokenizer, self.generation)

    def data_info(self) -> dict[str, Any]:
        return dict(super().data_info(), family="causal_lm", prompt_template=self.prompt_template,
                    generate_kwargs=decoder_generate_kwargs(self.generation), sentence_splitter=sentence_splitter())
