from ..peft_compat import DCFT_PEFT_TYPE, register
from .config import DCFTConfig
from .kernels import kron_matmul
from .layer import DCFTLayer, DCFTLinear, conv_transpose_update, subspace_side
from .model import DCFTModel, orthogonal_penalty

register(DCFT_PEFT_TYPE, DCFTConfig, DCFTModel)  # as PEFT's own tuners do, on import

__all__ = [
    "DCFTConfig", "DCFTLayer", "DCFTLinear", "DCFTModel", "conv_transpose_update", "kron_matmul",
    "orthogonal_penalty", "subspace_side",
]
