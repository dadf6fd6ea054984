"""Pure-PyTorch weighted pooling: the op's contract (docs/DESIGN.md §2) written as
tensor expressions, which autograd differentiates as the kernels' backward does. Half
dtypes are computed in float32 and returned in the input dtype, as the kernels do.
"""

import torch

__all__ = ["DEFAULT_EPS", "weighted_pool", "weighted_pool_naive"]

# The default floor of a mask's absolute sum: every Python signature of the op reads it, and
# the C++ schema (csrc/weighted_pool.cpp) states the same value, which a test checks.
DEFAULT_EPS = 1e-6


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def weighted_pool(features: torch.Tensor, masks: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """einsum + abs-sum + divide; [B,C,H,W] x [B,P,H,W] -> [B,P,C]."""
    dtype = _compute_dtype(features.dtype)
    f, m = features.to(dtype), masks.to(dtype)
    norm = m.abs().sum(dim=(2, 3)).clamp_min(eps)
    pooled = torch.einsum("bchw,bphw->bpc", f, m)
    return (pooled / norm.unsqueeze(-1)).to(features.dtype)


def weighted_pool_naive(features: torch.Tensor, masks: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """The literal broadcast form (materialises B x P x C x H x W): a benchmark baseline."""
    norm = masks.abs().sum(dim=(2, 3)).clamp_min(eps)
    pooled = (features.unsqueeze(1) * masks.unsqueeze(2)).sum(dim=(3, 4))
    return pooled / norm.unsqueeze(-1)
