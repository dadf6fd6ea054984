"""Backbones: feature-map extractors that expose the stages PAN splits at.

Every backbone offers `forward_to_conv3(images)`, the `conv4_stage` (Conv40) and
`conv5_stage` (Conv50) modules, their output widths `conv4_channels` and
`conv5_channels`, and `forward(images)` -> the Conv50 feature map.
"""

from __future__ import annotations

from typing import Union

from torch import nn

from .mobilenetv2 import MobileNetV2Backbone
from .osnet import OSNET_WIDTHS, OSNetBackbone
from .resnet import ResNet50Backbone
from .weights import PathLike, fetch_imagenet_weights, imagenet_checkpoint, load_backbone_weights

BACKBONES = ("resnet50", "mobilenetv2_x1_0", *OSNET_WIDTHS)

Pretrained = Union[None, bool, PathLike]


def build_backbone(name: str, last_stride: int = 1, pretrained: Pretrained = None) -> nn.Module:
    """Build backbone `name` (one of BACKBONES).

    `pretrained`: None/False for random initialisation, a path to a checkpoint file
    (torch.save'd state dict or .safetensors), or True/"imagenet" for ImageNet weights:
    the file in torchvision's or torchreid's download cache, else (resnet50,
    mobilenetv2_x1_0) a download through torchvision's weights API
    (weights.imagenet_checkpoint). The loaded file is recorded as `backbone.weights_file`.
    """
    if name == "resnet50":
        backbone = ResNet50Backbone(last_stride)
    elif name == "mobilenetv2_x1_0":
        backbone = MobileNetV2Backbone(last_stride)
    elif name in OSNET_WIDTHS:
        if last_stride != 1:
            raise ValueError(f"{name}: OSNet keeps conv4 and conv5 at 1/16 resolution, so last_stride must be 1, got {last_stride}")
        backbone = OSNetBackbone(name, OSNET_WIDTHS[name])
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    backbone.weights_file = None
    if pretrained is True or pretrained == "imagenet":
        pretrained = imagenet_checkpoint(name, backbone)
    if pretrained:
        load_backbone_weights(backbone, pretrained, backbone.ignored_checkpoint_prefixes)
        backbone.weights_file = str(pretrained)
    return backbone


__all__ = [
    "BACKBONES",
    "MobileNetV2Backbone",
    "OSNetBackbone",
    "ResNet50Backbone",
    "build_backbone",
    "fetch_imagenet_weights",
]
