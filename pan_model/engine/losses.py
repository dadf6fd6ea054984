"""Training losses of PAN (paper section 3): label-smoothing identity loss and the
batch-hard triplet loss, combined as  L = 1/2 (L_g,id + L_l,id) + L_tri.

All losses compute in float32 whatever the autocast dtype of their inputs.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig
from ..models.masks import mask_correlations, mask_overlaps
from ..registry import Registry


def _check_batch(owner: str, name: str, width: str, values: torch.Tensor, targets: torch.Tensor) -> None:
    """values must be [B, width] with one target per row."""
    if values.dim() != 2 or targets.shape != values.shape[:1]:
        raise ValueError(
            f"{owner}: expected {name} [B, {width}] and targets [B], "
            f"got {name} {tuple(values.shape)} and targets {tuple(targets.shape)}"
        )


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against targets smoothed to (1 - eps) one-hot + eps / num_classes."""

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"CrossEntropyLabelSmooth: epsilon must be in [0, 1), got {epsilon}")
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_batch("CrossEntropyLabelSmooth", "logits", "classes", logits, targets)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.epsilon)


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """[B, d] -> [B, B] Euclidean distances; clamped before the square root so that the
    zero self-distances have a finite (zero) gradient."""
    squared = features.pow(2).sum(1)
    gram = features @ features.t()
    return (squared[:, None] + squared[None, :] - 2 * gram).clamp_min(1e-12).sqrt()


class BatchHardTripletLoss(nn.Module):
    """Triplet loss on each anchor's hardest positive and hardest negative in the batch.

    margin=None is the soft-margin form log(1 + exp(d_ap - d_an)) used by PAN;
    a float gives the hinge max(0, d_ap - d_an + margin).
    """

    def __init__(self, margin: Optional[float] = None):
        super().__init__()
        self.margin = margin

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_batch("BatchHardTripletLoss", "features", "d", features, targets)
        distances = pairwise_euclidean(features.float())
        same_identity = targets[:, None] == targets[None, :]
        if bool(same_identity.all()):
            raise ValueError("BatchHardTripletLoss: the batch holds a single identity, so no anchor has a negative")
        hardest_positive = distances.masked_fill(~same_identity, float("-inf")).amax(1)
        hardest_negative = distances.masked_fill(same_identity, float("inf")).amin(1)
        gap = hardest_positive - hardest_negative
        if self.margin is None:
            return F.softplus(gap).mean()
        return F.relu(gap + self.margin).mean()


class MaskDecorrelationLoss(nn.Module):
    """Mean squared correlation between different part masks of the same image: 0 when every
    pair of masks is uncorrelated, 1 when all are one map up to scale and sign. Not in the
    paper; an option against the masks' collapse onto one map (notes/accuracy_synthetic.md)."""

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.dim() != 4 or masks.shape[1] < 2:
            raise ValueError(f"MaskDecorrelationLoss: expected masks [B, P>=2, h, w], got {tuple(masks.shape)}")
        parts = masks.shape[1]
        off_diagonal = ~torch.eye(parts, dtype=torch.bool, device=masks.device)
        return mask_correlations(masks).pow(2)[:, off_diagonal].mean()


class MaskOverlapLoss(nn.Module):
    """Mean overlap (mask_overlaps) between different part masks of the same image: 0 when the
    masks weigh disjoint positions, 1 when all weigh the same ones. Not in the paper; an option
    against masks that all become one (nearly constant) map (notes/accuracy_synthetic.md)."""

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.dim() != 4 or masks.shape[1] < 2:
            raise ValueError(f"MaskOverlapLoss: expected masks [B, P>=2, h, w], got {tuple(masks.shape)}")
        parts = masks.shape[1]
        off_diagonal = ~torch.eye(parts, dtype=torch.bool, device=masks.device)
        return mask_overlaps(masks)[:, off_diagonal].mean()


# What ReIDLoss(triplet_on=NAME) feeds the triplet loss: a model's training outputs -> [B, d].
TRIPLET_FEATURES: Registry[Callable[[dict], torch.Tensor]] = Registry(
    "triplet feature", unknown="ReIDLoss: triplet_on must be one of {choices}, got {name!r}"
)


@TRIPLET_FEATURES.register("global")
def global_embedding(outputs: dict) -> torch.Tensor:
    """The global embedding before BN (the paper)."""
    return outputs["triplet_feature"]


@TRIPLET_FEATURES.register("all")
def global_and_part_embeddings(outputs: dict) -> torch.Tensor:
    """[global embedding, part embeddings], all before BN."""
    if "part_embeddings" not in outputs:
        raise ValueError("ReIDLoss: triplet_on='all' needs the part embeddings of a part model (PAN, PCB)")
    return torch.cat([outputs["triplet_feature"], outputs["part_embeddings"].flatten(1)], dim=1)


class ReIDLoss(nn.Module):
    """L = id_weight * mean(identity losses of the branches present) + triplet_weight * L_tri.

    With a global and a local branch this is the paper's 1/2 (L_g,id + L_l,id) + L_tri; the
    local identity loss is the mean over parts; a global-only model has just L_g,id.
    Options outside the paper (off by default):
      triplet_on="all"            the triplet loss sees [global embedding, part embeddings]
                                  (all before BN) instead of the global embedding alone
      mask_decorrelation_weight   that multiple of MaskDecorrelationLoss on a PAN model's masks
      mask_overlap_weight         that multiple of MaskOverlapLoss on a PAN model's masks
    Returns the total and a dict of detached components for logging.
    """

    def __init__(
        self,
        label_smoothing: float = LossConfig.label_smoothing,
        triplet_margin: Optional[float] = LossConfig.triplet_margin,
        id_weight: float = LossConfig.id_weight,
        triplet_weight: float = LossConfig.triplet_weight,
        mask_decorrelation_weight: float = LossConfig.mask_decorrelation_weight,
        mask_overlap_weight: float = LossConfig.mask_overlap_weight,
        triplet_on: str = LossConfig.triplet_on,
    ):
        super().__init__()
        for name, weight in (("mask_decorrelation_weight", mask_decorrelation_weight), ("mask_overlap_weight", mask_overlap_weight)):
            if weight < 0:
                raise ValueError(f"ReIDLoss: {name} must be >= 0, got {weight}")
        self.select_triplet_feature = TRIPLET_FEATURES.get(triplet_on)
        self.identity = CrossEntropyLabelSmooth(label_smoothing)
        self.triplet = BatchHardTripletLoss(triplet_margin)
        self.id_weight = id_weight
        self.triplet_weight = triplet_weight
        self.mask_terms = {
            name: (module, weight)
            for name, module, weight in (
                ("mask_decorrelation", MaskDecorrelationLoss(), mask_decorrelation_weight),
                ("mask_overlap", MaskOverlapLoss(), mask_overlap_weight),
            )
            if weight > 0
        }

    def forward(self, outputs: dict, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        components = {"id_global": self.identity(outputs["global_logits"], targets)}
        local_logits = outputs.get("local_logits") or []
        if local_logits:
            components["id_local"] = torch.stack([self.identity(logits, targets) for logits in local_logits]).mean()
        identity = torch.stack(list(components.values())).mean()
        components["triplet"] = self.triplet(self.select_triplet_feature(outputs), targets)
        total = self.id_weight * identity + self.triplet_weight * components["triplet"]
        for name, (term, weight) in self.mask_terms.items():
            if "masks" not in outputs:
                raise ValueError(
                    f"ReIDLoss: {name}_weight > 0 needs the part masks of a PAN model; this model's outputs have none"
                )
            components[name] = term(outputs["masks"])
            total = total + weight * components[name]
        components["total"] = total
        return total, {name: value.detach() for name, value in components.items()}
