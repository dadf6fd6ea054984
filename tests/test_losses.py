"""Losses against independent loop-based references on random inputs."""

import math

import numpy as np
import pytest
import torch

from pan_model.engine.losses import (
    BatchHardTripletLoss,
    CrossEntropyLabelSmooth,
    MaskDecorrelationLoss,
    MaskOverlapLoss,
    ReIDLoss,
)


def _smoothed_ce_reference(logits, targets, epsilon):
    total = 0.0
    batch, classes = logits.shape
    targets = targets.tolist()
    for i in range(batch):
        log_probs = logits[i].double().log_softmax(0)
        for k in range(classes):
            weight = (1 - epsilon) * (k == targets[i]) + epsilon / classes
            total -= weight * log_probs[k].item()
    return total / batch


def _batch_hard_reference(features, targets, margin):
    total = 0.0
    targets = targets.tolist()
    x = features.double()
    for i in range(len(x)):
        distances = [(x[i] - x[j]).norm().item() for j in range(len(x))]
        positive = max(d for d, t in zip(distances, targets) if t == targets[i])
        negative = min(d for d, t in zip(distances, targets) if t != targets[i])
        gap = positive - negative
        total += math.log1p(math.exp(gap)) if margin is None else max(0.0, gap + margin)
    return total / len(x)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.37])
def test_label_smoothing_matches_reference(epsilon):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 5, generator=generator) * 3
    targets = torch.randint(0, 5, (7,), generator=generator)
    loss = CrossEntropyLabelSmooth(epsilon)(logits, targets)
    assert loss.item() == pytest.approx(_smoothed_ce_reference(logits, targets, epsilon), rel=1e-5)


def test_label_smoothing_rejects_bad_shapes_and_epsilon():
    with pytest.raises(ValueError, match=r"logits \(3, 4, 2\)"):
        CrossEntropyLabelSmooth()(torch.randn(3, 4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="epsilon"):
        CrossEntropyLabelSmooth(1.0)


@pytest.mark.parametrize("margin", [None, 0.3])
def test_batch_hard_triplet_matches_reference(margin):
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(9, 6, generator=generator)
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 1])
    loss = BatchHardTripletLoss(margin)(features, targets)
    assert loss.item() == pytest.approx(_batch_hard_reference(features, targets, margin), rel=1e-5)


def test_batch_hard_triplet_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    # the loss computes in float32; compare against a float64 finite difference loosely
    loss = BatchHardTripletLoss()(features, targets)
    (gradient,) = torch.autograd.grad(loss, features)
    step = 1e-4
    for index in [(0, 0), (3, 2), (5, 1)]:
        shifted = features.detach().clone()
        shifted[index] += step
        up = _batch_hard_reference(shifted, targets, None)
        shifted[index] -= 2 * step
        down = _batch_hard_reference(shifted, targets, None)
        assert gradient[index].item() == pytest.approx((up - down) / (2 * step), abs=1e-4)


def test_triplet_needs_two_identities():
    with pytest.raises(ValueError, match="single identity"):
        BatchHardTripletLoss()(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def _outputs(batch, classes, parts, generator):
    return {
        "global_logits": torch.randn(batch, classes, generator=generator),
        "local_logits": [torch.randn(batch, classes, generator=generator) for _ in range(parts)],
        "triplet_feature": torch.randn(batch, 8, generator=generator),
    }


def test_reid_loss_is_the_papers_combination():
    generator = torch.Generator().manual_seed(4)
    outputs = _outputs(8, 4, 3, generator)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    total, components = ReIDLoss(label_smoothing=0.1)(outputs, targets)
    global_id = _smoothed_ce_reference(outputs["global_logits"], targets, 0.1)
    local_id = sum(_smoothed_ce_reference(x, targets, 0.1) for x in outputs["local_logits"]) / 3
    triplet = _batch_hard_reference(outputs["triplet_feature"], targets, None)
    assert total.item() == pytest.approx(0.5 * (global_id + local_id) + triplet, rel=1e-5)
    assert components["id_local"].item() == pytest.approx(local_id, rel=1e-5)
    assert set(components) == {"id_global", "id_local", "triplet", "total"}


def test_reid_loss_global_only_model_uses_the_global_identity_loss():
    generator = torch.Generator().manual_seed(5)
    outputs = _outputs(6, 3, 0, generator)
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    total, components = ReIDLoss(label_smoothing=0.1, id_weight=2.0, triplet_weight=0.5)(outputs, targets)
    expected = 2.0 * _smoothed_ce_reference(outputs["global_logits"], targets, 0.1)
    expected += 0.5 * _batch_hard_reference(outputs["triplet_feature"], targets, None)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert "id_local" not in components


def test_reid_loss_computes_in_float32_under_bfloat16_inputs():
    generator = torch.Generator().manual_seed(6)
    outputs = {
        k: ([t.bfloat16() for t in v] if isinstance(v, list) else v.bfloat16())
        for k, v in _outputs(4, 3, 2, generator).items()
    }
    total, _ = ReIDLoss()(outputs, torch.tensor([0, 0, 1, 1]))
    assert total.dtype == torch.float32
    # bf16 -> fp32 is exact, so a loss computed in fp32 from the start must agree closely;
    # one computed in bf16 and cast up would not.
    widened = {k: ([t.float() for t in v] if isinstance(v, list) else v.float()) for k, v in outputs.items()}
    reference, _ = ReIDLoss()(widened, torch.tensor([0, 0, 1, 1]))
    assert total.item() == pytest.approx(reference.item(), rel=1e-6)


def _mean_squared_mask_correlation_reference(masks):
    """numpy's Pearson correlation of every pair of different masks of each image, squared, averaged."""
    values = []
    for sample in masks.double().numpy():
        correlation = np.corrcoef(sample.reshape(sample.shape[0], -1))
        values.extend(correlation[~np.eye(len(correlation), dtype=bool)] ** 2)
    return float(np.mean(values))


def test_mask_decorrelation_matches_numpy_correlations():
    masks = torch.randn(3, 5, 7, 3, generator=torch.Generator().manual_seed(7))
    masks[1] += 2.0 * masks[1, :1]  # correlated masks in one sample, so the value is not near 0
    value = MaskDecorrelationLoss()(masks)
    assert value.item() == pytest.approx(_mean_squared_mask_correlation_reference(masks), rel=1e-5)
    assert value.item() > 0.05


def test_mask_decorrelation_is_one_for_one_map_and_zero_for_uncorrelated_maps():
    base = torch.randn(1, 1, 5, 3, generator=torch.Generator().manual_seed(8))
    scales, offsets = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1), torch.tensor([0.0, 1.0, -3.0]).view(1, 3, 1, 1)
    scaled_copies = base * scales + offsets
    assert MaskDecorrelationLoss()(scaled_copies).item() == pytest.approx(1.0, rel=1e-6)
    # rows of an orthogonal matrix orthogonal to the constant vector: centred and uncorrelated
    columns = torch.cat([torch.ones(15, 1), torch.randn(15, 4, generator=torch.Generator().manual_seed(9))], 1)
    basis, _ = torch.linalg.qr(columns.double())
    uncorrelated = basis[:, 1:].t().reshape(1, 4, 5, 3).float() + 0.7
    assert MaskDecorrelationLoss()(uncorrelated).item() < 1e-10
    with pytest.raises(ValueError, match=r"masks \[B, P>=2, h, w\], got \(8, 1, 6\)"):
        MaskDecorrelationLoss()(torch.randn(8, 1, 6))


@pytest.mark.parametrize(
    "term, reference", [("mask_decorrelation", "_mean_squared_mask_correlation_reference"), ("mask_overlap", "_mean_mask_overlap_reference")]
)
def test_reid_loss_adds_a_weighted_mask_term_only_when_asked(term, reference):
    generator = torch.Generator().manual_seed(10)
    masks = torch.randn(8, 3, 6, 4, generator=generator, requires_grad=True)
    outputs = {**_outputs(8, 4, 3, generator), "masks": masks}
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    paper_total, paper_components = ReIDLoss()(outputs, targets)
    assert term not in paper_components
    total, components = ReIDLoss(**{f"{term}_weight": 0.3})(outputs, targets)
    expected = globals()[reference](masks.detach())
    assert components[term].item() == pytest.approx(expected, rel=1e-5)
    assert total.item() == pytest.approx(paper_total.item() + 0.3 * expected, rel=1e-6)
    total.backward()
    assert masks.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=f"{term}_weight must be >= 0"):
        ReIDLoss(**{f"{term}_weight": -1.0})
    with pytest.raises(ValueError, match=f"{term}_weight > 0 needs the part masks of a PAN model"):
        ReIDLoss(**{f"{term}_weight": 0.3})(_outputs(8, 4, 3, generator), targets)


def _mean_mask_overlap_reference(masks):
    """Uncentred cosine between |m_p| and |m_q| of every pair of different masks, averaged (loops)."""
    values = []
    for sample in masks.double().abs().numpy():
        flat = sample.reshape(sample.shape[0], -1)
        for p in range(len(flat)):
            for q in range(len(flat)):
                if p != q:
                    values.append(flat[p] @ flat[q] / (np.linalg.norm(flat[p]) * np.linalg.norm(flat[q])))
    return float(np.mean(values))


def test_mask_overlap_matches_reference_and_sees_what_correlation_misses():
    masks = torch.randn(3, 4, 5, 3, generator=torch.Generator().manual_seed(11))
    assert MaskOverlapLoss()(masks).item() == pytest.approx(_mean_mask_overlap_reference(masks), rel=1e-6)
    # a map, its negative and a shifted copy: correlation sees one map; a constant offset
    # hides nothing from the overlap either
    base = torch.rand(1, 1, 6, 4, generator=torch.Generator().manual_seed(12)) + 0.1
    copies = torch.cat([base, -base, 3 * base], dim=1)
    assert MaskOverlapLoss()(copies).item() == pytest.approx(1.0, rel=1e-6)
    # nearly constant masks with uncorrelated small variations: correlation ~0, overlap ~1
    wiggles = torch.randn(1, 3, 6, 4, generator=torch.Generator().manual_seed(13))
    flat = torch.ones(1, 3, 6, 4) + 0.01 * wiggles
    assert MaskDecorrelationLoss()(flat).item() < 0.5 and MaskOverlapLoss()(flat).item() > 0.999
    # disjoint supports overlap 0
    disjoint = torch.zeros(1, 3, 6, 4)
    for part in range(3):
        disjoint[0, part, 2 * part : 2 * part + 2] = torch.randn(2, 4, generator=torch.Generator().manual_seed(part))
    assert MaskOverlapLoss()(disjoint).item() == 0.0
    with pytest.raises(ValueError, match=r"masks \[B, P>=2, h, w\], got \(2, 1, 6, 4\)"):
        MaskOverlapLoss()(torch.randn(2, 1, 6, 4))


def test_triplet_on_all_uses_global_and_part_embeddings():
    generator = torch.Generator().manual_seed(15)
    outputs = {**_outputs(8, 4, 3, generator), "part_embeddings": torch.randn(8, 3, 5, generator=generator)}
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    _, components = ReIDLoss(triplet_on="all")(outputs, targets)
    joined = torch.cat([outputs["triplet_feature"], outputs["part_embeddings"].reshape(8, 15)], dim=1)
    assert components["triplet"].item() == pytest.approx(_batch_hard_reference(joined, targets, None), rel=1e-5)
    _, paper = ReIDLoss()(outputs, targets)
    assert paper["triplet"].item() == pytest.approx(_batch_hard_reference(outputs["triplet_feature"], targets, None), rel=1e-5)
    assert paper["triplet"].item() != pytest.approx(components["triplet"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="triplet_on must be one of"):
        ReIDLoss(triplet_on="parts")
    with pytest.raises(ValueError, match="triplet_on='all' needs the part embeddings"):
        ReIDLoss(triplet_on="all")(_outputs(8, 4, 3, generator), targets)
