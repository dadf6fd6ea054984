"""Backbones: feature-map extractors that expose the stages PAN splits at.

Every backbone offers `forward_to_conv3(images)`, the `conv4_stage` (Conv40) and
`conv5_stage` (Conv50) modules, their output widths `conv4_channels` and
`conv5_channels`, and `forward(images)` -> the Conv50 feature map.

A backbone is one module that registers itself (registry.register_backbone) with its
ImageNet weight files, imported below.
"""

from __future__ import annotations

from typing import Union

from torch import nn

# Imported for their registrations, in the order BACKBONES lists them (help texts, errors).
from .resnet import ResNet50Backbone
from .mobilenetv2 import MobileNetV2Backbone
from .osnet import OSNetBackbone
from .registry import BACKBONES, BackboneSpec, register_backbone
from .weights import PathLike, fetch_imagenet_weights, imagenet_checkpoint, load_backbone_weights

Pretrained = Union[None, bool, PathLike]


def build_backbone(name: str, last_stride: int = 1, pretrained: Pretrained = None) -> nn.Module:
    """Build backbone `name` (one of BACKBONES).

    `pretrained`: None/False for random initialisation, a path to a checkpoint file
    (torch.save'd state dict or .safetensors), or True/"imagenet" for ImageNet weights:
    the file in torchvision's or torchreid's download cache, else (resnet50,
    mobilenetv2_x1_0) a download through torchvision's weights API
    (weights.imagenet_checkpoint). The loaded file is recorded as `backbone.weights_file`.
    """
    spec = BACKBONES.get(name)
    backbone = spec.build(last_stride=last_stride)
    backbone.weights_file = None
    if pretrained is True or pretrained == "imagenet":
        pretrained = imagenet_checkpoint(name)
    if pretrained:
        load_backbone_weights(backbone, pretrained, spec.ignored_checkpoint_prefixes)
        backbone.weights_file = str(pretrained)
    return backbone


__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "MobileNetV2Backbone",
    "OSNetBackbone",
    "ResNet50Backbone",
    "build_backbone",
    "fetch_imagenet_weights",
    "register_backbone",
]
