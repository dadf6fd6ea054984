"""ResNet-50 from torchvision's definition, with a configurable last stride.

The state dict is torchvision's resnet50 state dict without `fc.*`, so torchvision's
ImageNet checkpoints load unchanged. In the paper's naming Conv40 is `layer3` and
Conv50 is `layer4`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.resnet import Bottleneck, ResNet

from .registry import register_backbone


@register_backbone(
    "resnet50",
    # The file names torchvision gives its cached ImageNet checkpoints (V1 first, as the paper used).
    checkpoint_names=tuple(w.url.rsplit("/", 1)[1] for w in (ResNet50_Weights.IMAGENET1K_V1, ResNet50_Weights.IMAGENET1K_V2)),
    ignored_checkpoint_prefixes=("fc.",),
    download_weights=ResNet50_Weights.IMAGENET1K_V1,
)
class ResNet50Backbone(ResNet):
    """conv1 ... layer4 of ResNet-50; `last_stride` is the stride of layer4 (1 keeps 1/16 resolution)."""

    conv4_channels = 1024
    conv5_channels = 2048

    def __init__(self, last_stride: int = 1):
        if last_stride not in (1, 2):
            raise ValueError(f"resnet50: last_stride must be 1 or 2, got {last_stride}")
        super().__init__(Bottleneck, [3, 4, 6, 3])
        del self.fc, self.avgpool  # the re-id heads replace them
        first_block = self.layer4[0]
        first_block.conv2.stride = (last_stride, last_stride)
        first_block.downsample[0].stride = (last_stride, last_stride)

    @property
    def conv4_stage(self) -> nn.Module:
        return self.layer3

    @property
    def conv5_stage(self) -> nn.Module:
        return self.layer4

    def forward_to_conv3(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer2(self.layer1(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Conv50 feature map [B, 2048, H/16, W/16] (H/32, W/32 with last_stride=2)."""
        return self.layer4(self.layer3(self.forward_to_conv3(images)))
