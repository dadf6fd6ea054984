"""Backbones: feature-map extractors that expose the stages PAN splits at.

Every backbone offers `forward_to_conv3(images)`, the `conv4_stage` (Conv40) and
`conv5_stage` (Conv50) modules, their output widths `conv4_channels` and
`conv5_channels`, and `forward(images)` -> the Conv50 feature map.
"""

from __future__ import annotations

from typing import Union

from torch import nn

from .osnet import OSNET_WIDTHS, OSNetBackbone
from .resnet import ResNet50Backbone
from .weights import PathLike, find_in_cache, load_backbone_weights

BACKBONES = ("resnet50", *OSNET_WIDTHS)

Pretrained = Union[None, bool, PathLike]


def build_backbone(name: str, last_stride: int = 1, pretrained: Pretrained = None) -> nn.Module:
    """Build backbone `name` (one of BACKBONES).

    `pretrained`: None/False for random initialisation, a path to a checkpoint file
    (torch.save'd state dict or .safetensors), or True/"imagenet" for the ImageNet
    checkpoint in torchvision's (resnet50) or torchreid's (OSNet) download cache.
    Nothing is ever downloaded.
    """
    if name == "resnet50":
        backbone = ResNet50Backbone(last_stride)
    elif name in OSNET_WIDTHS:
        if last_stride != 1:
            raise ValueError(f"{name}: OSNet keeps conv4 and conv5 at 1/16 resolution, so last_stride must be 1, got {last_stride}")
        backbone = OSNetBackbone(name, OSNET_WIDTHS[name])
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    if pretrained is True or pretrained == "imagenet":
        pretrained = find_in_cache(name, backbone.checkpoint_names)
    if pretrained:
        load_backbone_weights(backbone, pretrained, backbone.ignored_checkpoint_prefixes)
    return backbone


__all__ = ["BACKBONES", "build_backbone", "OSNetBackbone", "ResNet50Backbone"]
