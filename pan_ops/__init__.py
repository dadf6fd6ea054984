"""pan_ops: fused mask-weighted pooling (the PAN part pooling) for PyTorch.

    out[b,p,c] = sum_hw F[b,c,h,w] M[b,p,h,w] / max(sum_hw |M[b,p,h,w]|, eps)

One registered op, torch.ops.pan_ops.weighted_pool, with C++ CPU and CUDA kernels,
a Triton implementation, a hand-written fused backward, fake kernels, autocast and
a FLOP formula. See DESIGN.md section 2 for the exact contract.
"""

from . import _library, reference
from .functional import BACKENDS, WeightedPool, available_backends, weighted_pool
from .modules import MaskedWeightedPool

__all__ = ["weighted_pool", "available_backends", "WeightedPool", "MaskedWeightedPool", "reference", "BACKENDS"]
__version__ = "0.1.0"
