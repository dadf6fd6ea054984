"""What a trained part model's local branch has learned: are PAN's masks distinct parts, or
one map many times over, and what does each slice of the retrieval feature contribute?

    stats = part_diagnostics(model, query_loader, gallery_loader, device)

Mask statistics (learned masks only), averaged over the query images:
  mean_abs_corr      mean |Pearson correlation| between two different masks (centred: blind
                     to a mask's constant component)
  leading_eigenvalue share of the mean correlation matrix's largest eigenvalue (1/P when the
                     masks are independent, 1 when they are one map)
  mean_overlap       mean uncentred cosine between |m_p| and |m_q| (models.masks.mask_overlaps):
                     1 when all masks weigh the same positions, whatever their sign
  constant_share     share of a mask's energy in its mean: mean(m)^2 / mean(m^2); 1 for a
                     constant mask. contrast = 1 - constant_share
  single_signed      share of masks whose values all have one sign
  negative_share     share of masks whose values sum below zero (a negative mask pools the
                     negated weighted mean: same weights, the feature's sign flipped)
  weight_map         [h][w] mean over images and masks of |m| / mean(|m|): where the pooling
                     weight goes, relative to uniform pooling (1 everywhere)
Part features (PAN and PCB):
  cos_part_gap       cosine between a part's pooled feature (sign-corrected by the sign of its
                     mask's sum) and global average pooling of the same map: 1 when every part
                     is GAP in disguise
Retrieval by slice of f_cat = [global, part_1 .. part_P] (query vs gallery, Rank-1 and mAP):
  slice_scores       {"f_cat", "global", "parts", "part_mean", "part_min", "part_max"}
"""

from __future__ import annotations

from typing import Iterable

import torch

from .retrieval import evaluate_features, extract_features
from ..models import eval_mode, unwrap_model
from ..models.masks import mask_correlations, mask_overlaps


@torch.no_grad()
def mask_statistics(masks: torch.Tensor) -> dict:
    """The mask statistics above for masks [N, P, h, w] (float64 inside)."""
    masks = masks.double()
    parts = masks.shape[1]
    off_diagonal = ~torch.eye(parts, dtype=torch.bool)
    corr = mask_correlations(masks).mean(0)
    spectrum = torch.linalg.eigvalsh(corr).flip(0)
    flat = masks.flatten(2)
    constant_share = flat.mean(2).pow(2) / flat.pow(2).mean(2).clamp_min(1e-300)
    single_signed = (flat.amin(2) >= 0) | (flat.amax(2) <= 0)
    relative_weight = flat.abs() / flat.abs().mean(2, keepdim=True).clamp_min(1e-300)
    weight_map = relative_weight.mean((0, 1)).reshape(masks.shape[2:])
    return {
        "mean_abs_corr": float(corr[off_diagonal].abs().mean()),
        "leading_eigenvalue": float(spectrum[0] / spectrum.sum()),
        "mean_overlap": float(mask_overlaps(masks)[:, off_diagonal].mean()),
        "constant_share": float(constant_share.mean()),
        "single_signed": float(single_signed.double().mean()),
        "negative_share": float((flat.sum(2) < 0).double().mean()),
        "weight_map": weight_map.tolist(),
    }


@torch.no_grad()
def part_feature_statistics(model: torch.nn.Module, loader: Iterable, device) -> tuple[dict, torch.Tensor]:
    """({"cos_part_gap": ...}, the masks [N, P, h, w] of every image of `loader`)."""
    model = unwrap_model(model)
    cosines, masks = [], []
    with eval_mode(model):
        for images, *_ in loader:
            local = model.local_parts(images.to(device))
            gap = local.local_map.float().mean(dim=(2, 3))  # [B, C]
            sign = local.masks.float().sum(dim=(2, 3)).sign()  # [B, P]
            parts = local.parts.float() * sign[..., None]
            cosines.append(torch.nn.functional.cosine_similarity(parts, gap[:, None], dim=2).flatten().cpu())
            masks.append(local.masks.float().cpu())
    return {"cos_part_gap": float(torch.cat(cosines).mean())}, torch.cat(masks)


def slice_scores(model, query_features, gallery_features, q_pids, g_pids, q_camids, g_camids) -> dict:
    """Rank-1 and mAP of each slice of f_cat on its own (see the module docstring)."""
    model = unwrap_model(model)
    global_dim = model.global_branch.embedding.out_features
    slices = {"f_cat": slice(None), "global": slice(0, global_dim)}
    parts = getattr(model, "num_parts", 0)
    if parts:
        local_dim = (query_features.shape[1] - global_dim) // parts
        slices["parts"] = slice(global_dim, None)
        slices.update({p: slice(global_dim + p * local_dim, global_dim + (p + 1) * local_dim) for p in range(parts)})
    scores = {}
    for name, columns in slices.items():
        result = evaluate_features(
            query_features[:, columns], gallery_features[:, columns], q_pids, g_pids, q_camids, g_camids
        )
        scores[name] = {"rank1": result["rank1"], "mAP": result["mAP"]}
    if parts:
        single = [scores.pop(p)["rank1"] for p in range(parts)]
        scores["part_mean"] = {"rank1": sum(single) / parts}
        scores["part_min"] = {"rank1": min(single)}
        scores["part_max"] = {"rank1": max(single)}
    return scores


def part_diagnostics(
    model: torch.nn.Module, query_loader: Iterable, gallery_loader: Iterable, device="cpu", query=None, gallery=None
) -> dict:
    """Everything in the module docstring for `model` on these query and gallery images.
    `query` / `gallery`: their extract_features results when the caller has them already."""
    if query is None:
        query = extract_features(model, query_loader, device)
    if gallery is None:
        gallery = extract_features(model, gallery_loader, device)
    result = {"slice_scores": slice_scores(model, query[0], gallery[0], query[1], gallery[1], query[2], gallery[2])}
    plain = unwrap_model(model)
    if hasattr(plain, "local_parts"):
        features, masks = part_feature_statistics(plain, query_loader, device)
        result.update(features)
        if getattr(plain, "mask_generator", None) is not None and masks.shape[1] > 1:
            result.update(mask_statistics(masks))
    return result
