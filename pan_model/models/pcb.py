"""PCB baseline in the PAN framework (the paper's "PCB (baseline)"): the global branch
on Conv50 plus P horizontal stripes average-pooled from the buffer stage Conv51."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones import Pretrained
from .base import LocalParts, Output, ReIDModel, buffer_copy, check_choice, check_positive
from .heads import PartBranch


class PCB(ReIDModel):
    """Stripes are adaptive average pools over rows (PCB's uniform partition), embedded by
    one FC per stripe by default as in PCB (shared_fc=True shares it)."""

    def __init__(
        self,
        num_classes: int,
        num_parts: int = 6,
        local_dim: int = 256,
        global_dim: int = 512,
        shared_fc: bool = False,
        local_source: str = "conv51",
        backbone: str = "resnet50",
        last_stride: int = 1,
        pretrained: Pretrained = None,
    ):
        check_positive("num_parts", num_parts)
        check_positive("local_dim", local_dim)
        check_choice("local_source", local_source, ("conv50", "conv51"))
        super().__init__(num_classes, global_dim, backbone, last_stride, pretrained)
        self.num_parts = num_parts
        self.conv51 = buffer_copy(self.backbone.conv5_stage) if local_source == "conv51" else None
        self.local_branch = PartBranch(num_parts, self.backbone.conv5_channels, local_dim, num_classes, shared_fc)
        self.feature_dim = global_dim + num_parts * local_dim

    def _pool(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Conv50, the map the stripes pool, the stripes [B, P, C])."""
        conv40 = self.backbone.conv4_stage(self.backbone.forward_to_conv3(images))
        conv50 = self.backbone.conv5_stage(conv40)
        local_map = conv50 if self.conv51 is None else self.conv51(conv40)
        stripes = F.adaptive_avg_pool2d(local_map, (self.num_parts, 1)).flatten(2).transpose(1, 2)
        return conv50, local_map, stripes

    def local_parts(self, images: torch.Tensor) -> LocalParts:
        conv50, local_map, stripes = self._pool(images)
        masks = stripe_masks(self.num_parts, *local_map.shape[2:], local_map).expand(local_map.shape[0], -1, -1, -1)
        return LocalParts(local_map, masks, stripes, conv50)

    def forward(self, images: torch.Tensor) -> Output:
        conv50, _, stripes = self._pool(images)
        return self.outputs(self.global_branch(conv50), self.local_branch(stripes))


def stripe_masks(num_parts: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """[1, P, height, width] 0/1 masks of PCB's horizontal stripes: the rows that
    adaptive_avg_pool2d(., (P, 1)) averages for each part (overlapping when P does not
    divide height), in `like`'s dtype and device."""
    masks = torch.zeros(1, num_parts, height, width, dtype=like.dtype, device=like.device)
    for part in range(num_parts):
        start, end = (part * height) // num_parts, -((-(part + 1) * height) // num_parts)
        masks[0, part, start:end] = 1
    return masks
