"""The one place that works around PEFT internals to register the lab's own PEFT methods: DCFT, SoRA (``sora.py``)
and the bottleneck adapters of HAdapter / PAdapter (``bottleneck.py``).

PEFT (0.15 - 0.21) exposes ``peft.utils.register_peft_method`` but it only accepts names that are already members
of the closed ``PeftType`` enum. We add ``DCFT``, ``SORA`` and ``BOTTLENECK`` members to that enum at import time and
then call the public registration function, so everything downstream (``get_peft_model``, ``save_pretrained``,
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
SORA_NAME = "SORA"
BOTTLENECK_NAME = "BOTTLENECK"
LAB_PEFT_NAMES = (DCFT_NAME, SORA_NAME, BOTTLENECK_NAME)  # peft_type values of adapters that need this registration
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
SORA_PEFT_TYPE = _add_enum_member(PeftType, SORA_NAME)
BOTTLENECK_PEFT_TYPE = _add_enum_member(PeftType, BOTTLENECK_NAME)


def register(peft_type, config_cls, model_cls) -> None:
    """Register one of the lab's tuners with PEFT (idempotent). Each tuner's module calls this for itself when it is
    imported (dcft/__init__.py, sora.py, bottleneck.py), as PEFT's own tuners do; this module imports none of them."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    if PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is model_cls:
        return
    peft_types.register_peft_method(name=str(peft_type.value).lower(), config_cls=config_cls, model_cls=model_cls,
                                    prefix=model_cls.prefix)


def finish_config(config, peft_type) -> None:
    """What every lab tuner config does after ``PeftConfig.__post_init__``, as PEFT's own configs do: set its
    ``peft_type`` and turn list-valued ``target_modules`` / ``exclude_modules`` into sets."""
    config.peft_type = peft_type
    if isinstance(config.target_modules, list):
        config.target_modules = set(config.target_modules)
    if isinstance(config.exclude_modules, list):
        config.exclude_modules = set(config.exclude_modules)


def peft_version() -> str:
    return peft.__version__
