"""A finished run, reopened: its record and resolved config, its saved adapter, and the adapted model rebuilt the
way ``training.py`` built it. Shared by ``python -m dcft_lab.evaluate`` and ``python -m dcft_lab.export``.

The backbone comes from ``build.build_model`` -- the backbone + model family + LLM options build that training
calls too -- with the run's own arguments (same seed, so the tiny random backbones come out identical). For a
decoder-only backbone the model family (``BackboneSpec.model_family``: classification / regression with a ``score``
head, else "causal_lm") and the backbone options (``dtype``, ``gradient_checkpointing``) are the ones the run record
names (``model_family``, ``backbone_options``), so evaluation and export see the model the adapter was trained on.
The adapter comes from ``<run>/adapter/`` (``adapter=final``, the default) or ``<run>/adapter-best/`` (``adapter=best``:
the adapter of the run's best evaluation) through plain PEFT (``PeftModel.from_pretrained``), or, for the methods
that train the model's own weights (``Method.save_format``), ``head.safetensors`` (head-only), ``trained.safetensors``
(BitFit: biases + head) or the whole model (full fine-tuning: ``config.json`` + ``model.safetensors``), loaded into
the rebuilt backbone.

The command line (``parse_command_line``: ``key=value`` arguments, ``-h`` / ``--help``) is read before anything heavy
is imported, so help and argument errors answer at once; ``cli_main`` then quiets the libraries as ``run`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the build shared with training; build_model / backbone_options are also re-exported from here
from .build import backbone_options, build_model, run_datamodule  # noqa: F401
from .records import RESULTS_FILE

ADAPTER_DIR = "adapter"
BEST_ADAPTER_DIR = "adapter-best"  # the adapter of the best evaluation (training.py keeps it up to date)
ADAPTER_CHOICES = {"final": ADAPTER_DIR, "best": BEST_ADAPTER_DIR}  # evaluate / export adapter=...
HELP_FLAGS = ("-h", "--help")
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
HEAD_FILE = "head.safetensors"
TRAINED_FILE = "trained.safetensors"
FULL_WEIGHTS = "model.safetensors"
FULL_CONFIG = "config.json"
# the weights file of each non-PEFT save format (Method.save_format)
SAVED_FILES = {"head": HEAD_FILE, "trained": TRAINED_FILE, "full": FULL_WEIGHTS}
HYDRA_CONFIG = Path(".hydra") / "config.yaml"


class RunInputError(ValueError):
    """A one-line, user-facing error about the command's input (exit code 2)."""


# ------------------------------------------------------------------------------------------- command line
def parse_args(argv: list[str], options: dict[str, Any], overridable: tuple[str, ...], usage: str
               ) -> tuple[dict[str, Any], list[str]]:
    """Hydra-style ``key=value`` arguments: plain keys are the command's ``options`` (their defaults given; a bool
    default makes the value a bool), dotted keys are overrides of the run's config, allowed under the
    ``overridable`` prefixes. Values are kept as typed by OmegaConf.from_dotlist; paths stay raw strings."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    values = dict(options)
    overrides: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or not key:
            raise RunInputError(f"argument {arg!r} is not key=value; usage: {usage}")
        if "." in key:
            if not key.startswith(overridable):
                raise RunInputError(f"cannot override '{key}' of a trained run; expected keys under "
                                    f"{', '.join(p.rstrip('.') for p in overridable)}")
            overrides.append(f"{key}={value}")
            continue
        if key not in options:
            raise RunInputError(f"unknown argument '{key}'; usage: {usage}")
        if isinstance(options[key], bool):
            lowered = value.strip().lower()
            if lowered not in ("true", "false"):
                raise RunInputError(f"{key}={value!r}; expected true or false")
            values[key] = lowered == "true"
        else:
            values[key] = value
    try:
        OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as err:
        raise RunInputError(f"bad override: {str(err).strip().splitlines()[0]}") from None
    return values, overrides


def parse_command_line(argv: list[str], options: dict[str, Any], overridable: tuple[str, ...], usage: str,
                       doc: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """``parse_args`` for a command line: ``-h`` / ``--help`` prints the usage and ``doc`` and exits 0; a bad
    argument is one ``error:`` line and exit 2. Imports nothing heavy (call it before torch is imported)."""
    if any(arg in HELP_FLAGS for arg in argv):
        print(f"usage: {usage}\n\n{(doc or '').strip()}")
        sys.exit(0)
    try:
        return parse_args(argv, options, overridable, usage)
    except RunInputError as err:
        print(f"error: {_first_line(err)}", file=sys.stderr)
        sys.exit(2)


def verbose_requested(overrides: list[str]) -> bool:
    """``run.verbose=true`` among a command's overrides: the libraries' console output as they print it."""
    return any(o.replace(" ", "").lower() in ("run.verbose=true", "+run.verbose=true") for o in overrides)


class _CurrentStderrHandler(logging.StreamHandler):
    """A console handler bound to ``sys.stderr`` as it is when a record is written."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns one; sys.stderr is read at each record
        pass


def cli_main(body: Callable[[], Any], log_name: str = "dcft_lab", verbose: bool = False) -> Any:
    """Run ``body`` with the libraries quieted as in ``run`` (``loggers.quiet_libraries``: no transformers load
    report, progress bars or Lightning info lines unless ``verbose``), and turn any error into one ``error: ...``
    line: exit 2 for bad input, 1 otherwise."""
    from .loggers import quiet_libraries

    # a handler that writes to whatever sys.stderr is at each record, not the stream of the moment it was made: an
    # in-process caller (a test's captured stderr, a notebook) may close or replace that stream afterwards
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_CurrentStderrHandler()])
    quiet_libraries(verbose)
    if not verbose:
        for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return body()
    except (ValueError, FileNotFoundError, KeyError) as err:  # RunInputError, ConfigError, bad data files
        print(f"error: {_first_line(err)}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - one line, never a traceback
        print(f"error: {_first_line(err)} [{type(err).__name__}]", file=sys.stderr)
        sys.exit(1)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        text = f"missing key {text}"
    return text.splitlines()[0] if text else type(err).__name__


# ------------------------------------------------------------------------------------------------- the run
@dataclass
class SavedRun:
    run_dir: Path
    record: dict | None  # results.json, or None when only .hydra/config.yaml is there
    config: dict  # the resolved run config, with this command's overrides applied
    rc: Any  # config_schema.RunConfig
    spec: Any  # data.tasks.TaskSpec
    backbone: Any  # backbones.BackboneSpec
    method: Any  # adapters.methods.Method (rc.method)
    adapter_dir: Path
    adapter_kind: str  # "peft" | "head" | "trained" | "full" (Method.save_format)
    family: str  # the model family training built: the task's, or "causal_lm" for generation on a decoder
    options: dict = field(default_factory=dict)  # the LLM options training built with (dtype, gradient_checkpointing)
    adapter_choice: str = "final"  # "final" (<run>/adapter) | "best" (<run>/adapter-best: the best evaluation's)

    @property
    def adapter_step(self) -> int | None:
        """The optimizer step the loaded adapter was saved at (final: the run's last step; best: the best one's)."""
        record = self.record or {}
        return record.get("best_step") if self.adapter_choice == "best" else record.get("global_steps")

    def datamodule(self, tokenizer):
        """The run's data module, built as training built it (``run_datamodule``)."""
        return run_datamodule(self.rc, self.spec, tokenizer, self.family)

    @property
    def adapter_files(self) -> list[Path]:
        if self.adapter_kind == "full":
            return [self.adapter_dir / FULL_CONFIG, self.adapter_dir / FULL_WEIGHTS]
        if self.adapter_kind in SAVED_FILES:
            return [self.adapter_dir / SAVED_FILES[self.adapter_kind]]
        return [self.adapter_dir / PEFT_CONFIG_FILE] + [self.adapter_dir / f for f in PEFT_WEIGHT_FILES
                                                         if (self.adapter_dir / f).is_file()]

    @property
    def pruned_ranks(self) -> bool:
        """An AdaLoRA adapter saved after its budget: its files hold only the surviving ranks (``rank_pattern``)."""
        config = self.adapter_dir / PEFT_CONFIG_FILE
        return config.is_file() and bool(json.loads(config.read_text()).get("rank_pattern"))

    def adapter_checksum(self) -> dict:
        """sha256 of the weights file (and of each adapter file), so an evaluation names what it evaluated."""
        files = {path.name: _sha256(path) for path in self.adapter_files}
        weights = SAVED_FILES.get(self.adapter_kind) or next(f for f in PEFT_WEIGHT_FILES if f in files)
        return {"sha256": files[weights], "weights_file": weights, "files": files}

    @property
    def recorded_commit(self) -> str | None:
        return ((self.record or {}).get("env") or {}).get("git_commit")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_run(run_dir: str | Path, overrides: list[str] = (), adapter: str = "final") -> SavedRun:
    """Check the run folder (completed, adapter saved) and rebuild its typed config with ``overrides`` applied.
    ``adapter``: "final" (``<run>/adapter/``) or "best" (``<run>/adapter-best/``, the best evaluation's)."""
    from omegaconf import OmegaConf

    from .backbones import get_backbone
    from .config_schema import validate
    from .data.tasks import get_task
    from .records import read_results

    if adapter not in ADAPTER_CHOICES:
        raise RunInputError(f"adapter={adapter!r}; expected one of {', '.join(ADAPTER_CHOICES)}")
    run_dir = Path(run_dir).expanduser()
    expected = "the folder of a dcft_lab.run run (results.json, adapter/)"
    if not str(run_dir) or not run_dir.is_dir():
        raise RunInputError(f"run folder {run_dir} not found; expected {expected}")
    record = read_results(run_dir)
    if record is None and (run_dir / RESULTS_FILE).exists():
        raise RunInputError(f"{run_dir / RESULTS_FILE} is not readable JSON; expected the run record")
    if record is not None:
        status = record.get("status")
        if status == "failed":
            failure = record.get("failure") or {}
            step = failure.get("step")
            where = f" at step {step}" if step is not None else ""
            raise RunInputError(f"run {run_dir} failed{where} ({failure.get('type', 'error')}: "
                                f"{failure.get('reason', '?')}); expected a completed run")
        if status != "completed":
            raise RunInputError(f"run {run_dir} has status '{status}'; expected a completed run "
                                "(rerun its command to finish it)")
    config = (record or {}).get("config")
    if not config:
        hydra_config = run_dir / HYDRA_CONFIG
        if not hydra_config.is_file():
            raise RunInputError(f"{run_dir} has no {RESULTS_FILE} with a config and no {HYDRA_CONFIG}; "
                                f"expected {expected}")
        config = OmegaConf.to_container(OmegaConf.load(hydra_config), resolve=True)
    config = {k: v for k, v in config.items() if k != "hydra"}

    adapter_dir = run_dir / ADAPTER_CHOICES[adapter]
    saved_flag = "save_best_adapter" if adapter == "best" else "save_adapter"
    saved = ((config.get("run") or {}).get(saved_flag) is not False) and (record or {}).get("status") == "completed"
    # a run that did save it, e.g. a committed study run: adapters are git-ignored, so a clone has the record only
    why = (f"the run saved it, but the folder is not here (adapters are not committed to git: copy {adapter_dir.name}/ "
           "from the machine that ran it, or rerun the run's command)" if saved else None)
    if adapter == "best" and not adapter_dir.is_dir():
        raise RunInputError(f"run {run_dir} has no {BEST_ADAPTER_DIR}/ ("
                            f"{why or 'a run trained before it was kept, or with run.save_best_adapter=false'}); "
                            "expected adapter=final")
    if (adapter_dir / PEFT_CONFIG_FILE).is_file() and any((adapter_dir / f).is_file() for f in PEFT_WEIGHT_FILES):
        kind = "peft"
    elif (adapter_dir / HEAD_FILE).is_file():
        kind = "head"
    elif (adapter_dir / TRAINED_FILE).is_file():
        kind = "trained"
    elif (adapter_dir / FULL_WEIGHTS).is_file() and (adapter_dir / FULL_CONFIG).is_file():
        kind = "full"
    else:
        raise RunInputError(
            f"run {run_dir} has no saved adapter: {adapter_dir}/{PEFT_CONFIG_FILE} + {PEFT_WEIGHT_FILES[0]} "
            f"(or {HEAD_FILE} for head-only, {TRAINED_FILE} for BitFit, {FULL_CONFIG} + {FULL_WEIGHTS} for full "
            f"fine-tuning runs) not found; {why or 'expected a run trained with run.save_adapter=true'}")

    merged = OmegaConf.merge(OmegaConf.create(config), OmegaConf.from_dotlist(list(overrides)))
    rc = validate(merged)
    method = rc.method
    if method.save_format != kind:
        found, expected = (_kind_file(k) for k in (kind, method.save_format))
        raise RunInputError(f"{adapter_dir} holds {found} but the run's method is '{method.name}'; expected "
                            f"{expected}")
    spec, backbone = get_task(rc.task.name), get_backbone(rc.backbone.name)
    family, options = _recorded_build(record or {}, rc, spec, backbone)
    return SavedRun(run_dir=run_dir, record=record, config=OmegaConf.to_container(merged, resolve=True), rc=rc,
                    spec=spec, backbone=backbone, method=method, adapter_dir=adapter_dir, adapter_kind=kind,
                    family=family, options=options, adapter_choice=adapter)


def _kind_file(kind: str) -> str:
    return PEFT_CONFIG_FILE if kind == "peft" else SAVED_FILES[kind]


def _recorded_build(record: dict, rc, spec, backbone) -> tuple[str, dict]:
    """(model family, backbone options) the run was trained with: what its record says (decoder-only runs record
    ``model_family`` and ``backbone_options``), else what training derives from the config."""
    family = record.get("model_family") or backbone.model_family(spec.family)
    recorded = record.get("backbone_options")
    options = {k: v for k, v in recorded.items() if v} if isinstance(recorded, dict) else backbone_options(rc)
    return family, options


# ----------------------------------------------------------------------------------------------- the model
def load_adapted_model(saved: SavedRun):
    """(model, tokenizer, backbone spec): the backbone as training built it, with the saved adapter loaded, in eval
    mode. A PEFT model for adapter runs (merge it with ``merge_and_unload``), the plain backbone with its trained
    weights loaded for head-only, BitFit and full fine-tuning runs."""
    import torch

    rc = saved.rc
    if rc.run.threads:
        torch.set_num_threads(rc.run.threads)
    model, tokenizer = build_model(rc, saved.spec, saved.backbone, saved.family, saved.options)
    if saved.adapter_kind == "full":
        _load_full(model, saved.adapter_dir / FULL_WEIGHTS)
    elif saved.adapter_kind in SAVED_FILES:
        _load_head(model, saved.adapter_dir / SAVED_FILES[saved.adapter_kind])
    else:
        model = _load_peft(model, saved.adapter_dir)
    return model.eval(), tokenizer, saved.backbone


def _load_peft(model, adapter_dir: Path):
    import peft

    import dcft_lab.adapters  # noqa: F401 - registers DCFT with PEFT

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            adapted = peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        except RuntimeError as err:  # size mismatch: the adapter was trained on another backbone / task head
            raise RunInputError(f"adapter {adapter_dir} does not fit the run's backbone: {_first_line(err)}") from None
    for warning in caught:
        if "missing adapter keys" in str(warning.message):
            raise RunInputError(f"adapter {adapter_dir} lacks weights the run's backbone needs "
                                f"({str(warning.message)[:300]}); expected the adapter this run saved")
    return adapted


def _load_head(model, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # size mismatch
        raise RunInputError(f"weights {path} do not fit the run's backbone: {_first_line(err)}") from None
    if unexpected or not tensors:
        raise RunInputError(f"{path} holds weights the run's backbone lacks ({sorted(unexpected)[:5]}); expected the "
                            "weights this run saved")


def _load_full(model, path: Path) -> None:
    """The whole model's weights (save_pretrained's model.safetensors) into the rebuilt backbone. Tied weights are
    saved once: a key the file lacks must share its storage with one it has."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # size mismatch
        raise RunInputError(f"weights {path} do not fit the run's backbone: {_first_line(err)}") from None
    state = model.state_dict()
    loaded = {state[k].data_ptr() for k in tensors if k in state}
    lost = [k for k in missing if state[k].data_ptr() not in loaded]
    if unexpected or lost:
        raise RunInputError(f"{path} does not match the run's backbone (unexpected {sorted(unexpected)[:3]}, missing "
                            f"{sorted(lost)[:3]}); expected the model this run saved")
