r"""The Part-Aware Network (PAN), docs/DESIGN.md §5.

    images -> conv1..conv3 -> Conv40 -> Conv50 -> GMP -> FC -> BN             global feature (N_g)
                                |         \-> 1x1 conv (mask generator) -> masks M [B, P, h, w]
                                \-> Conv51 (buffer: a copy of Conv50) -> F_g^2
    parts = pan_ops.weighted_pool(F_g^2, M) -> FC (shared) -> BN per part    P part features (n_l)
    retrieval feature f_cat = [global, part_1, ..., part_P]

The global loss never reaches Conv51, so the buffer stage learns only part features while
Conv50 serves the global feature and the masks. Ablation switches:
  mask_source  "conv50" (default) | "conv40" | "conv41": the feature map the masks come
               from; "conv41" adds a buffer copy of Conv40, and Conv51 then runs on it.
  local_source "conv51" (default) | "conv50": "conv50" drops the buffer stage.
  mask_softmax normalise the masks over parts with a softmax (off in the paper).
  shared_fc    one FC for all parts (default) or one per part.
Diagnostic switch, not in the paper:
  mask_generator "conv" (default, the paper's 1x1 conv) | "stripes": PCB's fixed horizontal
               stripes as 0/1 masks, pooled by PAN's own path. With num_parts=6 and
               shared_fc=False this is PCB computed through pan_ops.weighted_pool.
"""

from __future__ import annotations

import torch
from torch import nn

import pan_ops

from ..backbones import Pretrained
from .base import LocalParts, Output, ReIDModel, buffer_copy, check_choice, check_positive
from .heads import PartBranch
from .pcb import stripe_masks

MASK_GENERATORS = ("conv", "stripes")
MASK_SOURCES = ("conv50", "conv40", "conv41")
LOCAL_SOURCES = ("conv51", "conv50")
POOL_EPS = pan_ops.DEFAULT_EPS  # floor of a mask's total weight, so an all-zero mask pools to zeros


class PAN(ReIDModel):
    def __init__(
        self,
        num_classes: int,
        num_parts: int = 14,
        local_dim: int = 256,
        global_dim: int = 512,
        shared_fc: bool = True,
        mask_softmax: bool = False,
        mask_source: str = "conv50",
        local_source: str = "conv51",
        backbone: str = "resnet50",
        last_stride: int = 1,
        pretrained: Pretrained = None,
        pool_backend: str = "auto",
        mask_generator: str = "conv",
    ):
        check_positive("num_parts", num_parts)
        check_choice("mask_generator", mask_generator, MASK_GENERATORS)
        if mask_generator == "stripes" and mask_softmax:
            raise ValueError("mask_softmax=True needs learned masks; mask_generator='stripes' has fixed 0/1 stripes")
        check_positive("local_dim", local_dim)
        check_choice("mask_source", mask_source, MASK_SOURCES)
        check_choice("local_source", local_source, LOCAL_SOURCES)
        pan_ops.check_backend(pool_backend, "pool_backend")
        if mask_source != "conv50" and last_stride != 1:
            raise ValueError(
                f"mask_source={mask_source!r} needs last_stride=1: masks from a conv4 stage must have "
                f"the size of the conv5 feature map they pool, got last_stride={last_stride}"
            )
        super().__init__(num_classes, global_dim, backbone, last_stride, pretrained)
        self.num_parts = num_parts
        self.mask_source = mask_source
        self.local_source = local_source
        self.mask_softmax = mask_softmax
        self.pool_backend = pool_backend
        self.conv41 = buffer_copy(self.backbone.conv4_stage) if mask_source == "conv41" else None
        self.conv51 = buffer_copy(self.backbone.conv5_stage) if local_source == "conv51" else None
        mask_channels = self.backbone.conv5_channels if mask_source == "conv50" else self.backbone.conv4_channels
        # (fixed stripes have no parameters: the model then initialises exactly like PCB)
        self.mask_generator = nn.Conv2d(mask_channels, num_parts, kernel_size=1) if mask_generator == "conv" else None
        self.local_branch = PartBranch(num_parts, self.backbone.conv5_channels, local_dim, num_classes, shared_fc)
        self.feature_dim = global_dim + num_parts * local_dim

    def _feature_maps(self, images: torch.Tensor, need_local: bool = True) -> dict:
        conv3 = self.backbone.forward_to_conv3(images)
        maps = {"conv40": self.backbone.conv4_stage(conv3)}
        maps["conv50"] = self.backbone.conv5_stage(maps["conv40"])
        if self.conv41 is not None:
            maps["conv41"] = self.conv41(conv3)
        if need_local and self.conv51 is not None:
            maps["conv51"] = self.conv51(maps.get("conv41", maps["conv40"]))
        return maps

    def _masks(self, maps: dict) -> torch.Tensor:
        source = maps[self.mask_source]
        if self.mask_generator is None:
            stripes = stripe_masks(self.num_parts, *source.shape[2:], source)
            return stripes.expand(source.shape[0], -1, -1, -1)
        masks = self.mask_generator(source)
        return masks.softmax(dim=1) if self.mask_softmax else masks

    def compute_masks(self, images: torch.Tensor) -> torch.Tensor:
        """The P part masks [B, P, h, w] the local branch pools with (for visualisation)."""
        return self._masks(self._feature_maps(images, need_local=False))

    def local_parts(self, images: torch.Tensor) -> LocalParts:
        maps = self._feature_maps(images)
        masks = self._masks(maps)
        local_map = maps[self.local_source]
        parts = pan_ops.weighted_pool(local_map, masks, POOL_EPS, backend=self.pool_backend)
        return LocalParts(local_map, masks, parts, maps["conv50"])

    def forward(self, images: torch.Tensor) -> Output:
        local = self.local_parts(images)
        return self.outputs(self.global_branch(local.conv50), self.local_branch(local.parts), local.masks)
