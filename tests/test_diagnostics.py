"""pan_model.evaluation.diagnostics: mask statistics on masks whose answers are worked out by hand, slice
scores against evaluations of hand-cut feature columns, and part-vs-GAP on models where a part
is GAP by construction."""

import pytest
import torch

import pan_model
from pan_model.evaluation.diagnostics import mask_statistics, part_diagnostics, slice_scores
from pan_model.evaluation import evaluate_features
from pan_model.models import get_masks


def test_mask_statistics_of_one_map_and_its_negative():
    base = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mean 3, mean square 12.5
    masks = torch.stack([base, -2 * base])[None]  # [1, 2, 2, 2]
    stats = mask_statistics(masks)
    assert stats["mean_abs_corr"] == pytest.approx(1.0)
    assert stats["leading_eigenvalue"] == pytest.approx(1.0)
    assert stats["mean_overlap"] == pytest.approx(1.0)
    assert stats["constant_share"] == pytest.approx(9 / 12.5)
    assert stats["single_signed"] == 1.0
    assert stats["negative_share"] == 0.5
    # |m| / mean |m| is base / 3 for both masks
    torch.testing.assert_close(torch.tensor(stats["weight_map"], dtype=torch.float64), torch.tensor([[1 / 3, 2 / 3], [1.0, 2.0]], dtype=torch.float64))


def test_mask_statistics_of_disjoint_signed_parts():
    top = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    bottom = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    stats = mask_statistics(torch.stack([top, bottom])[None])
    # centred: top = [1,-1,0,0], bottom - 1 = [-1,-1,1,1]: orthogonal
    assert stats["mean_abs_corr"] == pytest.approx(0.0, abs=1e-12)
    assert stats["leading_eigenvalue"] == pytest.approx(0.5)
    assert stats["mean_overlap"] == pytest.approx(0.0, abs=1e-12)
    # top: mean 0 -> share 0; bottom: mean 1, mean square 2 -> share 1/2
    assert stats["constant_share"] == pytest.approx(0.25)
    assert stats["single_signed"] == pytest.approx(0.5)
    assert stats["negative_share"] == 0.0  # top sums to 0: not below zero
    # top: |m| / 0.5 = [[2, 2], [0, 0]]; bottom: |m| / 1 = [[0, 0], [2, 2]]; their mean
    torch.testing.assert_close(torch.tensor(stats["weight_map"], dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64))


def test_slice_scores_score_each_slice_of_f_cat_on_its_own():
    model = pan_model.build_model("pan", 5, num_parts=3, local_dim=4, global_dim=6, backbone="osnet_x0_25")
    generator = torch.Generator().manual_seed(0)
    q_pids, g_pids = torch.arange(8).numpy(), torch.arange(8).repeat(3).numpy()
    q_cams, g_cams = torch.zeros(8, dtype=torch.long).numpy(), torch.ones(24, dtype=torch.long).numpy()
    query, gallery = torch.randn(8, 18, generator=generator), torch.randn(24, 18, generator=generator)
    gallery[:, :6] = query[g_pids, :6] + 0.01 * torch.randn(24, 6, generator=generator)  # global slice retrieves
    scores = slice_scores(model, query, gallery, q_pids, g_pids, q_cams, g_cams)
    assert set(scores) == {"f_cat", "global", "parts", "part_mean", "part_min", "part_max"}
    assert scores["global"]["rank1"] == 1.0
    for name, columns in (("f_cat", slice(0, 18)), ("global", slice(0, 6)), ("parts", slice(6, 18))):
        expected = evaluate_features(query[:, columns], gallery[:, columns], q_pids, g_pids, q_cams, g_cams)
        assert scores[name] == {"rank1": expected["rank1"], "mAP": expected["mAP"]}
    singles = [
        evaluate_features(query[:, c : c + 4], gallery[:, c : c + 4], q_pids, g_pids, q_cams, g_cams)["rank1"]
        for c in (6, 10, 14)
    ]
    assert scores["part_mean"]["rank1"] == pytest.approx(sum(singles) / 3)
    assert (scores["part_min"]["rank1"], scores["part_max"]["rank1"]) == (min(singles), max(singles))


def _loader(batches=2, seed=0):
    """Batches of (images, pids, camids); the seed also picks the camera, so two loaders of
    different seeds are a query and a gallery set that match."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 3, 64, 32, generator=generator), torch.tensor([0, 1, 2, 3]) + 4 * b, torch.full((4,), seed))
        for b in range(batches)
    ]


@pytest.mark.parametrize("arch, options", [("pan", {"mask_generator": "stripes"}), ("pcb", {})])
def test_a_single_full_stripe_is_global_average_pooling(arch, options):
    model = pan_model.build_model(arch, 5, num_parts=1, backbone="osnet_x0_25", **options)
    stats = part_diagnostics(model, _loader(), _loader(seed=1))
    assert stats["cos_part_gap"] == pytest.approx(1.0, abs=1e-6)
    assert "mean_abs_corr" not in stats  # no learned masks


def test_part_diagnostics_of_learned_masks():
    torch.manual_seed(0)
    model = pan_model.build_model("pan", 5, num_parts=4, backbone="osnet_x0_25").train()
    stats = part_diagnostics(model, _loader(), _loader(seed=1))
    assert model.training  # left in the mode it came in
    assert {"mean_abs_corr", "leading_eigenvalue", "mean_overlap", "constant_share", "single_signed", "cos_part_gap"} <= set(stats)
    assert 0 <= stats["mean_overlap"] <= 1 and 0 <= stats["constant_share"] <= 1 and -1 <= stats["cos_part_gap"] <= 1
    masks = torch.cat([get_masks(model, images) for images, *_ in _loader()])
    assert stats["mean_overlap"] == pytest.approx(mask_statistics(masks)["mean_overlap"])
    global_model = pan_model.build_model("global", 5, backbone="osnet_x0_25")
    assert set(part_diagnostics(global_model, _loader(), _loader(seed=1))) == {"slice_scores"}
