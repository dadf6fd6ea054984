"""nn.Module face of the op, for dropping into other people's models."""

import torch
from torch import nn

from ._validation import check_backend
from .functional import weighted_pool
from .reference import DEFAULT_EPS


class MaskedWeightedPool(nn.Module):
    """Pools features [B,C,H,W] into P part vectors [B,P,C] with masks [B,P,H,W]."""

    def __init__(self, eps: float = DEFAULT_EPS, backend: str = "auto"):
        super().__init__()
        self.eps = eps
        self.backend = check_backend(backend)

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return weighted_pool(features, masks, self.eps, self.backend)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, backend={self.backend!r}"
