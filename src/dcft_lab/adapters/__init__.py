"""Adapters: DCFT (ours, registered with PEFT on import) and one interface over DCFT / LoRA / AdaLoRA / LoKr.

Imports torch and peft only, so it is usable without the rest of dcft_lab.
"""

from .peft_compat import register_dcft

register_dcft()

from .counting import ParamCounts, count_parameters  # noqa: E402
from .dcft import DCFTConfig, DCFTLayer, DCFTLinear, DCFTModel, orthogonal_penalty  # noqa: E402
from .methods import METHOD_NAMES, Method, build_method  # noqa: E402

__all__ = [
    "DCFTConfig", "DCFTLayer", "DCFTLinear", "DCFTModel", "METHOD_NAMES", "Method", "ParamCounts",
    "build_method", "count_parameters", "orthogonal_penalty", "register_dcft",
]
