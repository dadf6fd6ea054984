"""Backbones: torchvision / torchreid state-dict compatibility, last stride, and
pretrained-weight loading from local files (never the network)."""

import hashlib

import pytest
import torch
import torchvision

from pan_model.backbones import BACKBONES, build_backbone

SMALL = (2, 3, 64, 32)

# Computed from torchreid 0.2.5's osnet.py (random init, state dict without fc./classifier.):
# number of tensors, parameter count, sha256 prefix of the sorted "name (shape)" lines.
TORCHREID_OSNET = {
    "osnet_x1_0": (558, 1_905_828, "be9612c0d2de9e96"),
    "osnet_x0_75": (558, 1_087_610, "1e981a605fcb2fea"),
    "osnet_x0_5": (558, 497_426, "aef9b115b68757c8"),
    "osnet_x0_25": (558, 134_792, "ba706e2eec98ade2"),
}
# torchreid's 512-d `fc` embedding (Linear + BatchNorm1d) on top of conv5, which our
# backbone drops: with it OSNet x1_0 has the paper's 2.2 M parameters.
TORCHREID_FC_PARAMS_X1_0 = 512 * 512 + 512 + 2 * 512


def _layout_digest(state_dict):
    text = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state_dict.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def torchvision_resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics so that loading them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory, torchvision_resnet):
    path = tmp_path_factory.mktemp("weights") / "resnet50-random.pth"
    torch.save(torchvision_resnet.state_dict(), path)
    return path


def test_resnet_state_dict_is_torchvisions_without_fc(torchvision_resnet):
    ours = build_backbone("resnet50").state_dict()
    theirs = {k: v for k, v in torchvision_resnet.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("last_stride, size", [(1, (4, 2)), (2, (2, 1))])
def test_resnet_last_stride(last_stride, size):
    backbone = build_backbone("resnet50", last_stride=last_stride)
    assert backbone(torch.randn(SMALL)).shape == (2, 2048, *size)


def test_resnet_pretrained_matches_torchvision(resnet_checkpoint, torchvision_resnet):
    backbone = build_backbone("resnet50", last_stride=2, pretrained=resnet_checkpoint).eval()
    images = torch.randn(SMALL)
    tv = torchvision_resnet
    with torch.no_grad():
        expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(images))))))))
        torch.testing.assert_close(backbone(images), expected, rtol=0, atol=0)
    # last stride 1 changes only the stride: the same weights load
    build_backbone("resnet50", last_stride=1, pretrained=resnet_checkpoint)


def test_pretrained_from_safetensors_and_wrapped_checkpoints(tmp_path, torchvision_resnet):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in torchvision_resnet.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (tmp_path / "w.safetensors", wrapped):
        loaded = build_backbone("resnet50", pretrained=path).state_dict()
        torch.testing.assert_close(loaded["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"], rtol=0, atol=0)
        torch.testing.assert_close(loaded["bn1.running_var"], state["bn1.running_var"], rtol=0, atol=0)


def test_pretrained_from_torchvision_cache(tmp_path, monkeypatch, resnet_checkpoint):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="resnet50-0676ba61.pth"):
        build_backbone("resnet50", pretrained=True)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet50-0676ba61.pth").write_bytes(resnet_checkpoint.read_bytes())
    expected = torch.load(resnet_checkpoint, weights_only=True)["conv1.weight"]
    loaded = build_backbone("resnet50", pretrained="imagenet").conv1.weight
    torch.testing.assert_close(loaded, expected, rtol=0, atol=0)


def test_pretrained_errors_name_the_file(tmp_path, resnet_checkpoint):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("resnet50", pretrained=missing)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(RuntimeError, match="corrupt.pth"):
        build_backbone("resnet50", pretrained=corrupt)

    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.ones(2)], not_a_state_dict)
    with pytest.raises(RuntimeError, match="list.pth.*state dict"):
        build_backbone("resnet50", pretrained=not_a_state_dict)

    # ResNet weights into OSNet: every key is wrong
    with pytest.raises(RuntimeError, match=r"resnet50-random.pth.*missing keys.*unexpected keys"):
        build_backbone("osnet_x0_25", pretrained=resnet_checkpoint)

    state = torch.load(resnet_checkpoint, weights_only=True)
    state["layer2.0.conv1.weight"] = torch.randn(128, 256, 3, 3)
    del state["layer4.2.bn3.weight"]
    bad = tmp_path / "bad_shape.pth"
    torch.save(state, bad)
    with pytest.raises(RuntimeError, match=r"bad_shape.pth.*layer4.2.bn3.weight.*layer2.0.conv1.weight: checkpoint \[128, 256, 3, 3\] vs model \[128, 256, 1, 1\]"):
        build_backbone("resnet50", pretrained=bad)


@pytest.mark.parametrize("name", list(TORCHREID_OSNET))
def test_osnet_matches_torchreid_layout(name):
    backbone = build_backbone(name)
    num_tensors, num_params, digest = TORCHREID_OSNET[name]
    state = backbone.state_dict()
    assert len(state) == num_tensors
    assert sum(p.numel() for p in backbone.parameters()) == num_params
    assert _layout_digest(state) == digest


def test_osnet_x1_0_with_torchreid_fc_has_2_2m_parameters():
    total = sum(p.numel() for p in build_backbone("osnet_x1_0").parameters()) + TORCHREID_FC_PARAMS_X1_0
    assert round(total / 1e6, 1) == 2.2


@pytest.mark.parametrize("name", [n for n in BACKBONES if n.startswith("osnet")])
def test_osnet_stages_and_shapes(name):
    backbone = build_backbone(name).eval()
    images = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        conv3 = backbone.forward_to_conv3(images)
        conv4 = backbone.conv4_stage(conv3)
        conv5 = backbone.conv5_stage(conv4)
        assert conv3.shape[2:] == conv4.shape[2:] == conv5.shape[2:] == (3, 2)
        assert conv4.shape[1] == backbone.conv4_channels and conv5.shape[1] == backbone.conv5_channels
        torch.testing.assert_close(backbone(images), conv5, rtol=0, atol=0)


def test_osnet_loads_torchreid_checkpoint_with_heads(tmp_path):
    source = build_backbone("osnet_x0_25")
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    state = dict(source.state_dict())
    state.update({"fc.0.weight": torch.randn(512, 128), "fc.0.bias": torch.randn(512),
                  "classifier.weight": torch.randn(1000, 512), "classifier.bias": torch.randn(1000)})
    path = tmp_path / "osnet_x0_25_imagenet.pth"
    torch.save(state, path)
    loaded = build_backbone("osnet_x0_25", pretrained=path).state_dict()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="last_stride must be 1 or 2, got 3"):
        build_backbone("resnet50", last_stride=3)
    with pytest.raises(ValueError, match="osnet_x0_25.*last_stride must be 1"):
        build_backbone("osnet_x0_25", last_stride=2)
