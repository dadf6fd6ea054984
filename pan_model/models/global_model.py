"""Global-only baseline (BoT-style): backbone -> GMP -> FC -> BN, no parts."""

from __future__ import annotations

import torch

from ..backbones import Pretrained
from .base import Output, ReIDModel


class GlobalModel(ReIDModel):
    """PAN without its local branch and buffer: the retrieval feature is the global one."""

    def __init__(
        self,
        num_classes: int,
        global_dim: int = 512,
        backbone: str = "resnet50",
        last_stride: int = 1,
        pretrained: Pretrained = None,
    ):
        super().__init__(num_classes, global_dim, backbone, last_stride, pretrained)

    def forward(self, images: torch.Tensor) -> Output:
        return self.outputs(self.global_branch(self.backbone(images)))
