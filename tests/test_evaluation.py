"""Feature extraction and end-to-end evaluation with a small deterministic model."""

import numpy as np
import pytest
import torch
from torch import nn

from pan_model.evaluation import metrics
from pan_model.evaluation import evaluate, evaluate_features, extract_features
from pan_model.evaluation.metrics import compute_distance_matrix, evaluate_rank, re_ranking


class ColumnModel(nn.Module):
    """Features = a linear map of the per-column means (so a mirror image differs), in the
    requested dtype; eval and train modes give different outputs."""

    def __init__(self, width, dim, dtype=torch.float32):
        super().__init__()
        self.project = nn.Linear(3 * width, dim)
        self.dtype = dtype

    def forward(self, images):
        features = self.project(images.mean(2).flatten(1))
        return (features if not self.training else features + 100).to(self.dtype)


def make_loader(seed, num_images, num_ids, batch_size, height=8, width=5):
    generator = torch.Generator().manual_seed(seed)
    pids = torch.randint(1, num_ids + 1, (num_images,), generator=generator)
    camids = torch.randint(0, 3, (num_images,), generator=generator)
    images = torch.randn(num_ids + 1, 3, height, width, generator=generator)[pids] + 0.8 * torch.randn(num_images, 3, height, width, generator=generator)
    batches = []
    for start in range(0, num_images, batch_size):
        chunk = slice(start, start + batch_size)
        batches.append((images[chunk], pids[chunk], camids[chunk], [f"img{i}.jpg" for i in range(start, min(start + batch_size, num_images))]))
    return batches, images, pids.numpy(), camids.numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_extract_features_keeps_order_flips_and_restores_mode(dtype):
    torch.manual_seed(0)
    model = ColumnModel(5, 7, dtype).train()
    loader, images, pids, camids = make_loader(1, 29, 6, batch_size=8)
    features, got_pids, got_camids = extract_features(model, loader, "cpu")
    assert model.training  # left as it came
    assert features.dtype == torch.float32 and features.shape == (29, 7)
    np.testing.assert_array_equal(got_pids, pids)
    np.testing.assert_array_equal(got_camids, camids)
    model.eval()
    with torch.no_grad():
        plain = model(images).float()
        flipped = ((model(images) + model(images.flip(3))) / 2).float()
    torch.testing.assert_close(features, plain)
    flip_features, _, _ = extract_features(model, loader, "cpu", flip=True)
    torch.testing.assert_close(flip_features, flipped)
    assert not torch.allclose(flip_features, plain)


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        extract_features(ColumnModel(5, 3), [], "cpu")


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluate_matches_metrics_on_extracted_features(metric):
    torch.manual_seed(1)
    model = ColumnModel(5, 11)
    query_loader, query_images, q_pids, q_camids = make_loader(2, 23, 9, batch_size=6)
    gallery_loader, gallery_images, g_pids, g_camids = make_loader(3, 71, 9, batch_size=16)
    scores = evaluate(model, query_loader, gallery_loader, "cpu", metric=metric)
    with torch.no_grad():
        distmat = compute_distance_matrix(model.eval()(query_images), model(gallery_images), metric)
    cmc, mean_ap, mean_inp = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    assert scores["rank1"] == pytest.approx(cmc[0]) and scores["rank5"] == pytest.approx(cmc[4])
    assert scores["rank10"] == pytest.approx(cmc[9])
    assert scores["mAP"] == pytest.approx(mean_ap) and scores["mINP"] == pytest.approx(mean_inp)
    assert scores["cmc"] == pytest.approx(cmc.tolist()) and len(scores["cmc"]) == 50
    assert "distances" not in scores  # only when asked for: the scores stay plain numbers


def test_rerank_uses_squared_euclidean_distances():
    generator = torch.Generator().manual_seed(4)
    query, gallery = torch.randn(13, 6, generator=generator), torch.randn(40, 6, generator=generator)
    q_pids, g_pids = np.arange(13) % 5 + 1, np.arange(40) % 5 + 1
    q_camids, g_camids = np.zeros(13, int), np.ones(40, int)
    scores = evaluate_features(
        query, gallery, q_pids, g_pids, q_camids, g_camids, rerank=True, max_rank=5, return_distances=True
    )
    distances = [compute_distance_matrix(a, b, "sqeuclidean") for a, b in ((query, gallery), (query, query), (gallery, gallery))]
    reranked = re_ranking(*distances)
    cmc, mean_ap, _ = evaluate_rank(reranked, q_pids, g_pids, q_camids, g_camids, max_rank=5)
    assert scores["mAP"] == pytest.approx(mean_ap) and scores["rank5"] == pytest.approx(cmc[4])
    assert "rank10" not in scores  # beyond max_rank
    np.testing.assert_array_equal(scores["distances"], reranked)  # what the scores were ranked by


# ---- scoring in query blocks -----------------------------------------------------------------
def block_problem(seed, num_query=700, num_gallery=900, dim=12):
    """Features on a coarse grid (many tied distances), same-camera junk, distractor pids
    and queries whose identity the gallery lacks."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, 150, num_gallery)
    q_pids = np.concatenate([rng.choice(g_pids, num_query - 40), 1000 + np.arange(40)])  # 40 without a match
    centres = rng.integers(-2, 3, (1200, dim)).astype(np.float32)
    query = torch.from_numpy(centres[q_pids % 1200] + rng.integers(-1, 2, (num_query, dim)))
    gallery = torch.from_numpy(centres[g_pids % 1200] + rng.integers(-1, 2, (num_gallery, dim)))
    return query, gallery, q_pids, g_pids, rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_query_blocks_give_the_whole_matrix_scores_to_the_last_digit(metric, monkeypatch):
    query, gallery, *labels = block_problem(seed=len(metric))
    whole = compute_distance_matrix(query, gallery, metric)
    ordered = whole.sort(dim=1).values
    assert (ordered[:, 1:] == ordered[:, :-1]).any(dim=1).float().mean() > 0.5  # most rows have ties
    cmc, mean_ap, mean_inp = evaluate_rank(whole, *labels)
    requested_rows = []
    real = metrics.distance_blocks

    def recorded(*args, **kwargs):  # the rows of each block of distances evaluate_features ranks
        for block in real(*args, **kwargs):
            requested_rows.append(block.shape[0])
            yield block

    monkeypatch.setattr("pan_model.evaluation.metrics.distance_blocks", recorded)
    for block in (1, 256, 300, 700, None):
        requested_rows.clear()
        scores = evaluate_features(query, gallery, *labels, metric=metric, query_block=block)
        assert scores["cmc"] == cmc.tolist() and scores["mAP"] == mean_ap and scores["mINP"] == mean_inp
        if block is not None:  # never more query rows at once than one block (rounded to 256)
            limit = -(-block // 256) * 256
            assert max(requested_rows) <= limit and sum(requested_rows) == len(query)
    assert requested_rows == [700]  # the default block holds this small problem whole


def test_flipped_features_score_the_same_in_blocks():
    torch.manual_seed(0)
    model = ColumnModel(5, 9).eval()
    query_loader, *_ = make_loader(3, 300, 40, batch_size=64)
    gallery_loader, *_ = make_loader(4, 410, 40, batch_size=64)
    whole = evaluate(model, query_loader, gallery_loader, "cpu", flip=True, return_distances=True)
    blocks = evaluate(model, query_loader, gallery_loader, "cpu", flip=True, query_block=100)
    assert {k: v for k, v in whole.items() if k != "distances"} == blocks


def test_re_ranking_that_would_not_fit_is_refused_with_what_it_needs(monkeypatch):
    from pan_model.evaluation.metrics import check_re_ranking_memory

    monkeypatch.setattr("pan_model.evaluation.metrics.available_memory_bytes", lambda: 24 << 30)
    # 10,000 x 100,000: the (Q + G)^2 float32 matrix alone is 45 GiB
    with pytest.raises(MemoryError, match=r"10000 queries against 100000 gallery images needs about 1\d\d\.\d GiB .* 24\.0 GiB available"):
        check_re_ranking_memory(10_000, 100_000)
    query, gallery, *labels = block_problem(seed=5, num_query=300, num_gallery=400)
    monkeypatch.setattr("pan_model.evaluation.metrics.available_memory_bytes", lambda: 1 << 20)
    with pytest.raises(MemoryError, match="re-ranking 300 queries against 400 gallery images"):
        evaluate_features(query, gallery, *labels, rerank=True)
    monkeypatch.setattr("pan_model.evaluation.metrics.available_memory_bytes", lambda: 1 << 40)
    assert 0 < evaluate_features(query, gallery, *labels, rerank=True)["mAP"] <= 1


def test_the_gallery_is_prepared_once_for_all_query_blocks(monkeypatch):
    """Its squared norms, a pass over the whole gallery, are taken once, not once per block."""
    query, gallery, *labels = block_problem(seed=3)
    calls = []
    real = metrics._squared_norms
    monkeypatch.setattr("pan_model.evaluation.metrics._squared_norms", lambda features: calls.append(len(features)) or real(features))
    evaluate_features(query, gallery, *labels, query_block=1)  # 3 blocks of 256 rows
    assert calls == [len(gallery)]
