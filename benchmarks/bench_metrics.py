"""Timing of the evaluation metrics at Market-1501 size (3,368 queries x 15,913 gallery).

    python -m pytest benchmarks/bench_metrics.py --benchmark-only --benchmark-json=metrics.json

The problem mimics Market's test split: 750 identities over 6 cameras, about 4.5 queries
and 21 gallery images each plus distractors (pid 0), and distances where an identity's
images are closer on average, so matches spread over the whole ranking.
"""

import numpy as np
import pytest
import torch

from pan_model.evaluation.metrics import compute_distance_matrix, evaluate_rank

NUM_QUERY, NUM_GALLERY, NUM_IDS, NUM_CAMS = 3368, 15913, 750, 6


def market_sized_problem(seed: int = 0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, NUM_IDS + 1, NUM_QUERY)
    g_pids = np.where(rng.random(NUM_GALLERY) < 0.2, 0, rng.integers(1, NUM_IDS + 1, NUM_GALLERY))
    q_camids, g_camids = rng.integers(0, NUM_CAMS, NUM_QUERY), rng.integers(0, NUM_CAMS, NUM_GALLERY)
    distmat = rng.random((NUM_QUERY, NUM_GALLERY), dtype=np.float32) + 0.5 * (q_pids[:, None] != g_pids[None, :])
    return distmat.astype(dtype), q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_evaluate_rank_market_size(benchmark, dtype):
    problem = market_sized_problem(dtype=dtype)
    cmc, mean_ap, _ = benchmark.pedantic(evaluate_rank, args=problem, rounds=5, warmup_rounds=1)
    assert 0 < mean_ap < 1 and cmc[-1] <= 1


def test_distance_matrix_market_size(benchmark):
    generator = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(NUM_QUERY, 2048, generator=generator), torch.randn(NUM_GALLERY, 2048, generator=generator)
    result = benchmark.pedantic(compute_distance_matrix, args=(query, gallery), rounds=3, warmup_rounds=1)
    assert result.shape == (NUM_QUERY, NUM_GALLERY)

