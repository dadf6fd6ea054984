"""Retrieval metrics of person re-identification: distances, CMC / mAP / mINP under the
Market-1501 / DukeMTMC protocol, and k-reciprocal re-ranking.

Protocol of `evaluate_rank`, per query:
  * gallery images with the query's pid AND camera are dropped (the same view of the same
    person is not a retrieval);
  * the remaining gallery is ranked by ascending distance, ties broken by gallery order;
  * queries left without a match are skipped;
  * CMC(k) = 1 when a match is within the first k; AP = mean of the precision at each
    match; INP = (#matches) / (rank of the last match).

How it stays fast: no sort and no per-query loop over the gallery. Only the few gallery
images sharing the query's pid are placed in their row's ranking, by counting the distances
below each (rows spread over threads); the rest of the protocol works on those positions
alone.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DISTANCE_METRICS = ("euclidean", "sqeuclidean", "cosine")
# Query rows per matrix product of compute_distance_matrix: a row's distances come from the
# same product whether the caller asks for the whole matrix or for blocks of whole chunks.
DISTANCE_CHUNK_ROWS = 256


# ---- distances -----------------------------------------------------------------------------
def _squared_norms(features: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """|x|^2 of each row, `rows` rows at a time: features.pow(2) of a whole gallery at once
    would be a temporary copy of it (1.5 GiB at 100,000 x 4,096)."""
    return torch.cat([features[start : start + rows].pow(2).sum(1) for start in range(0, max(features.shape[0], 1), rows)])


def compute_distance_matrix(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    metric: str = "euclidean",
    chunk_size: int = DISTANCE_CHUNK_ROWS,
) -> torch.Tensor:
    """Distances [Q, G] (float32, on the CPU) between query [Q, D] and gallery [G, D] features.

    metric: "euclidean" (L2 distance), "sqeuclidean" (its square) or "cosine" (1 - cosine
    similarity). Computed on the features' device `chunk_size` query rows at a time, so a
    large gallery never needs more than chunk_size x G extra memory there.
    """
    num_query = torch.as_tensor(query_features).shape[0]
    return next(distance_blocks(query_features, gallery_features, metric, max(num_query, 1), chunk_size))


def distance_blocks(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    metric: str = "euclidean",
    block_rows: int = DISTANCE_CHUNK_ROWS,
    chunk_size: int = DISTANCE_CHUNK_ROWS,
) -> Iterator[torch.Tensor]:
    """The rows of compute_distance_matrix, `block_rows` query rows at a time (the last block
    may be shorter; at least one block): for callers that never hold the whole matrix. The
    gallery is prepared (its squared norms, or its norms for cosine) once for all blocks, and
    each row comes from the same `chunk_size`-row product as in the whole matrix when
    block_rows is a multiple of chunk_size."""
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"compute_distance_matrix: metric must be one of {DISTANCE_METRICS}, got {metric!r}")
    if chunk_size < 1 or block_rows < 1:
        raise ValueError(f"compute_distance_matrix: chunk_size and block_rows must be >= 1, got {chunk_size} and {block_rows}")
    query_features = torch.as_tensor(query_features)
    gallery_features = torch.as_tensor(gallery_features, device=query_features.device)
    if query_features.dim() != 2 or gallery_features.dim() != 2 or query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(
            "compute_distance_matrix: expected query_features [Q, D] and gallery_features [G, D] with the "
            f"same D, got {tuple(query_features.shape)} and {tuple(gallery_features.shape)}"
        )
    dtype = torch.float64 if torch.float64 in (query_features.dtype, gallery_features.dtype) else torch.float32
    query_features, gallery_features = query_features.to(dtype), gallery_features.to(dtype)
    if metric == "cosine":
        # Each product is divided by |g| rather than the gallery normalised, which would be a
        # copy of it; the clamp is F.normalize's, so a zero row gives distance 1 as there.
        gallery_norms = _squared_norms(gallery_features).sqrt_().clamp_(min=1e-12)
    else:
        gallery_sq_norms = _squared_norms(gallery_features)

    num_query, num_gallery = query_features.shape[0], gallery_features.shape[0]
    for block_start in range(0, max(num_query, 1), block_rows):
        block_stop = min(block_start + block_rows, num_query)
        out = torch.empty(block_stop - block_start, num_gallery, dtype=torch.float32)
        for start in range(block_start, block_stop, chunk_size):
            query = query_features[start : min(start + chunk_size, block_stop)]
            if metric == "cosine":
                query = F.normalize(query, dim=1)
            # Off autocast, which would run this product in half precision when the caller
            # extracts features under it: |q|^2 + |g|^2 - 2 q.g cancels most of those bits.
            with torch.autocast(query.device.type, enabled=False):
                products = query @ gallery_features.T
            if metric == "cosine":
                chunk = 1.0 - products.div_(gallery_norms)
            else:
                # |q - g|^2 = |q|^2 + |g|^2 - 2 q.g; rounding can dip just below zero.
                chunk = (query.pow(2).sum(1, keepdim=True) + gallery_sq_norms - 2.0 * products).clamp_(min=0)
                if metric == "euclidean":
                    chunk = chunk.sqrt_()
            out[start - block_start : start - block_start + query.shape[0]] = chunk.to("cpu", torch.float32)
        yield out
        del out  # the caller's block is the only one held while the next is computed


# ---- CMC / mAP / mINP ----------------------------------------------------------------------
def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _check_labels(name: str, labels, expected: int, distmat_shape) -> np.ndarray:
    labels = _as_numpy(labels)
    if labels.ndim != 1 or labels.shape[0] != expected:
        raise ValueError(
            f"evaluate_rank: {name} must be 1-D with {expected} entries to match distmat of shape "
            f"{tuple(distmat_shape)}, got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"evaluate_rank: {name} must hold integers, got dtype {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def _ragged_ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, start + size) for each pair."""
    offsets = np.cumsum(sizes) - sizes
    return np.arange(int(sizes.sum())) - np.repeat(offsets - starts, sizes)


def _ranking_positions(block: np.ndarray, local_rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """0-based positions of the entries (local_rows, cols) of `block` in their row's stable
    ascending order (ties by column): how many values of the row are smaller, plus how many
    equal ones sit in an earlier column. local_rows must be sorted.

    Counted, not sorted: a query has few gallery images of its own identity, and counting
    costs two passes over the row per such image where sorting costs G log G per row
    (benchmarks/RESULTS.md, evaluation at gallery scale)."""
    if np.isnan(block).any():
        raise ValueError("evaluate_rank: distmat contains NaN")
    values = block[local_rows, cols]
    row_bounds = np.searchsorted(local_rows, np.arange(block.shape[0] + 1))
    position = np.empty(values.size, dtype=np.int64)
    for row in np.flatnonzero(np.diff(row_bounds)):
        entries = slice(row_bounds[row], row_bounds[row + 1])
        line, own = block[row], values[entries, None]
        smaller = np.count_nonzero(line < own, axis=1)
        position[entries] = smaller
        # values the entry ties with: those in earlier columns come first
        for entry in np.flatnonzero(np.count_nonzero(line <= own, axis=1) - smaller > 1):
            index = row_bounds[row] + entry
            position[index] += np.count_nonzero(line[: cols[index]] == values[index])
    return position


def _same_pid_pairs(q_pids: np.ndarray, g_pids: np.ndarray):
    """(query, gallery index) of every pair sharing a pid, sorted by query."""
    gallery_by_pid = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[gallery_by_pid]
    starts = np.searchsorted(sorted_pids, q_pids, side="left")
    sizes = np.searchsorted(sorted_pids, q_pids, side="right") - starts
    return np.repeat(np.arange(q_pids.size), sizes), gallery_by_pid[_ragged_ranges(starts, sizes)]


@dataclass(frozen=True)
class QueryRanks:
    """Per-query outcome of a ranking, for the queries that have a match in another camera
    (in query order): what CMC, mAP and mINP are averaged from. Rankings of query blocks
    concatenate (`summarise_ranks`) to exactly the numbers of the whole matrix."""

    first_rank: np.ndarray  # int64 [V]: 0-based rank of the first true match
    average_precision: np.ndarray  # float64 [V]
    inverse_negative_penalty: np.ndarray  # float64 [V]: matches / (rank of the last match + 1)


def rank_queries(distmat, q_pids, g_pids, q_camids, g_camids) -> QueryRanks:
    """Rank the gallery for each query of `distmat` [Q, G] (numpy array or tensor, any real
    dtype; NaN is rejected) under the protocol above; the pid and camera arrays are integer
    sequences of length Q or G."""
    distmat = _as_numpy(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"evaluate_rank: distmat must be [num_query, num_gallery], got shape {distmat.shape}")
    num_query, num_gallery = distmat.shape
    q_pids = _check_labels("q_pids", q_pids, num_query, distmat.shape)
    q_camids = _check_labels("q_camids", q_camids, num_query, distmat.shape)
    g_pids = _check_labels("g_pids", g_pids, num_gallery, distmat.shape)
    g_camids = _check_labels("g_camids", g_camids, num_gallery, distmat.shape)
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"evaluate_rank: distmat of shape {distmat.shape} has no query or no gallery image")
    if distmat.dtype != np.float32:
        distmat = distmat.astype(np.float64, copy=False)  # ints up to 2**53 stay exact

    query, gallery = _same_pid_pairs(q_pids, g_pids)
    rows_per_chunk = max(1, (1 << 20) // num_gallery)  # ~4 MB of float32 per chunk stays in cache
    chunk_starts = range(0, num_query, rows_per_chunk)
    pair_bounds = np.searchsorted(query, [*chunk_starts, num_query])

    def chunk_positions(chunk: int) -> np.ndarray:
        start, pairs = chunk_starts[chunk], slice(pair_bounds[chunk], pair_bounds[chunk + 1])
        return _ranking_positions(distmat[start : start + rows_per_chunk], query[pairs] - start, gallery[pairs])

    workers = min(len(chunk_starts), os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # numpy's comparisons and counts release the GIL
        position = np.concatenate(list(pool.map(chunk_positions, range(len(chunk_starts)))))

    # Split same-pid gallery images into junk (same camera) and true matches.
    junk = g_camids[gallery] == q_camids[query]
    junk_code = np.sort(query[junk] * num_gallery + position[junk])
    match_query, match_position = query[~junk], position[~junk]
    match_code = match_query * num_gallery + match_position
    # Rank among the kept gallery images = position - junk images of that query ranked before it.
    junk_before = np.searchsorted(junk_code, match_code) - np.searchsorted(junk_code, match_query * num_gallery)
    rank = match_position - junk_before
    order = np.lexsort((rank, match_query))
    match_query, rank = match_query[order], rank[order]

    num_matches = np.bincount(match_query, minlength=num_query)
    valid = num_matches > 0
    first = np.cumsum(num_matches) - num_matches  # index of each query's first match in `rank`
    nth_match = np.arange(rank.size) - first[match_query]  # 0-based index among the query's matches
    precision = (nth_match + 1) / (rank + 1.0)
    average_precision = np.bincount(match_query, weights=precision, minlength=num_query)[valid] / num_matches[valid]
    last_rank = rank[first[valid] + num_matches[valid] - 1]
    return QueryRanks(rank[first[valid]], average_precision, num_matches[valid] / (last_rank + 1.0))


def summarise_ranks(ranks: "QueryRanks | Sequence[QueryRanks]", max_rank: int = 50):
    """(cmc float32 [max_rank], mAP, mINP) of the queries of `ranks` (one ranking or the
    rankings of consecutive query blocks), fractions in [0, 1] averaged over the queries
    that have a match. Raises ValueError when no query has one."""
    if max_rank < 1:
        raise ValueError(f"evaluate_rank: max_rank must be >= 1, got {max_rank}")
    ranks = [ranks] if isinstance(ranks, QueryRanks) else list(ranks)
    first_rank = np.concatenate([r.first_rank for r in ranks])
    if first_rank.size == 0:
        raise ValueError(
            "evaluate_rank: no query has a matching gallery image (same pid, different camera); "
            "check the pid and camera arrays"
        )
    hits = np.bincount(first_rank[first_rank < max_rank], minlength=max_rank)
    cmc = (np.cumsum(hits) / first_rank.size).astype(np.float32)
    mean_ap = float(np.concatenate([r.average_precision for r in ranks]).mean())
    mean_inp = float(np.concatenate([r.inverse_negative_penalty for r in ranks]).mean())
    return cmc, mean_ap, mean_inp


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50):
    """CMC curve, mAP and mINP of a query x gallery distance matrix (Market/Duke protocol):
    rank_queries then summarise_ranks. Returns (cmc float32 [max_rank], mAP, mINP),
    fractions in [0, 1] averaged over the queries that have a match. Raises ValueError when
    no query has a match in another camera."""
    return summarise_ranks(rank_queries(distmat, q_pids, g_pids, q_camids, g_camids), max_rank)


# ---- re-ranking ----------------------------------------------------------------------------
def re_ranking_bytes(num_query: int, num_gallery: int) -> int:
    """Peak memory of re_ranking for these sizes, on the safe side (10-30% above the peak
    resident memory measured at 1,000 x 5,000, 3,000 x 3,000 and 400 x 6,000 queries x
    gallery images, inputs included): its three float32 inputs, the joint
    (Q + G)^2 float32 matrix three times over while it is assembled and scaled, and the
    [Q, G] float64 Jaccard distances with the temporaries of the final blend."""
    num_all = num_query + num_gallery
    inputs = 4 * (num_query * num_gallery + num_query**2 + num_gallery**2)
    return inputs + 3 * 4 * num_all**2 + 24 * num_query * num_gallery


def available_memory_bytes() -> int:
    """Memory the system can give without swapping (Linux's MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_re_ranking_memory(num_query: int, num_gallery: int) -> None:
    """Raise MemoryError, stating what re-ranking would need, when it would not fit."""
    needed, available = re_ranking_bytes(num_query, num_gallery), available_memory_bytes()
    if needed > available:
        gib = 1 << 30
        raise MemoryError(
            f"re-ranking {num_query} queries against {num_gallery} gallery images needs about "
            f"{needed / gib:.1f} GiB (a ({num_query} + {num_gallery})^2 distance matrix), more than the "
            f"{available / gib:.1f} GiB available; evaluate without re-ranking (eval.rerank=false) or on a smaller gallery"
        )


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) -> the re-ranked [Q, G] distances.

    Takes the query-gallery, query-query and gallery-gallery distances of one symmetric
    metric (the evaluator passes squared Euclidean or cosine distances). Each image's distances are
    scaled by their maximum; an image's k-reciprocal neighbour set (expanded by the
    half-size sets of its members that overlap it by more than 2/3) is encoded as Gaussian
    weights, averaged over the k2 nearest neighbours (query expansion), and the final
    distance is (1 - lambda) * Jaccard distance of those encodings + lambda * original.
    The encodings are kept sparse; memory is dominated by one (Q + G)^2 float32 matrix.
    """
    q_g = torch.as_tensor(_as_numpy(q_g_dist), dtype=torch.float32)
    q_q = torch.as_tensor(_as_numpy(q_q_dist), dtype=torch.float32)
    g_g = torch.as_tensor(_as_numpy(g_g_dist), dtype=torch.float32)
    num_query, num_gallery = q_g.shape
    if q_q.shape != (num_query, num_query) or g_g.shape != (num_gallery, num_gallery):
        raise ValueError(
            f"re_ranking: expected q_g_dist [Q, G], q_q_dist [Q, Q], g_g_dist [G, G], got {tuple(q_g.shape)}, "
            f"{tuple(q_q.shape)}, {tuple(g_g.shape)}"
        )
    num_all = num_query + num_gallery
    if not 1 <= k2 <= k1 < num_all:
        raise ValueError(f"re_ranking: need 1 <= k2 <= k1 < Q + G = {num_all}, got k1={k1}, k2={k2}")
    # Row i: distances from image i, scaled by their maximum. (The original code scales the
    # columns of the joint matrix and transposes it: the same for symmetric q_q and g_g,
    # without a transposed copy of the large g_g.)
    dist = torch.cat([torch.cat([q_q, q_g], 1), torch.cat([q_g.T, g_g], 1)], 0)
    dist /= dist.max(dim=1, keepdim=True).values.clamp_min(torch.finfo(torch.float32).tiny)
    neighbours = torch.topk(dist, k1 + 1, dim=1, largest=False, sorted=True).indices

    encoding = _k_reciprocal_encoding(dist, neighbours, half_k1=int(np.around(k1 / 2.0)))
    if k2 > 1:  # query expansion: mean encoding of the k2 nearest neighbours
        encoding = _query_expansion(encoding, neighbours[:, :k2].numpy())
    jaccard = _jaccard_distance(encoding, num_query, num_all)
    return ((1 - lambda_value) * jaccard + lambda_value * dist[:num_query, num_query:].numpy()).astype(np.float32)


def _reciprocal_mask(neighbours: torch.Tensor) -> torch.Tensor:
    """mask[i, a]: whether neighbours[i, a] also has i among its own neighbours."""
    own = torch.arange(neighbours.shape[0])[:, None, None]
    return (neighbours[neighbours] == own).any(dim=2)


def _k_reciprocal_encoding(dist: torch.Tensor, neighbours: torch.Tensor, half_k1: int, rows_per_chunk: int = 1024):
    """Sparse rows (rows, cols, values; row-major order) of Gaussian weights exp(-d),
    normalised, over each image's expanded k-reciprocal set: its k-reciprocal neighbours
    ("members"), plus the half_k1-reciprocal set of every member of which more than 2/3
    are members."""
    num_all = dist.shape[0]
    is_member_all = _reciprocal_mask(neighbours)
    half_neighbours = neighbours[:, : half_k1 + 1]
    half_reciprocal = _reciprocal_mask(half_neighbours)
    parts = []
    for start in range(0, num_all, rows_per_chunk):
        members, is_member = neighbours[start : start + rows_per_chunk], is_member_all[start : start + rows_per_chunk]
        candidates, is_candidate = half_neighbours[members], half_reciprocal[members]  # [R, k1 + 1, half + 1]
        in_members = ((candidates[..., None] == members[:, None, None, :]) & is_member[:, None, None, :]).any(-1)
        overlap, size = (in_members & is_candidate).sum(-1), is_candidate.sum(-1)
        joins = is_candidate & (is_member & (3 * overlap > 2 * size))[..., None]
        row_of = torch.arange(start, start + members.shape[0])[:, None]
        keys = torch.cat([(row_of * num_all + members)[is_member], (row_of[..., None] * num_all + candidates)[joins]])
        keys = np.unique(keys.numpy())  # sorted, so row-major
        rows, cols = keys // num_all, keys % num_all
        weights = np.exp(-dist.numpy()[rows, cols].astype(np.float64))
        local_rows = rows - start
        parts.append((rows, cols, weights / np.bincount(local_rows, weights=weights)[local_rows]))
    return tuple(np.concatenate(field) for field in zip(*parts))


def _query_expansion(encoding, expansion_neighbours: np.ndarray):
    """Row i becomes the mean of the rows expansion_neighbours[i] (sparse in, sparse out)."""
    rows, cols, values = encoding
    num_all, k2 = expansion_neighbours.shape
    row_start = np.searchsorted(rows, np.arange(num_all + 1))
    sources = expansion_neighbours.ravel()
    sizes = row_start[sources + 1] - row_start[sources]
    taken = _ragged_ranges(row_start[sources], sizes)
    keys = np.repeat(np.arange(num_all).repeat(k2), sizes) * num_all + cols[taken]
    unique_keys, slot = np.unique(keys, return_inverse=True)  # sorted: row-major again
    return unique_keys // num_all, unique_keys % num_all, np.bincount(slot, weights=values[taken]) / k2


def _jaccard_distance(encoding, num_query: int, num_all: int, pairs_per_chunk: int = 1 << 22) -> np.ndarray:
    """1 - m / (2 - m), m = sum_k min(a_k, b_k), between the encodings a of the queries
    (the first num_query rows) and b of the gallery (the other rows) -> [Q, G] float64.

    A min is non-zero only where both entries are, so each non-zero a_k only meets the
    non-zero gallery entries of column k."""
    rows, cols, values = encoding
    num_gallery = num_all - num_query
    query_entries = int(np.searchsorted(rows, num_query))
    # The gallery's non-zero entries grouped by column.
    by_column = query_entries + np.argsort(cols[query_entries:], kind="stable")
    column_rows, column_values = rows[by_column] - num_query, values[by_column]
    column_size = np.bincount(cols[query_entries:], minlength=num_all)
    column_start = np.cumsum(column_size) - column_size
    row_start = np.searchsorted(rows[:query_entries], np.arange(num_query + 1))
    # Pairs (query entry, gallery entry) met before each query row, to size the chunks.
    pairs_before_row = np.concatenate([[0], np.cumsum(column_size[cols[:query_entries]])])[row_start]

    jaccard = np.empty((num_query, num_gallery), dtype=np.float64)
    first = 0
    while first < num_query:
        last = int(np.searchsorted(pairs_before_row, pairs_before_row[first] + pairs_per_chunk, side="right")) - 1
        last = min(max(last, first + 1), num_query)
        entries = np.arange(row_start[first], row_start[last])
        sizes = column_size[cols[entries]]
        owner = np.repeat(entries, sizes)
        partner = _ragged_ranges(column_start[cols[entries]], sizes)
        flat = (rows[owner] - first) * num_gallery + column_rows[partner]
        minima = np.minimum(values[owner], column_values[partner])
        overlap = np.bincount(flat, weights=minima, minlength=(last - first) * num_gallery)
        jaccard[first:last] = (1 - overlap / (2 - overlap)).reshape(last - first, num_gallery)
        first = last
    return jaccard
