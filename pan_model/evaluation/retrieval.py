"""Evaluation of a re-identification model: features of the query and gallery images,
their distances (optionally re-ranked), then CMC / mAP / mINP."""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch

from . import metrics
from ..models import eval_mode

REPORTED_RANKS = (1, 5, 10)


@torch.inference_mode()
def extract_features(model: torch.nn.Module, loader: Iterable, device: "str | torch.device", flip: bool = False):
    """Features of every image of `loader` (batches of (images, pids, camids, ...)).

    Returns (features float32 [N, D] on the CPU, pids int64 [N], camids int64 [N]).
    flip=True averages each image's features with those of its mirror image. The model
    is run in eval mode and left in the mode it came in.
    """
    features, pids, camids = [], [], []
    with eval_mode(model):
        for images, batch_pids, batch_camids, *_ in loader:
            images = images.to(device, non_blocking=True)
            batch_features = model(images)
            if flip:
                batch_features = (batch_features + model(images.flip(3))) / 2
            features.append(batch_features.float().cpu())
            pids.append(torch.as_tensor(batch_pids))
            camids.append(torch.as_tensor(batch_camids))
    if not features:
        raise ValueError("extract_features: the loader yielded no images")
    return torch.cat(features), torch.cat(pids).numpy().astype(np.int64), torch.cat(camids).numpy().astype(np.int64)


BLOCK_BYTES = 256 << 20  # default query block: about this much float32 distances


def evaluate_features(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "euclidean",
    rerank: bool = False,
    max_rank: int = 50,
    device: "str | torch.device | None" = None,
    return_distances: bool = False,
    query_block: Optional[int] = None,
) -> dict:
    """Scores of query vs gallery features: rank1, rank5, rank10, mAP, mINP (fractions in
    [0, 1]) and the CMC curve (a list). Distances are computed on `device` (default: the
    features').

    The queries are scored `query_block` at a time (rounded up to a multiple of
    metrics.DISTANCE_CHUNK_ROWS; default: blocks of about BLOCK_BYTES of distances), so memory beyond
    the features grows with query_block x num_gallery, never with the whole query x gallery
    matrix; the scores are the same to the last digit for every block size. Two options need
    the whole matrix: rerank=True applies k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)
    on squared Euclidean distances for metric="euclidean", on the metric's own otherwise,
    and refuses with MemoryError when its matrices would not fit in the memory available;
    return_distances=True adds "distances", the [num_query, num_gallery] numpy array the
    scores were ranked by (re-ranked ones when rerank=True), for pictures of the same ranking."""
    if device is not None:
        query_features, gallery_features = query_features.to(device), gallery_features.to(device)
    labels = (q_pids, g_pids, q_camids, g_camids)
    extra = {}
    if rerank or return_distances:
        distmat = _whole_distance_matrix(query_features, gallery_features, metric, rerank)
        ranks = [metrics.rank_queries(distmat, *labels)]
        if return_distances:
            extra["distances"] = np.asarray(distmat)
    else:
        num_gallery = gallery_features.shape[0]
        if query_block is None:
            query_block = BLOCK_BYTES // (4 * max(num_gallery, 1))
        if query_block < 1:
            raise ValueError(f"evaluate_features: query_block must be >= 1, got {query_block}")
        # Whole chunks of compute_distance_matrix: each distance, hence each score, is then
        # computed by the same product whatever the block size.
        chunk = metrics.DISTANCE_CHUNK_ROWS
        query_block = -(-query_block // chunk) * chunk
        q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
        blocks = metrics.distance_blocks(query_features, gallery_features, metric, query_block, chunk)
        ranks, start = [], 0
        # (a plain loop: zip or enumerate would keep the last block alive in their reused
        # result tuple while the next one is computed)
        for block in blocks:
            rows = slice(start, start + block.shape[0])
            ranks.append(metrics.rank_queries(block, q_pids[rows], g_pids, q_camids[rows], g_camids))
            start += block.shape[0]
            del block  # free before the next block is computed
    cmc, mean_ap, mean_inp = metrics.summarise_ranks(ranks, max_rank)
    scores = {f"rank{rank}": float(cmc[rank - 1]) for rank in REPORTED_RANKS if rank <= len(cmc)}
    return {**scores, "mAP": mean_ap, "mINP": mean_inp, "cmc": cmc.tolist(), **extra}


def _whole_distance_matrix(query_features, gallery_features, metric: str, rerank: bool):
    """The [Q, G] distances, re-ranked when asked (after checking that re-ranking fits)."""
    distance = metrics.compute_distance_matrix
    if not rerank:
        return distance(query_features, gallery_features, metric)
    metrics.check_re_ranking_memory(query_features.shape[0], gallery_features.shape[0])
    rerank_metric = "sqeuclidean" if metric == "euclidean" else metric
    return metrics.re_ranking(
        distance(query_features, gallery_features, rerank_metric),
        distance(query_features, query_features, rerank_metric),
        distance(gallery_features, gallery_features, rerank_metric),
    )


def evaluate(
    model: torch.nn.Module,
    query_loader: Iterable,
    gallery_loader: Iterable,
    device: "str | torch.device",
    metric: str = "euclidean",
    flip: bool = False,
    rerank: bool = False,
    max_rank: int = 50,
    return_distances: bool = False,
    query_block: Optional[int] = None,
) -> dict:
    """Extract query and gallery features with `model`, then score them (evaluate_features)."""
    query_features, q_pids, q_camids = extract_features(model, query_loader, device, flip)
    gallery_features, g_pids, g_camids = extract_features(model, gallery_loader, device, flip)
    return evaluate_features(
        query_features,
        gallery_features,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        metric,
        rerank,
        max_rank,
        device,
        return_distances,
        query_block,
    )


def evaluate_as_configured(
    model: torch.nn.Module,
    eval_config,
    query_loader: Iterable,
    gallery_loader: Iterable,
    device: "str | torch.device",
    **kwargs,
) -> dict:
    """`evaluate` with the metric, flip and rerank of a config's `eval` section (config.EvalConfig):
    the one place the trainer and the CLI turn that section into an evaluation."""
    return evaluate(
        model,
        query_loader,
        gallery_loader,
        device,
        metric=eval_config.metric,
        flip=eval_config.flip,
        rerank=eval_config.rerank,
        **kwargs,
    )
