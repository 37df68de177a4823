"""Composition: the Hydra config folder, the lab's OmegaConf resolvers (registered once, when this module is
imported) and ``compose_config``, the one way to build a run config outside Hydra's own entry point.

Every module that composes or resolves a run config imports this one (run.py, cluster.py, config_schema.py, params,
the studies, scripts); none imports the entry point ``run.py`` for it.
"""

from __future__ import annotations

import difflib
import re
from hashlib import sha1
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .paths import conf_dir

CONF_DIR = str(conf_dir())
SLURM_LAUNCHER = "SlurmLauncher"


def run_dirname(override_dirname: str) -> str:
    """A run folder name from the command-line overrides: the same command -> the same folder (resume / skip)."""
    if not override_dirname:
        return "defaults"
    safe = re.sub(r"[^A-Za-z0-9=,._+-]", "_", override_dirname)
    if len(safe) > 120:  # keep paths short but still unique
        safe = safe[:100] + "__" + sha1(safe.encode()).hexdigest()[:10]
    return safe


def slurm_layout(key: str, default: Any) -> Any:
    """The SLURM launcher's ``key`` when this job runs under ``hydra/launcher=slurm``, else ``default``
    (``${dcft_slurm:...}`` in conf/trainer/default.yaml)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return default
    launcher = HydraConfig.get().get("launcher") or {}
    if not str(launcher.get("_target_", "")).endswith(SLURM_LAUNCHER) or key not in launcher:
        return default
    return launcher[key]


OmegaConf.register_new_resolver("dcft_dirname", run_dirname, replace=True)
OmegaConf.register_new_resolver("dcft_slurm", slurm_layout, replace=True)


def compose_config(overrides: list[str], *, hydra_config: bool = False) -> DictConfig:
    """The composed (unvalidated) run config, exactly as ``python -m dcft_lab.run <overrides>`` builds it.

    ``hydra_config=True`` also composes the ``hydra`` node and makes it the current HydraConfig, so that
    ``${hydra:...}`` and ``${dcft_slurm:...}`` resolve as they would inside the job (the SLURM planner needs that).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=hydra_config)
    if hydra_config:
        HydraConfig.instance().set_config(cfg)
    return cfg


def close_names(value: Any, options) -> str:
    """' (did you mean X?)' for a near-miss of one of ``options`` (difflib), else ''."""
    if not isinstance(value, str):
        return ""
    matches = difflib.get_close_matches(value, sorted(str(o) for o in options), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(matches)}?)" if matches else ""


def describe_hydra_error(err: Exception, overrides: list[str]) -> str:
    """Hydra's multi-line composition errors as one line: an unknown config group option with close names
    (``experiment=glue/mnlii`` -> glue/mnli), an unknown key with close names, else the first line."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        missing = str(err.missing_cfg_file)
        chosen = [o.lstrip("+~").partition("=") for o in overrides]
        group, option = next(((k, v) for k, _, v in chosen if f"{k}/{v}" == missing), missing.rpartition("/")[::2])
        if group:
            options = sorted(set(err.options or []) | set(group_options(group)))
            close = close_names(option, options)
            return (f"{group}={option}: no such option{close}; expected one of {', '.join(options)} "
                    f"(conf/{group}/)")
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    if key and "Could not override" in str(err):
        value = next((o.partition("=")[2] for o in overrides if o.lstrip("+~").partition("=")[0] == key), "...")
        return (f"{key}: no such key{_close_key(key, overrides)}; to add a new key write +{key}={value}")
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, OverrideParseException):
        return f"cannot parse the overrides {' '.join(overrides)}: {first}"
    return first


def group_options(group: str) -> list[str]:
    """Every option of a config group in conf/, nested ones included (experiment: glue/mnli, quickstart, ...)."""
    folder = Path(CONF_DIR) / group
    return [p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml")] if folder.is_dir() else []


def _close_key(key: str, overrides: list[str]) -> str:
    """' (did you mean method.kernel_size?)' for a mistyped key: the keys next to it in the config composed with
    the command's group choices only (``method=lora``, ``experiment=...``)."""
    from omegaconf import OmegaConf

    parent, _, name = key.rpartition(".")
    choices = [o for o in overrides if "=" in o and "." not in o.partition("=")[0]]
    try:
        cfg = compose_config(choices)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = list(node.keys()) if node is not None and hasattr(node, "keys") else []
    except Exception:  # noqa: BLE001 - no suggestion then
        return ""
    close = close_names(name, keys)
    if parent and close:  # ' (did you mean a or b?)' -> ' (did you mean method.a or method.b?)'
        names = close.removeprefix(" (did you mean ").removesuffix("?)").split(" or ")
        close = f" (did you mean {' or '.join(f'{parent}.{n}' for n in names)}?)"
    return close
