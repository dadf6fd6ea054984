"""pan_ops: fused mask-weighted pooling (the PAN part pooling) for PyTorch.

One registered op, torch.ops.pan_ops.weighted_pool, with C++ CPU and CUDA kernels and
Triton kernels behind one dispatch rule, a hand-written fused backward, fake kernels,
autocast and a FLOP formula. Contract and design: docs/DESIGN.md §2-§4.
"""

from . import _library, reference
from ._validation import BACKENDS, check_backend
from .functional import WeightedPool, available_backends, cpu_capability, force_backend, weighted_pool
from .modules import MaskedWeightedPool
from .reference import DEFAULT_EPS

__all__ = [
    "weighted_pool",
    "available_backends",
    "cpu_capability",
    "WeightedPool",
    "MaskedWeightedPool",
    "reference",
    "BACKENDS",
    "check_backend",
    "force_backend",
    "DEFAULT_EPS",
]
__version__ = "0.1.0"
