"""How alike the part masks [B, P, h, w] of each image are: what the optional mask losses
penalise (engine.losses) and the part diagnostics report (evaluation.diagnostics)."""

from __future__ import annotations

import torch


def mask_correlations(masks: torch.Tensor) -> torch.Tensor:
    """[B, P, h, w] -> [B, P, P]: Pearson correlation between the masks of each image over its
    h*w positions (float32 at least; a constant mask has correlation 0 with every other)."""
    flat = masks.flatten(2).to(torch.promote_types(masks.dtype, torch.float32))
    centred = flat - flat.mean(2, keepdim=True)
    unit = centred / centred.norm(dim=2, keepdim=True).clamp_min(1e-12)
    return unit @ unit.transpose(1, 2)


def mask_overlaps(masks: torch.Tensor) -> torch.Tensor:
    """[B, P, h, w] -> [B, P, P]: cosine between the masks' absolute values |m_p| and |m_q| of
    each image, uncentred (float32 at least). In [0, 1]: 0 when two masks weigh disjoint
    positions, 1 when they weigh the same positions in the same proportions. Unlike the
    correlation it sees the constant component, and the sign: a mask and its negative, or two
    nearly constant masks, overlap fully. |m| is what weighted_pool normalises by."""
    weights = masks.flatten(2).abs().to(torch.promote_types(masks.dtype, torch.float32))
    unit = weights / weights.norm(dim=2, keepdim=True).clamp_min(1e-12)
    return unit @ unit.transpose(1, 2)
