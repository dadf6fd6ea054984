"""Heads shared by PAN, PCB and the global model.

Each branch embeds its pooled features with a bias-free FC followed by BatchNorm (the
BNNeck layout: the triplet loss sees the embedding before BN, the identity classifier
and retrieval see it after BN). Identity classifiers are always submodules named
`classifier`, which is how profiling leaves them out of inference parameter counts.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn


class BranchOutput(NamedTuple):
    embedding: torch.Tensor  # before BN: the triplet loss feature
    feature: torch.Tensor  # after BN: classified and used for retrieval
    logits: Optional[torch.Tensor]  # identity logits, training mode only


class PartLinear(nn.Module):
    """Bias-free linear map of part features [B, P, in] -> [B, P, out], with one weight
    shared by all parts or one weight per part."""

    def __init__(self, num_parts: int, in_features: int, out_features: int, shared: bool, init_std: float):
        super().__init__()
        shape = (out_features, in_features) if shared else (num_parts, out_features, in_features)
        self.num_parts = num_parts
        self.shared = shared
        self.weight = nn.Parameter(torch.empty(shape).normal_(0.0, init_std))

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return torch.nn.functional.linear(parts, self.weight)
        return torch.einsum("bpi,poi->bpo", parts, self.weight)

    def extra_repr(self) -> str:
        return f"num_parts={self.num_parts}, shape={list(self.weight.shape)}, shared={self.shared}"


def _fan_out_std(out_features: int) -> float:
    """Kaiming-normal std for a layer followed by BN (fan-out mode, ReLU gain), as torchreid does."""
    return math.sqrt(2.0 / out_features)


CLASSIFIER_INIT_STD = 0.001  # small logits at the start, as in BoT


class GlobalBranch(nn.Module):
    """Global max pooling -> FC -> BN -> identity classifier (the paper's F_g^3 branch)."""

    def __init__(self, in_channels: int, dim: int, num_classes: int):
        super().__init__()
        self.embedding = nn.Linear(in_channels, dim, bias=False)
        nn.init.normal_(self.embedding.weight, 0.0, _fan_out_std(dim))
        self.bn = nn.BatchNorm1d(dim)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, 0.0, CLASSIFIER_INIT_STD)

    def forward(self, feature_map: torch.Tensor) -> BranchOutput:
        embedding = self.embedding(feature_map.amax(dim=(2, 3)))
        feature = self.bn(embedding)
        return BranchOutput(embedding, feature, self.classifier(feature) if self.training else None)


class PartBranch(nn.Module):
    """Part features [B, P, C] -> FC (shared or per part) -> BN per part -> one identity
    classifier per part."""

    def __init__(self, num_parts: int, in_channels: int, dim: int, num_classes: int, shared_fc: bool):
        super().__init__()
        self.num_parts = num_parts
        self.embedding = PartLinear(num_parts, in_channels, dim, shared_fc, _fan_out_std(dim))
        self.bn = nn.BatchNorm1d(num_parts * dim)
        self.classifier = PartLinear(num_parts, dim, num_classes, shared=False, init_std=CLASSIFIER_INIT_STD)

    def forward(self, parts: torch.Tensor) -> BranchOutput:
        embedding = self.embedding(parts)
        feature = self.bn(embedding.flatten(1)).view_as(embedding)
        return BranchOutput(embedding, feature, self.classifier(feature) if self.training else None)
