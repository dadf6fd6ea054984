"""Training losses of PAN (paper section 3): label-smoothing identity loss and the
batch-hard triplet loss, combined as  L = 1/2 (L_g,id + L_l,id) + L_tri.

All losses compute in float32 whatever the autocast dtype of their inputs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


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


def mask_correlations(masks: torch.Tensor) -> torch.Tensor:
    """[B, P, h, w] -> [B, P, P]: Pearson correlation between the masks of each image over its
    h*w positions (float32 at least; a constant mask has correlation 0 with every other)."""
    flat = masks.flatten(2).to(torch.promote_types(masks.dtype, torch.float32))
    centred = flat - flat.mean(2, keepdim=True)
    unit = centred / centred.norm(dim=2, keepdim=True).clamp_min(1e-12)
    return unit @ unit.transpose(1, 2)


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


class ReIDLoss(nn.Module):
    """L = id_weight * mean(identity losses of the branches present) + triplet_weight * L_tri.

    With a global and a local branch this is the paper's 1/2 (L_g,id + L_l,id) + L_tri; the
    local identity loss is the mean over parts; a global-only model has just L_g,id.
    mask_decorrelation_weight > 0 adds that multiple of MaskDecorrelationLoss on the masks
    of a PAN model (not in the paper; 0 by default).
    Returns the total and a dict of detached components for logging.
    """

    def __init__(
        self,
        label_smoothing: float = 0.1,
        triplet_margin: Optional[float] = None,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        mask_decorrelation_weight: float = 0.0,
    ):
        super().__init__()
        if mask_decorrelation_weight < 0:
            raise ValueError(f"ReIDLoss: mask_decorrelation_weight must be >= 0, got {mask_decorrelation_weight}")
        self.identity = CrossEntropyLabelSmooth(label_smoothing)
        self.triplet = BatchHardTripletLoss(triplet_margin)
        self.mask_decorrelation = MaskDecorrelationLoss()
        self.id_weight = id_weight
        self.triplet_weight = triplet_weight
        self.mask_decorrelation_weight = mask_decorrelation_weight

    def forward(self, outputs: dict, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        components = {"id_global": self.identity(outputs["global_logits"], targets)}
        local_logits = outputs.get("local_logits") or []
        if local_logits:
            components["id_local"] = torch.stack([self.identity(logits, targets) for logits in local_logits]).mean()
        identity = torch.stack(list(components.values())).mean()
        components["triplet"] = self.triplet(outputs["triplet_feature"], targets)
        total = self.id_weight * identity + self.triplet_weight * components["triplet"]
        if self.mask_decorrelation_weight > 0:
            if "masks" not in outputs:
                raise ValueError(
                    "ReIDLoss: mask_decorrelation_weight > 0 needs the part masks of a PAN model; "
                    "this model's outputs have none"
                )
            components["mask_decorrelation"] = self.mask_decorrelation(outputs["masks"])
            total = total + self.mask_decorrelation_weight * components["mask_decorrelation"]
        components["total"] = total
        return total, {name: value.detach() for name, value in components.items()}
