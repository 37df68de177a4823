"""The one place that works around PEFT internals to register DCFT as a PEFT method.

PEFT (0.15 - 0.21) exposes ``peft.utils.register_peft_method`` but it only accepts names that are already members
of the closed ``PeftType`` enum. We add a ``DCFT`` member to that enum at import time and then call the public
registration function, so everything downstream (``get_peft_model``, ``save_pretrained``,
``PeftModel.from_pretrained``, ``merge_and_unload``) takes the ordinary code paths.

What this relies on (checked by tests/test_peft_compat.py, which fails loudly if a PEFT release changes it):
  * ``PeftType`` is a ``str`` enum whose members can be found by name and by value via its member maps;
  * ``register_peft_method(name=..., config_cls=..., model_cls=..., prefix=...)`` exists and fills
    ``peft.mapping.PEFT_TYPE_TO_{CONFIG,TUNER,PREFIX}_MAPPING``.
"""

from __future__ import annotations

import peft
from peft.utils import peft_types
from peft.utils.peft_types import PeftType

DCFT_NAME = "DCFT"
TESTED_PEFT_RANGE = (">=0.17", "<0.22")  # keep in sync with pyproject.toml


def _add_enum_member(enum_cls, name: str):
    """Add ``name`` (value == name) to a ``str`` Enum in place and return the member; idempotent."""
    if name in enum_cls.__members__:
        return enum_cls[name]
    member = str.__new__(enum_cls, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = enum_cls
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[name] = member
    enum_cls._member_names_.append(name)
    # EnumType.__setattr__ forbids touching members; a brand-new name goes through type.__setattr__.
    type.__setattr__(enum_cls, name, member)
    return member


DCFT_PEFT_TYPE = _add_enum_member(PeftType, DCFT_NAME)


def register_dcft() -> None:
    """Register DCFT's config and tuner classes with PEFT (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    from .dcft.config import DCFTConfig
    from .dcft.model import DCFTModel

    if PEFT_TYPE_TO_TUNER_MAPPING.get(DCFT_PEFT_TYPE) is DCFTModel:
        return
    peft_types.register_peft_method(
        name=DCFT_NAME.lower(), config_cls=DCFTConfig, model_cls=DCFTModel, prefix=DCFTModel.prefix
    )


def peft_version() -> str:
    return peft.__version__
