"""OSNet, the omni-scale network of Zhou et al., "Omni-Scale Feature Learning for Person
Re-Identification" (ICCV 2019), as a feature-map backbone.

Parameter names and shapes follow torchreid's implementation, so torchreid's ImageNet
checkpoints (osnet_x1_0_imagenet.pth, ...) load unchanged; their `fc` embedding and
`classifier` are dropped because the re-id heads replace them. conv5 plays Conv50 and
conv4 plays Conv40. Every stage after conv3 keeps 1/16 resolution, so there is no
last stride to choose.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .registry import register_backbone


class ConvBN(nn.Module):
    """Convolution (no bias) + BatchNorm, optionally followed by ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class LiteConv3x3(nn.Module):
    """The paper's Lite 3x3: a linear pointwise conv, then a depthwise 3x3, BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class AggregationGate(nn.Module):
    """Unified aggregation gate: channel weights from a squeeze-excitation MLP, shared by all streams."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))


class OmniScaleBlock(nn.Module):
    """Bottleneck with four streams of 1, 2, 3 and 4 Lite 3x3 layers (receptive fields
    3, 5, 7, 9) fused by the shared aggregation gate, plus a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_reduction: int = 4):
        super().__init__()
        mid = out_channels // bottleneck_reduction
        self.conv1 = ConvBN(in_channels, mid)
        # torchreid's names: the one-layer stream is a bare layer, deeper streams are Sequentials.
        self.conv2a = LiteConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(4)))
        self.gate = AggregationGate(mid)
        self.conv3 = ConvBN(mid, out_channels, relu=False)
        self.downsample = ConvBN(in_channels, out_channels, relu=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        streams = (self.conv2a, self.conv2b, self.conv2c, self.conv2d)
        fused = sum(self.gate(stream(reduced)) for stream in streams)
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.conv3(fused) + identity)


def _stage(in_channels: int, out_channels: int, num_blocks: int, downsample: bool) -> nn.Sequential:
    blocks = [OmniScaleBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_blocks)]
    if downsample:  # transition layer: 1x1 conv then 2x2 average pooling
        blocks.append(nn.Sequential(ConvBN(out_channels, out_channels), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*blocks)


class OSNetBackbone(nn.Module):
    """conv1 ... conv5 of OSNet with stage widths `channels` (conv1, conv2, conv3, conv4/conv5);
    `name` is the registered name, for error messages."""

    def __init__(self, name: str, channels: tuple[int, int, int, int], blocks_per_stage: int = 2, last_stride: int = 1):
        if last_stride != 1:
            raise ValueError(f"{name}: OSNet keeps conv4 and conv5 at 1/16 resolution, so last_stride must be 1, got {last_stride}")
        super().__init__()
        self.conv4_channels = self.conv5_channels = channels[3]
        self.conv1 = ConvBN(3, channels[0], kernel_size=7, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(channels[0], channels[1], blocks_per_stage, downsample=True)
        self.conv3 = _stage(channels[1], channels[2], blocks_per_stage, downsample=True)
        self.conv4 = _stage(channels[2], channels[3], blocks_per_stage, downsample=False)
        self.conv5 = ConvBN(channels[3], channels[3])
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def conv4_stage(self) -> nn.Module:
        return self.conv4

    @property
    def conv5_stage(self) -> nn.Module:
        return self.conv5

    def forward_to_conv3(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.maxpool(self.conv1(images))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Conv50 feature map [B, channels[3], H/16, W/16]."""
        return self.conv5(self.conv4(self.forward_to_conv3(images)))


OSNET_WIDTHS = {
    "osnet_x1_0": (64, 256, 384, 512),
    "osnet_x0_75": (48, 192, 288, 384),
    "osnet_x0_5": (32, 128, 192, 256),
    "osnet_x0_25": (16, 64, 96, 128),
}
for _name, _channels in OSNET_WIDTHS.items():
    register_backbone(
        _name,
        checkpoint_names=(f"{_name}_imagenet.pth",),  # torchreid's cache file name
        ignored_checkpoint_prefixes=("fc.", "classifier."),
    )(partial(OSNetBackbone, _name, _channels))
