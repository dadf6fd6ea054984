"""Config files with inheritance, dotted overrides and schema errors; the shipped recipes load."""

import dataclasses
import importlib
from pathlib import Path

import pytest

from pan_model import build_model
from pan_model.config import (
    CONFIG_DIR as CONFIGS,
    Config,
    apply_overrides,
    ConfigError,
    config_from_dict,
    find_config,
    load_config,
    packaged_configs,
    parse_override,
)
from pan_model.registry import Registry


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_the_papers_recipe():
    config = Config()
    assert config.optim.lr * config.optim.warmup_factor == pytest.approx(3.5e-5)
    assert (config.optim.milestones, config.train.epochs) == ([60, 90], 120)
    assert (config.data.batch_size, config.data.num_instances) == (64, 4)


def test_inheritance_chain_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "base.yaml", "model:\n  backbone: osnet_x1_0\n  num_parts: 6\noptim:\n  lr: 1e-3\n")
    _write(tmp_path / "sub" / "middle.yaml", "_base_: ../base.yaml\nmodel:\n  num_parts: 8\n")
    child = _write(tmp_path / "sub" / "child.yaml", "_base_: middle.yaml\ndata:\n  augment: {pad: 5}\n")
    config = load_config(
        child, ["optim.milestones=[3, 7]", "train.amp=bf16", "data.augment.flip_prob=0.25", "model.pretrained=null"]
    )
    assert config.model.backbone == "osnet_x1_0"  # from the grandparent
    assert config.model.num_parts == 8  # the parent wins over the grandparent
    assert config.optim.lr == pytest.approx(1e-3)  # YAML reads "1e-3" as text; coerced to float
    assert config.optim.milestones == [3, 7]
    assert config.data.augment == {"pad": 5, "flip_prob": 0.25}
    assert config.train.amp == "bf16" and config.model.pretrained is None
    assert config.model.global_dim is None  # untouched: the architecture's default


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    path = _write(tmp_path / "bad.yaml", "model:\n  num_part: 6\n")
    with pytest.raises(ConfigError, match=r"unknown config key model\.num_part \(did you mean model\.num_parts\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config key trian"):
        load_config(None, ["trian.epochs=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=three", r"train\.epochs: expected int, got 'three'"),
        ("optim.milestones=5", r"optim\.milestones: expected a list"),
        ("model=3", r"model: expected a mapping"),
        ("model.arch.deeper=1", r"model\.arch is a value, not a section"),
        ("train.epochs", r"not of the form section\.key=value"),
        ("train.compile=yes please", r"train\.compile: expected bool"),
        ("data.batch_size=10", r"data\.batch_size=10 must be a positive multiple of data\.num_instances=4"),
    ],
)
def test_bad_values_raise_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_inheritance_cycle_and_missing_file(tmp_path):
    _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"not found: .*smoek \(did you mean smoke\?\)"):
        load_config("smoek")
    with pytest.raises(ConfigError, match=r"did you mean ablations/gamma_14\?"):
        load_config("ablations/gamm_14")


@pytest.mark.parametrize(
    "name",
    [
        "pcb_resnet50_market1501",
        "pcb_resnet50_market1501.yaml",
        "configs/pcb_resnet50_market1501.yaml",  # the repository's layout before the move
        "pan_model/configs/pcb_resnet50_market1501.yaml",
    ],
)
def test_packaged_recipes_are_found_by_name_from_any_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config(name) == CONFIGS / "pcb_resnet50_market1501.yaml"
    config = load_config(name)
    assert (config.model.arch, config.data.dataset) == ("pcb", "market1501")
    assert "ablations/gamma_14" in packaged_configs() and "smoke" in packaged_configs()


def test_every_name_packaged_configs_lists_loads(tmp_path, monkeypatch):
    """The names as listed, dots in a name included (ablations/gamma_0.875 once failed)."""
    monkeypatch.chdir(tmp_path)
    for name in packaged_configs():
        assert find_config(name) == CONFIGS / f"{name}.yaml"
        load_config(name)


def test_a_file_wins_over_the_packaged_recipe_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "smoke.yaml", "train:\n  epochs: 5\n")
    assert load_config("smoke.yaml").train.epochs == 5
    assert load_config("smoke").train.epochs == 2  # no file named "smoke": the packaged recipe


def test_a_users_file_starts_from_a_packaged_recipe(tmp_path):
    mine = _write(tmp_path / "mine.yaml", "_base_: pan_resnet50_occluded_duke\ntrain:\n  epochs: 3\n")
    config = load_config(mine)
    assert config.data.dataset == "occluded_duke" and config.model.resolved().num_parts == 14  # PAN's
    assert config.train.epochs == 3


@pytest.mark.parametrize(
    "key, registry",
    [
        ("model.arch", "pan_model.models:ARCHITECTURES"),
        ("model.backbone", "pan_model.backbones:BACKBONES"),
        ("optim.name", "pan_model.engine.optim:OPTIMIZERS"),
        ("loss.triplet_on", "pan_model.engine.losses:TRIPLET_FEATURES"),
    ],
)
def test_choices_are_the_registry_the_code_builds_from(key, registry):
    section, field = key.split(".")
    module, name = registry.split(":")
    names = getattr(importlib.import_module(module), name)
    assert isinstance(names, Registry)
    spec = {f.name: f for f in dataclasses.fields(type(getattr(Config(), section)))}[field]
    assert spec.metadata["choices"] == registry
    for value in names:
        assert getattr(getattr(load_config(None, [f"{key}={value}"]), section), field) == value
    with pytest.raises(ConfigError, match=rf"{key}: 'nonesuch' is not a valid choice \(valid: {', '.join(names)}\)"):
        load_config(None, [f"{key}=nonesuch"])


def test_round_trip_through_dict_and_yaml():
    config = load_config(None, ["model.arch=pcb", "optim.gamma=0.5"])
    assert config_from_dict(config.to_dict()) == config
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_model_options_hold_the_fields_set_but_arch():
    options = load_config(None, ["model.num_parts=6", "model.arch=pcb"]).model.options()
    # what is left null comes from PCB's signature; PAN's options PCB does not take stay out
    expected = dict(backbone="resnet50", num_parts=6, local_dim=256, global_dim=512, shared_fc=False, local_source="conv51", last_stride=1)
    assert options == expected


def test_model_defaults_come_from_the_architecture_chosen_last():
    """A recipe leaves the model's options null: each architecture fills in its own defaults,
    also when an override switches the architecture of a PAN recipe."""
    pan = load_config("pan_resnet50_market1501")
    assert pan.model.num_parts is None and pan.model.resolved().num_parts == 14 and pan.model.resolved().shared_fc
    pcb = apply_overrides(pan, ["model.arch=pcb"]).model.resolved()
    assert (pcb.num_parts, pcb.shared_fc, pcb.mask_softmax, pcb.mask_source) == (6, False, None, None)
    assert apply_overrides(pan, ["model.arch=global"]).model.options() == dict(
        backbone="resnet50", global_dim=512, last_stride=1, pretrained="imagenet"
    )
    assert load_config("pcb_resnet50_market1501").model.resolved() == pcb


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_recipe_loads_and_builds_its_model(path):
    config = load_config(path)
    assert config.data.batch_size % config.data.num_instances == 0
    # the smallest backbone and no weight files: what is checked is the recipe's model options
    options = {**config.model.options(), "backbone": "osnet_x0_25", "pretrained": None}
    model = build_model(config.model.arch, 4, **options)
    parts = config.model.resolved().num_parts if config.model.arch != "global" else 0
    assert model.num_parts == parts


def test_paper_recipes_differ_from_pan_only_where_they_should():
    pan = load_config(CONFIGS / "pan_resnet50_occluded_duke.yaml").resolved().to_dict()
    for name, expected in {
        "ablations/shared_fc_off.yaml": {("model", "shared_fc"): False},
        "ablations/mask_conv41_local_conv50.yaml": {
            ("model", "mask_source"): "conv41",
            ("model", "local_source"): "conv50",
        },
        "ablations/num_parts_6.yaml": {("model", "num_parts"): 6},
        "ablations/gamma_3.5.yaml": {("model", "local_dim"): 128},
        "pan_osnet_occluded_duke.yaml": {("model", "backbone"): "osnet_x1_0"},
    }.items():
        variant = load_config(CONFIGS / name).resolved().to_dict()
        changed = {
            (section, key): variant[section][key]
            for section in ("model", "data", "loss", "optim", "train", "eval")
            for key in pan[section]
            if variant[section][key] != pan[section][key]
        }
        assert changed == expected, name


@pytest.mark.parametrize("arch", ["pan", "pcb", "global"])
def test_cuhk03_recipes_are_the_occluded_duke_ones_on_another_dataset(arch):
    duke = load_config(CONFIGS / f"{arch}_resnet50_occluded_duke.yaml").to_dict()
    cuhk = load_config(CONFIGS / f"{arch}_resnet50_cuhk03_np.yaml").to_dict()
    assert cuhk["data"].pop("dataset") == "cuhk03_np" and duke["data"].pop("dataset") == "occluded_duke"
    assert cuhk["output_dir"] != duke["output_dir"]
    del cuhk["output_dir"], duke["output_dir"]
    assert cuhk == duke


def test_training_components_default_to_the_recipe():
    """ReIDLoss, build_optimizer and WarmupMultiStepLR take the config's defaults, the recipe's
    one home, for every option the config has (the trainer passes config.loss as keywords)."""
    import inspect

    from pan_model.config import LossConfig, OptimConfig
    from pan_model.engine.losses import ReIDLoss
    from pan_model.engine.optim import WarmupMultiStepLR, build_optimizer

    def defaults(function):
        return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty}

    assert defaults(ReIDLoss) == dataclasses.asdict(LossConfig())
    optim = {**defaults(build_optimizer), **defaults(WarmupMultiStepLR)}
    optim.pop("last_epoch")
    recipe = dataclasses.asdict(OptimConfig())
    assert optim == {name: value for name, value in recipe.items() if name != "milestones"}
