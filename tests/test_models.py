"""PAN, PCB and the global model: output contract, every ablation switch, gradient
routing, buffer copies, option handling, torch.compile and profiling figures."""

import pytest
import torch
import torch.nn.functional as F

import pan_model
import pan_ops
from pan_model.backbones import build_backbone
from pan_model.engine.losses import ReIDLoss
from pan_model.models import get_masks
from pan_model.reporting.profiling import count_flops, count_parameters, profile_model

NUM_CLASSES = 7
SMALL = dict(backbone="osnet_x0_25")  # conv4 = conv5 = 128 channels, 1/16 resolution


def images(batch=4, height=64, width=32, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def pk_labels(batch=4):
    return torch.arange(batch) // 2  # two images per identity, as the triplet loss needs


def naive_pool(features, masks, eps=1e-6):
    """The op's formula written out with broadcasting: an independent reference."""
    area = masks.abs().sum(dim=(2, 3)).clamp_min(eps)
    return (features[:, None] * masks[:, :, None]).sum(dim=(3, 4)) / area[..., None]


OPTION_SETS = [
    {},
    {"shared_fc": False, "num_parts": 3, "local_dim": 16, "global_dim": 24},
    {"mask_softmax": True, "mask_source": "conv40"},
    {"mask_source": "conv41"},
    {"mask_source": "conv41", "local_source": "conv50"},
    {"local_source": "conv50", "num_parts": 1},
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_pan_output_shapes(options):
    model = pan_model.build_model("pan", NUM_CLASSES, **SMALL, **options)
    parts = options.get("num_parts", 14)
    dim = options.get("global_dim", 512) + parts * options.get("local_dim", 256)
    assert (model.feature_dim, model.num_parts) == (dim, parts)
    out = model.train()(images())
    assert set(out) == {"global_logits", "local_logits", "triplet_feature", "part_embeddings", "feature", "masks"}
    assert out["part_embeddings"].shape == (4, parts, options.get("local_dim", 256))
    assert out["global_logits"].shape == (4, NUM_CLASSES)
    assert len(out["local_logits"]) == parts and all(t.shape == (4, NUM_CLASSES) for t in out["local_logits"])
    assert out["triplet_feature"].shape == (4, options.get("global_dim", 512))
    assert out["feature"].shape == (4, dim)
    assert out["masks"].shape == (4, parts, 4, 2)
    with torch.no_grad():
        assert model.eval()(images()).shape == (4, dim)


@pytest.mark.parametrize("backbone, channels", [("resnet50", 2048), ("osnet_x1_0", 512), ("osnet_x0_75", 384), ("osnet_x0_5", 256)])
def test_pan_backbones(backbone, channels):
    model = pan_model.build_model("pan", NUM_CLASSES, backbone=backbone).eval()
    assert model.feature_dim == 512 + 14 * 256
    assert model.mask_generator.in_channels == channels
    with torch.no_grad():
        assert model(images(batch=2)).shape == (2, 512 + 14 * 256)


def test_pan_last_stride_2():
    model = pan_model.build_model("pan", NUM_CLASSES, last_stride=2).train()
    assert model(images(batch=2, height=96))["masks"].shape == (2, 14, 3, 1)


@pytest.mark.parametrize("mask_source, local_source", [("conv50", "conv51"), ("conv40", "conv50"), ("conv41", "conv51")])
def test_pan_eval_feature_is_the_papers_composition(mask_source, local_source):
    """Recompute f_cat from the submodules with the broadcast pooling formula."""
    torch.manual_seed(0)
    model = pan_model.build_model(
        "pan", NUM_CLASSES, num_parts=5, mask_softmax=True, mask_source=mask_source, local_source=local_source, **SMALL
    )
    model.train()(images(batch=6, seed=1))  # move BN running statistics away from their init
    model.eval()
    x = images(seed=2)
    with torch.no_grad():
        bb = model.backbone
        conv3 = bb.forward_to_conv3(x)
        conv40 = bb.conv4(conv3)
        conv50 = bb.conv5(conv40)
        conv41 = model.conv41(conv3) if mask_source == "conv41" else None
        sources = {"conv40": conv40, "conv41": conv41, "conv50": conv50}
        masks = F.conv2d(sources[mask_source], model.mask_generator.weight, model.mask_generator.bias).softmax(1)
        local_map = conv50 if local_source == "conv50" else model.conv51(conv41 if conv41 is not None else conv40)
        parts = naive_pool(local_map, masks) @ model.local_branch.embedding.weight.t()
        parts = model.local_branch.bn(parts.flatten(1))
        global_feature = model.global_branch.bn(conv50.amax(dim=(2, 3)) @ model.global_branch.embedding.weight.t())
        torch.testing.assert_close(model(x), torch.cat([global_feature, parts], 1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(get_masks(model, x), masks)


def test_gradient_routing():
    model = pan_model.build_model("pan", NUM_CLASSES, **SMALL).train()
    out = model(images())
    F.cross_entropy(out["global_logits"], pk_labels()).backward(retain_graph=True)
    assert all(p.grad is None for p in model.conv51.parameters()), "the global loss must not reach Conv51"
    assert model.mask_generator.weight.grad is None
    model.zero_grad(set_to_none=True)
    local_loss = torch.stack([F.cross_entropy(logits, pk_labels()) for logits in out["local_logits"]]).mean()
    local_loss.backward()
    for name, p in model.named_parameters():
        if "mask" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert all(p.grad is not None for p in model.conv51.parameters())


@pytest.mark.parametrize("arch", ["pan", "pcb", "global"])
def test_paper_loss_reaches_every_parameter(arch):
    """No unused parameters in training (DistributedDataParallel needs that)."""
    model = pan_model.build_model(arch, NUM_CLASSES, **SMALL).train()
    loss, _ = ReIDLoss()(model(images()), pk_labels())
    loss.backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused


def test_buffer_copies_start_equal_and_are_independent(tmp_path):
    source = build_backbone("osnet_x0_25")
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_(-1, 1)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = pan_model.build_model("pan", NUM_CLASSES, mask_source="conv41", pretrained=tmp_path / "w.pth", **SMALL)
    for copy_, original in ((model.conv41, model.backbone.conv4), (model.conv51, model.backbone.conv5)):
        for (name, a), b in zip(copy_.state_dict().items(), original.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copy_.parameters(), original.parameters()))
    torch.testing.assert_close(model.backbone.conv1.conv.weight, source.conv1.conv.weight, rtol=0, atol=0)


def test_state_dict_round_trip_keeps_backbone_names():
    model = pan_model.build_model("pan", NUM_CLASSES, **SMALL)
    model.train()(images(batch=6))
    state = model.state_dict()
    backbone_keys = {k.removeprefix("backbone.") for k in state if k.startswith("backbone.")}
    assert backbone_keys == set(build_backbone("osnet_x0_25").state_dict())
    assert {k.removeprefix("conv51.") for k in state if k.startswith("conv51.")} == {
        k.removeprefix("conv5.") for k in backbone_keys if k.startswith("conv5.")
    }
    clone = pan_model.build_model("pan", NUM_CLASSES, **SMALL)
    clone.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(images()), model.eval()(images()), rtol=0, atol=0)


def test_shared_versus_per_part_fc_parameters():
    shared = pan_model.build_model("pan", NUM_CLASSES, num_parts=5, local_dim=16, **SMALL)
    per_part = pan_model.build_model("pan", NUM_CLASSES, num_parts=5, local_dim=16, shared_fc=False, **SMALL)
    assert count_parameters(per_part) - count_parameters(shared) == (5 - 1) * 128 * 16
    assert shared.local_branch.embedding.weight.shape == (16, 128)
    assert per_part.local_branch.embedding.weight.shape == (5, 16, 128)


def test_per_part_fc_uses_each_parts_own_weight():
    model = pan_model.build_model("pan", NUM_CLASSES, num_parts=3, local_dim=8, shared_fc=False, **SMALL)
    parts = torch.randn(2, 3, 128)
    weight = model.local_branch.embedding.weight
    expected = torch.stack([parts[:, p] @ weight[p].t() for p in range(3)], dim=1)
    torch.testing.assert_close(model.local_branch.embedding(parts), expected)


def test_mask_softmax_normalises_over_parts():
    model = pan_model.build_model("pan", NUM_CLASSES, mask_softmax=True, **SMALL)
    masks = model.train()(images())["masks"]
    torch.testing.assert_close(masks.sum(1), torch.ones(4, 4, 2))
    raw = pan_model.build_model("pan", NUM_CLASSES, **SMALL).train()(images())["masks"]
    assert (raw < 0).any(), "without softmax the masks are the raw 1x1-conv outputs"


def test_pan_passes_pool_backend_to_the_op(monkeypatch):
    calls = []
    real = pan_ops.weighted_pool

    def spy(features, masks, eps=1e-6, backend="auto"):
        calls.append((tuple(features.shape), tuple(masks.shape), backend))
        return real(features, masks, eps, backend=backend)

    monkeypatch.setattr(pan_ops, "weighted_pool", spy)
    model = pan_model.build_model("pan", NUM_CLASSES, pool_backend="reference", **SMALL).eval()
    with torch.no_grad():
        model(images(batch=2))
    assert calls == [((2, 128, 4, 2), (2, 14, 4, 2), "reference")]


def test_pcb_stripes_are_row_averages_of_conv51():
    model = pan_model.build_model("pcb", NUM_CLASSES, **SMALL)
    assert (model.num_parts, model.feature_dim) == (6, 512 + 6 * 256)
    out = model.train()(images(height=96))
    assert "masks" not in out and len(out["local_logits"]) == 6
    model.eval()
    x = images(height=96)  # conv5 map 6 x 2: one row per stripe
    with torch.no_grad():
        conv40 = model.backbone.conv4(model.backbone.forward_to_conv3(x))
        stripes = model.conv51(conv40).mean(dim=3).transpose(1, 2)  # [B, 6, C]
        weight = model.local_branch.embedding.weight  # one FC per stripe, as in PCB
        parts = torch.einsum("bpc,poc->bpo", stripes, weight)
        expected = model.local_branch.bn(parts.flatten(1))
        torch.testing.assert_close(model(x)[:, 512:], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("height", [6, 7, 8, 9, 13])
@pytest.mark.parametrize("parts", [1, 4, 6])
def test_stripe_masks_pool_like_adaptive_average_pooling(height, parts):
    from pan_model.models.pcb import stripe_masks

    features = torch.randn(2, 5, height, 3, generator=torch.Generator().manual_seed(height), dtype=torch.float64)
    masks = stripe_masks(parts, height, 3, features).expand(2, -1, -1, -1)
    expected = F.adaptive_avg_pool2d(features, (parts, 1)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(naive_pool(features, masks), expected, rtol=1e-12, atol=1e-12)


def test_pan_with_fixed_stripes_is_pcb():
    """Diagnostic (a): PCB's stripes fed through PAN's path give PCB's model, weights and outputs."""
    options = dict(num_parts=6, shared_fc=False, local_dim=32, global_dim=48, **SMALL)
    torch.manual_seed(3)
    pan = pan_model.build_model("pan", NUM_CLASSES, mask_generator="stripes", pool_backend="reference", **options)
    torch.manual_seed(3)
    pcb = pan_model.build_model("pcb", NUM_CLASSES, **options)
    pcb_state = pcb.state_dict()
    assert pan.mask_generator is None and list(pan.state_dict()) == list(pcb_state)
    assert all(torch.equal(value, pcb_state[key]) for key, value in pan.state_dict().items())
    x = images(height=112)  # conv5 map 7 x 2: stripes of uneven, overlapping rows
    pan_out, pcb_out = pan.train()(x), pcb.train()(x)
    for key in ("global_logits", "triplet_feature", "part_embeddings", "feature"):
        torch.testing.assert_close(pan_out[key], pcb_out[key], rtol=1e-5, atol=1e-5)
    assert torch.equal(pan_out["masks"][0, 0, :, 0], torch.tensor([1.0, 1, 0, 0, 0, 0, 0]))
    with torch.no_grad():
        torch.testing.assert_close(pan.eval()(x), pcb.eval()(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mask_softmax=True needs learned masks"):
        pan_model.build_model("pan", NUM_CLASSES, mask_generator="stripes", mask_softmax=True, **SMALL)
    with pytest.raises(ValueError, match="mask_generator must be one of"):
        pan_model.build_model("pan", NUM_CLASSES, mask_generator="grid", **SMALL)


@pytest.mark.parametrize("arch", ["pan", "pcb"])
def test_local_parts_are_what_the_local_branch_embeds(arch):
    model = pan_model.build_model(arch, NUM_CLASSES, **SMALL).eval()
    x = images()
    with torch.no_grad():
        local = model.local_parts(x)
        assert local.masks.shape == (4, model.num_parts, 4, 2) and local.parts.shape == (4, model.num_parts, 128)
        torch.testing.assert_close(local.parts, naive_pool(local.local_map, local.masks), rtol=1e-5, atol=1e-5)
        expected = model.local_branch(local.parts).feature.flatten(1)
        torch.testing.assert_close(model(x)[:, 512:], expected, rtol=0, atol=0)


def test_global_model():
    model = pan_model.build_model("global", NUM_CLASSES, global_dim=64, **SMALL)
    assert (model.feature_dim, model.num_parts) == (64, 0)
    assert not any(name.startswith(("conv51", "mask")) for name, _ in model.named_parameters())
    out = model.train()(images())
    assert out["local_logits"] == [] and "masks" not in out
    with torch.no_grad():
        assert model.eval()(images()).shape == (4, 64)
    with pytest.raises(ValueError, match="GlobalModel has no part masks"):
        get_masks(model, images())


def test_get_masks_restores_the_mode():
    model = pan_model.build_model("pan", NUM_CLASSES, **SMALL).train()
    masks = get_masks(model, images())
    assert masks.shape == (4, 14, 4, 2) and not masks.requires_grad and model.training


def test_build_model_option_errors():
    with pytest.raises(ValueError, match="unknown arch 'mgn'"):
        pan_model.build_model("mgn", NUM_CLASSES)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['num_part'\]"):
        pan_model.build_model("pan", NUM_CLASSES, num_part=3)
    with pytest.raises(ValueError, match="mask_softmax=True does not apply to arch 'pcb'"):
        pan_model.build_model("pcb", NUM_CLASSES, mask_softmax=True, **SMALL)
    with pytest.raises(ValueError, match="mask_source must be one of"):
        pan_model.build_model("pan", NUM_CLASSES, mask_source="conv30", **SMALL)
    with pytest.raises(ValueError, match="local_source must be one of"):
        pan_model.build_model("pan", NUM_CLASSES, local_source="conv41", **SMALL)
    with pytest.raises(ValueError, match="pool_backend must be one of"):
        pan_model.build_model("pan", NUM_CLASSES, pool_backend="fast", **SMALL)
    with pytest.raises(ValueError, match="mask_source='conv40' needs last_stride=1"):
        pan_model.build_model("pan", NUM_CLASSES, mask_source="conv40", last_stride=2)
    with pytest.raises(ValueError, match="num_parts must be a positive integer, got 0"):
        pan_model.build_model("pan", NUM_CLASSES, num_parts=0, **SMALL)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        pan_model.build_model("global", 0, **SMALL)


def test_options_a_config_passes_to_every_arch_at_their_defaults():
    shared_config = dict(mask_softmax=False, mask_source="conv50", pool_backend="auto", local_source="conv51", **SMALL)
    assert pan_model.build_model("pcb", NUM_CLASSES, **shared_config).num_parts == 6
    assert pan_model.build_model("global", NUM_CLASSES, num_parts=14, shared_fc=True, **shared_config).feature_dim == 512


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = pan_model.build_model("pan", NUM_CLASSES, num_parts=4, **SMALL).train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = images()
    eager_out = model(x)
    eager_loss, _ = ReIDLoss()(eager_out, pk_labels())
    eager_grads = torch.autograd.grad(eager_loss, model.mask_generator.weight)
    compiled_out = compiled(x)
    compiled_loss, _ = ReIDLoss()(compiled_out, pk_labels())
    compiled_grads = torch.autograd.grad(compiled_loss, model.mask_generator.weight)
    torch.testing.assert_close(compiled_out["feature"], eager_out["feature"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled_grads[0], eager_grads[0], rtol=1e-3, atol=1e-5)


# Profiling at the paper's 256 x 128 with ResNet-50 (conv5 map 16 x 8, last stride 1).
HW = 16 * 8


@pytest.fixture(scope="module")
def pan_resnet():
    return pan_model.build_model("pan", 751)


def test_backbone_plus_buffer_cost(pan_resnet):
    model = pan_resnet.eval()
    assert round((count_parameters(model.backbone) + count_parameters(model.conv51)) / 1e6, 2) == 38.47

    def backbone_and_buffer(x):
        conv40 = model.backbone.layer3(model.backbone.forward_to_conv3(x))
        model.backbone.layer4(conv40)
        model.conv51(conv40)

    macs = count_flops(backbone_and_buffer, torch.randn(1, 3, 256, 128)) / 2
    assert round(macs / 1e9, 2) == 5.97


def test_pan_and_pcb_costs_against_the_paper(pan_resnet):
    pan = profile_model(pan_resnet)
    trunk_macs = 5_965_873_152  # backbone + buffer, as counted above
    head_macs = 2048 * 14 * HW + 14 * 2048 * HW + 2048 * 512 + 14 * 2048 * 256  # masks, pooling, global FC, part FC
    assert pan["macs"] == trunk_macs + head_macs and pan["flops"] == 2 * pan["macs"]
    assert round(pan["params"] / 1e6, 2) == 40.08
    assert pan["params_with_classifiers"] - pan["params"] == 512 * 751 + 14 * 256 * 751

    # The paper's 46.9 M is PAN with one FC per part; its 5.98 GFLOPs are MACs.
    per_part = profile_model(pan_model.build_model("pan", 751, shared_fc=False))
    assert round(per_part["params"] / 1e6, 1) == 46.9 and round(per_part["macs"] / 1e9, 2) == 5.98
    pcb = profile_model(pan_model.build_model("pcb", 751))
    assert round(pcb["params"] / 1e6, 1) == 42.7 and round(pcb["macs"] / 1e9, 2) == 5.97


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode_it_found_also_on_error(training):
    from pan_model.models import eval_mode

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).train(training)
    with eval_mode(model) as inside:
        assert inside is model and not model.training and not model[1].training
    assert model.training == training and model[1].training == training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training == training and model[1].training == training
