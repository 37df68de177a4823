"""Adapters: DCFT (ours, registered with PEFT on import) and one interface over DCFT / LoRA / AdaLoRA / LoKr.

Imports torch and peft only, so it is usable without the rest of dcft_lab.
"""

# Importing a tuner's module registers it with PEFT (dcft/__init__.py, sora.py, bottleneck.py call
# peft_compat.register themselves, as PEFT's own tuners do in their package).
from . import bottleneck, sora
from .counting import ParamCounts, count_parameters
from .dcft import DCFTConfig, DCFTLayer, DCFTLinear, DCFTModel, orthogonal_penalty
from .methods import METHOD_NAMES, Method, build_method
from .peft_compat import BOTTLENECK_PEFT_TYPE, DCFT_PEFT_TYPE, SORA_PEFT_TYPE, register


def register_dcft() -> None:
    """Register the lab's PEFT methods again (idempotent; importing this package already did): DCFT, SoRA and the
    bottleneck adapters."""
    register(DCFT_PEFT_TYPE, DCFTConfig, DCFTModel)
    register(SORA_PEFT_TYPE, sora.SoRAConfig, sora.SoRAModel)
    register(BOTTLENECK_PEFT_TYPE, bottleneck.BottleneckConfig, bottleneck.BottleneckModel)


__all__ = [
    "DCFTConfig", "DCFTLayer", "DCFTLinear", "DCFTModel", "METHOD_NAMES", "Method", "ParamCounts",
    "build_method", "count_parameters", "orthogonal_penalty", "register_dcft",
]
