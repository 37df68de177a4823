"""Where the Hydra configs live: one rule for every entry point (stdlib only, so ``run.py`` can read it before torch)."""

from __future__ import annotations

import os
from pathlib import Path

CONF_ENV = "DCFT_LAB_CONF"  # another config folder for python -m dcft_lab.run, the method defaults and params


def conf_dir() -> Path:
    """The Hydra config folder: $DCFT_LAB_CONF, else the repository's ``conf/``."""
    return Path(os.environ.get(CONF_ENV) or repo_root() / "conf")


def repo_root() -> Path:
    """The repository root (src layout, editable install): experiments/, results/ and conf/ live under it."""
    return Path(__file__).resolve().parents[2]
