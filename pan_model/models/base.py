"""What the three re-id models share: a backbone split at conv4/conv5, the global
branch on Conv50, the optional buffer copies, and the output convention.

Eval mode returns the retrieval feature [B, feature_dim]; train mode returns the dict
the losses read (see ReIDModel.outputs).
"""

from __future__ import annotations

import copy
from typing import NamedTuple, Optional, Union

import torch
from torch import nn

from ..backbones import build_backbone
from .heads import BranchOutput, GlobalBranch

Output = Union[torch.Tensor, dict]


class LocalParts(NamedTuple):
    """What a part model's local branch starts from (for diagnostics and the forward pass)."""

    local_map: torch.Tensor  # [B, C, h, w] the feature map the parts are pooled from (Conv51)
    masks: torch.Tensor  # [B, P, h, w] the pooling weights (PCB: its stripes as 0/1 masks)
    parts: torch.Tensor  # [B, P, C] pooled part features, before the part FC
    conv50: torch.Tensor  # [B, C, h, w] the global branch's input


def check_choice(option: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {tuple(choices)}, got {value!r}")


def check_positive(option: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{option} must be a positive integer, got {value!r}")


def buffer_copy(stage: nn.Module) -> nn.Module:
    """A buffer stage (Conv41/Conv51): an independent copy starting from the same weights."""
    return copy.deepcopy(stage)


class ReIDModel(nn.Module):
    """Backbone + global branch; subclasses add the local branch."""

    num_parts = 0

    def __init__(self, num_classes: int, global_dim: int, backbone: str, last_stride: int, pretrained):
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("global_dim", global_dim)
        self.backbone = build_backbone(backbone, last_stride=last_stride, pretrained=pretrained)
        self.global_branch = GlobalBranch(self.backbone.conv5_channels, global_dim, num_classes)
        self.feature_dim = global_dim

    def outputs(self, global_out: BranchOutput, local_out: Optional[BranchOutput] = None, masks=None) -> Output:
        """Eval: f_cat = [global feature, part features...]. Train: a dict with
        global_logits [B,K], local_logits (list of P [B,K]), triplet_feature (the global
        embedding before BN), part_embeddings ([B,P,n_l] before BN, part models only),
        feature (f_cat) and, for PAN, masks [B,P,h,w]."""
        feature = global_out.feature
        if local_out is not None:
            feature = torch.cat([feature, local_out.feature.flatten(1)], dim=1)
        if not self.training:
            return feature
        result = {
            "global_logits": global_out.logits,
            "local_logits": list(local_out.logits.unbind(1)) if local_out is not None else [],
            "triplet_feature": global_out.embedding,
            "feature": feature,
        }
        if local_out is not None:
            result["part_embeddings"] = local_out.embedding
        if masks is not None:
            result["masks"] = masks
        return result
