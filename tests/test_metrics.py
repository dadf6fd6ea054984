"""pan_model.evaluation.metrics against straightforward per-query / per-image references."""

import numpy as np
import pytest
import torch

from pan_model.evaluation.metrics import compute_distance_matrix, distance_blocks, evaluate_rank, re_ranking


# ---- references: the protocol written out one query at a time ------------------------------
def reference_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    cmc_sum = np.zeros(max_rank)
    average_precisions, inverse_penalties = [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        matches = (g_pids[order] == q_pids[i])[keep]
        if not matches.any():
            continue
        cmc = np.minimum(matches.cumsum(), 1)
        cmc_sum += np.pad(cmc, (0, max(0, max_rank - cmc.size)), mode="edge")[:max_rank]
        hit_positions = np.flatnonzero(matches)
        precisions = [(n + 1) / (position + 1) for n, position in enumerate(hit_positions)]
        average_precisions.append(np.mean(precisions))
        inverse_penalties.append(len(hit_positions) / (hit_positions[-1] + 1))
    valid = len(average_precisions)
    return cmc_sum / valid, np.mean(average_precisions), np.mean(inverse_penalties)


def random_problem(rng, num_query, num_gallery, num_ids, num_cams, dtype=np.float64, levels=None):
    """Random pids (with distractors 0 in the gallery) and cameras; distances pulled towards
    matches so ranks are varied. levels: quantise distances to that many values (ties)."""
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(0, num_ids + 1, num_gallery)
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    distmat = rng.random((num_query, num_gallery)) + 0.6 * (q_pids[:, None] != g_pids[None, :])
    if levels is not None:
        distmat = np.round(distmat * levels) / levels
    return distmat.astype(dtype), q_pids, g_pids, q_camids, g_camids


def assert_same_scores(result, expected):
    cmc, mean_ap, mean_inp = result
    ref_cmc, ref_ap, ref_inp = expected
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert mean_ap == pytest.approx(ref_ap, rel=1e-12)
    assert mean_inp == pytest.approx(ref_inp, rel=1e-12)


@pytest.mark.parametrize(
    "num_query, num_gallery, num_ids, num_cams, dtype, levels",
    [
        (37, 203, 11, 3, np.float64, None),
        (53, 311, 29, 6, np.float32, None),
        (41, 157, 7, 2, np.float64, 9),  # heavy ties
        (29, 241, 13, 4, np.float32, 17),
        (23, 77, 5, 8, np.int64, 4),  # integer distances, ties
    ],
)
def test_evaluate_rank_matches_per_query_reference(num_query, num_gallery, num_ids, num_cams, dtype, levels):
    rng = np.random.default_rng(num_query * 1000 + num_gallery)
    if dtype is np.int64:
        distmat, *labels = random_problem(rng, num_query, num_gallery, num_ids, num_cams, levels=levels)
        distmat = (distmat * levels).astype(np.int64)
    else:
        distmat, *labels = random_problem(rng, num_query, num_gallery, num_ids, num_cams, dtype, levels)
    for max_rank in (1, 10, 50):
        expected = reference_evaluate_rank(distmat, *labels, max_rank)
        assert_same_scores(evaluate_rank(distmat, *labels, max_rank=max_rank), expected)


def test_float64_ties_hidden_by_float32_rounding():
    """Distances equal in float32 but not in float64 must rank by their float64 values."""
    rng = np.random.default_rng(5)
    distmat, *labels = random_problem(rng, 31, 97, 6, 3)
    distmat = 1.0 + np.round(distmat * 3) * 1e-9 + rng.integers(0, 3, distmat.shape) * 1e-12
    assert len(np.unique(distmat.astype(np.float32))) < len(np.unique(distmat))
    assert_same_scores(evaluate_rank(distmat, *labels, max_rank=20), reference_evaluate_rank(distmat, *labels, 20))


def test_negative_zero_infinite_and_negative_distances():
    rng = np.random.default_rng(11)
    distmat, *labels = random_problem(rng, 19, 61, 5, 3, np.float32, levels=3)
    distmat -= 0.8
    distmat[rng.random(distmat.shape) < 0.1] = -0.0
    distmat[rng.random(distmat.shape) < 0.1] = 0.0
    distmat[rng.random(distmat.shape) < 0.05] = np.inf
    distmat[rng.random(distmat.shape) < 0.05] = -np.inf
    assert_same_scores(evaluate_rank(distmat, *labels, max_rank=30), reference_evaluate_rank(distmat, *labels, 30))


def test_torch_inputs_and_queries_without_matches_are_skipped():
    rng = np.random.default_rng(3)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 25, 90, 6, 3)
    q_pids[:4] = 99  # nobody in the gallery
    g_pids[g_pids == q_pids[4]] = 0
    g_camids[g_pids == q_pids[5]] = q_camids[5]  # only same-camera images: junk, no match
    labels = (q_pids, g_pids, q_camids, g_camids)
    tensors = [torch.from_numpy(distmat).float()] + [torch.from_numpy(x) for x in labels]
    result = evaluate_rank(*tensors, max_rank=10)
    assert_same_scores(result, reference_evaluate_rank(distmat.astype(np.float32), *labels, 10))
    assert result[0].shape == (10,) and result[0].dtype == np.float32


def test_perfect_and_worst_rankings():
    q_pids, q_camids = np.array([1, 2]), np.array([0, 0])
    g_pids, g_camids = np.array([1, 1, 2, 3, 2]), np.array([1, 2, 1, 1, 0])
    # query 0 ranks its two matches first; query 1 ranks its only match (index 2) last of the kept 4.
    distmat = np.array([[0.1, 0.2, 0.5, 0.6, 0.7], [0.1, 0.2, 0.9, 0.3, 0.0]])
    cmc, mean_ap, mean_inp = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=4)
    np.testing.assert_allclose(cmc, [0.5, 0.5, 0.5, 1.0])
    assert mean_ap == pytest.approx((1.0 + 0.25) / 2)
    assert mean_inp == pytest.approx((1.0 + 0.25) / 2)


def test_no_valid_query_and_bad_shapes_are_clear_errors():
    distmat = np.ones((2, 3))
    with pytest.raises(ValueError, match="no query has a matching"):
        evaluate_rank(distmat, [1, 2], [1, 2, 3], [0, 0], [0, 0, 1])
    with pytest.raises(ValueError, match=r"g_pids must be 1-D with 3 entries.*\(2, 3\)"):
        evaluate_rank(distmat, [1, 2], [1, 2], [0, 0], [0, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(np.full((2, 3), np.nan), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(TypeError, match="q_camids must hold integers"):
        evaluate_rank(distmat, [1, 2], [1, 2, 3], [0.0, 0.0], [1, 1, 1])


# ---- distances -----------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_distance_matrix_matches_direct_formula(metric):
    generator = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(13, 33, generator=generator), torch.randn(29, 33, generator=generator)
    if metric == "cosine":
        expected = 1 - torch.nn.functional.cosine_similarity(query[:, None], gallery[None], dim=2)
    else:
        expected = (query[:, None] - gallery[None]).pow(2).sum(2)
        expected = expected.sqrt() if metric == "euclidean" else expected
    for chunk_size in (1, 5, 1000):
        result = compute_distance_matrix(query, gallery, metric, chunk_size=chunk_size)
        assert result.dtype == torch.float32 and result.shape == (13, 29)
        torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distance_matrix_is_computed_in_full_precision_under_autocast(metric):
    # The trainer evaluates under autocast; distances must not follow it into bf16.
    generator = torch.Generator().manual_seed(11)
    query, gallery = torch.randn(7, 33, generator=generator), torch.randn(13, 33, generator=generator)
    expected = compute_distance_matrix(query, gallery, metric)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = compute_distance_matrix(query, gallery, metric)
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)


def test_cosine_distances_match_a_float64_reference_in_any_blocks():
    rng = np.random.default_rng(7)
    query = rng.standard_normal((37, 53)) * rng.uniform(0.01, 100, (37, 1))  # norms far from 1
    gallery = rng.standard_normal((211, 53)) * rng.uniform(0.01, 100, (211, 1))
    query[5] = gallery[17] = 0  # F.normalize's convention: a zero row is at distance 1
    norms = [np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (query, gallery)]
    expected = 1 - (query / norms[0]) @ (gallery / norms[1]).T
    for dtype in (torch.float32, torch.float64):
        q, g = torch.from_numpy(query).to(dtype), torch.from_numpy(gallery).to(dtype)
        for block_rows, chunk_size in ((37, 256), (10, 3), (1, 1)):
            result = torch.cat(list(distance_blocks(q, g, "cosine", block_rows, chunk_size)))
            assert result.dtype == torch.float32 and result.shape == expected.shape
            np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-6)


def peak_cpu_bytes(function) -> int:
    """Most bytes held at once by the tensors `function` allocates (torch's CPU allocator, as
    the profiler records it: allocations in ops, frees as [memory] events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        function()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda event: event.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distances_never_copy_the_gallery(metric):
    generator = torch.Generator().manual_seed(2)
    # A gallery of 4 of the 4,096-row slices its norms are taken in (8.4 MB); the result is 0.5 MB.
    query, gallery = torch.randn(8, 128, generator=generator), torch.randn(16384, 128, generator=generator)
    peak = peak_cpu_bytes(lambda: compute_distance_matrix(query, gallery, metric, chunk_size=8))
    assert 8 * 16384 * 4 <= peak < gallery.numel() * gallery.element_size() / 2  # the measure sees the result


def test_distance_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="metric must be one of"):
        compute_distance_matrix(torch.ones(2, 3), torch.ones(4, 3), "manhattan")
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 5\)"):
        compute_distance_matrix(torch.ones(2, 3), torch.ones(4, 5))


# ---- re-ranking ----------------------------------------------------------------------------
def reference_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    """k-reciprocal re-ranking written out per image, as in the paper's published code."""
    num_query = q_g.shape[0]
    dist = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32)
    dist = (dist / dist.max(axis=0)).T
    num_all = dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")
    encoding = np.zeros_like(dist)

    def reciprocal(i, k):
        forward = rank[i, : k + 1]
        return forward[[i in rank[j, : k + 1] for j in forward]]

    for i in range(num_all):
        base = reciprocal(i, k1)
        expanded = list(base)
        for candidate in base:
            candidate_set = reciprocal(candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(candidate_set, base)) > 2 / 3 * len(candidate_set):
                expanded.extend(candidate_set)
        expanded = np.unique(expanded)
        weights = np.exp(-dist[i, expanded])
        encoding[i, expanded] = weights / weights.sum()
    if k2 > 1:
        encoding = np.stack([encoding[rank[i, :k2]].mean(0) for i in range(num_all)])
    jaccard = np.zeros((num_query, num_all), dtype=np.float32)
    for i in range(num_query):
        for j in range(num_all):
            overlap = np.minimum(encoding[i], encoding[j]).sum()
            jaccard[i, j] = 1 - overlap / (2 - overlap)
    final = (1 - lambda_value) * jaccard + lambda_value * dist[:num_query]
    return final[:, num_query:]


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (7, 1, 0.5), (5, 3, 0.0)])
def test_re_ranking_matches_reference(k1, k2, lambda_value):
    generator = torch.Generator().manual_seed(k1)
    centres = torch.randn(9, 16, generator=generator)
    query = centres[torch.arange(17) % 9] + 0.5 * torch.randn(17, 16, generator=generator)
    gallery = centres[torch.arange(61) % 9] + 0.5 * torch.randn(61, 16, generator=generator)
    q_g, q_q, g_g = (compute_distance_matrix(a, b, "sqeuclidean").numpy() for a, b in ((query, gallery), (query, query), (gallery, gallery)))
    dists = q_g, (q_q + q_q.T) / 2, (g_g + g_g.T) / 2  # exactly symmetric, as the reference assumes nothing
    result = re_ranking(*dists, k1=k1, k2=k2, lambda_value=lambda_value)
    expected = reference_re_ranking(*dists, k1, k2, lambda_value)
    assert result.shape == (17, 61)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_re_ranking_improves_a_noisy_clustered_problem():
    """Sanity: with clustered identities, re-ranking does not hurt mAP (it usually helps)."""
    rng = np.random.default_rng(0)
    num_ids = 30
    centres = rng.normal(size=(num_ids, 32))
    q_pids, g_pids = np.arange(num_ids).repeat(2), np.arange(num_ids).repeat(8)
    query = centres[q_pids] + rng.normal(scale=0.9, size=(q_pids.size, 32))
    gallery = centres[g_pids] + rng.normal(scale=0.9, size=(g_pids.size, 32))
    q_camids, g_camids = np.zeros(q_pids.size, int), np.ones(g_pids.size, int)
    q_g = compute_distance_matrix(torch.tensor(query), torch.tensor(gallery), "sqeuclidean").numpy()
    q_q = compute_distance_matrix(torch.tensor(query), torch.tensor(query), "sqeuclidean").numpy()
    g_g = compute_distance_matrix(torch.tensor(gallery), torch.tensor(gallery), "sqeuclidean").numpy()
    _, plain_map, _ = evaluate_rank(q_g, q_pids, g_pids, q_camids, g_camids)
    _, reranked_map, _ = evaluate_rank(re_ranking(q_g, q_q, g_g), q_pids, g_pids, q_camids, g_camids)
    assert reranked_map > plain_map
