"""Experiment configuration: typed defaults, YAML files with inheritance, dotted overrides.

A config file is a YAML mapping whose sections mirror the dataclasses below. It may start
from other files with ``_base_: path.yaml`` (or a list of paths, merged in order), relative
to the file itself; the file's own keys then override the base. Command-line overrides are
``section.key=value`` strings whose value is parsed as YAML (``train.epochs=3``,
``optim.milestones=[40,70]``, ``model.pretrained=null``). Every key is checked against the
dataclasses, so a typo fails loudly with the list of valid keys instead of being ignored.

The recipes ship inside the package (pan_model/configs, CONFIG_DIR), so that an installed
wheel has them. Wherever a config file is asked for (a command's argument, a ``_base_``), a
path that names no file is looked up there: ``pcb_resnet50_market1501``,
``ablations/gamma_14.yaml`` and ``configs/smoke.yaml`` (the repository's layout before the
recipes moved into the package) all name packaged files, and a user's own file may start
from ``_base_: pan_resnet50_occluded_duke``.

Sections typed ``dict`` (``data.augment``, ``data.synthetic``) are passed through as keyword
arguments to the data module, which checks their keys itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import yaml

BASE_KEY = "_base_"
# The packaged recipes, next to this module so that they travel with the wheel.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Leading folders under which older commands and documents name the packaged recipes.
_PACKAGED_PREFIXES = (("pan_model", "configs"), ("configs",))


class ConfigError(ValueError):
    """A configuration file or override that does not match the schema."""


def _rule(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rule) -> Any:
    """A dataclass field with a value rule in its metadata, checked by config_from_dict:
    low= / high= (inclusive bounds; for a list, of each item), above= (exclusive lower
    bound), or choices="module:NAME", the registry whose names are the valid values (one
    source for what the code accepts, imported only when a config is checked)."""
    return field(default=default, default_factory=factory, metadata=rule)


@dataclass
class ModelConfig:
    """Options of pan_model.build_model. Each option's default lives in one place, the
    signature of the architecture's class (PAN: 14 parts, shared FC; PCB: 6 stripes, one FC
    per stripe): null here means that default, so a recipe says only what differs and
    switching model.arch switches the defaults too. resolved() fills them in."""

    arch: str = _rule("pan", choices="pan_model.models:ARCHITECTURES")
    backbone: Optional[str] = _rule(None, choices="pan_model.backbones:BACKBONES")
    num_parts: Optional[int] = _rule(None, low=1)  # P
    local_dim: Optional[int] = _rule(None, low=1)  # n_l
    global_dim: Optional[int] = _rule(None, low=1)  # N_g
    shared_fc: Optional[bool] = None
    mask_softmax: Optional[bool] = None
    mask_source: Optional[str] = _rule(None, choices="pan_model.models.pan:MASK_SOURCES")  # conv50 | conv40 | conv41
    local_source: Optional[str] = _rule(None, choices="pan_model.models.pan:LOCAL_SOURCES")  # conv51 | conv50
    last_stride: Optional[int] = _rule(None, low=1, high=2)
    pretrained: Optional[str] = None  # backbone weights: a file, or "imagenet" (cache, else download)
    pool_backend: Optional[str] = _rule(None, choices="pan_ops:BACKENDS")  # backend of pan_ops.weighted_pool
    mask_generator: Optional[str] = _rule(None, choices="pan_model.models.pan:MASK_GENERATORS")  # PAN: conv (the paper) | stripes (fixed, a diagnostic)

    def resolved(self) -> "ModelConfig":
        """A copy with every option left null that model.arch accepts set to its default."""
        from .models import architecture_defaults

        defaults = architecture_defaults(self.arch)
        unset = {name: value for name, value in defaults.items() if hasattr(self, name) and getattr(self, name) is None}
        return dataclasses.replace(self, **unset)

    def options(self) -> dict:
        """Keyword arguments of pan_model.build_model: the resolved options that are set, but arch."""
        resolved = dataclasses.asdict(self.resolved())
        return {name: value for name, value in resolved.items() if name != "arch" and value is not None}


@dataclass
class DataConfig:
    dataset: str = _rule("market1501", choices="pan_model.data:DATASETS")
    root: str = "data"
    height: int = _rule(256, low=1)
    width: int = _rule(128, low=1)
    batch_size: int = _rule(64, low=1)  # images per optimiser step, summed over all processes
    num_instances: int = _rule(4, low=1)  # images per identity in a PK batch
    test_batch_size: int = _rule(128, low=1)
    num_workers: int = _rule(4, low=0)
    augment: dict = field(default_factory=dict)  # keyword arguments of data.build_transforms
    synthetic: dict = field(default_factory=dict)  # keyword arguments of data.synthetic.generate


@dataclass
class LossConfig:
    label_smoothing: float = _rule(0.1, low=0.0, high=0.999)
    triplet_margin: Optional[float] = _rule(None, above=0.0)  # None: soft margin log(1 + exp(d_ap - d_an))
    id_weight: float = _rule(1.0, low=0.0)  # on the mean of the global and local identity losses
    triplet_weight: float = _rule(1.0, low=0.0)
    # Not in the paper (notes/accuracy_synthetic.md), off by default:
    mask_decorrelation_weight: float = _rule(0.0, low=0.0)  # the masks' mean squared correlation (losses.MaskDecorrelationLoss)
    mask_overlap_weight: float = _rule(0.0, low=0.0)  # the masks' mean uncentred |m| overlap (losses.MaskOverlapLoss)
    triplet_on: str = _rule("global", choices="pan_model.engine.losses:TRIPLET_FEATURES")  # global | all: the triplet loss on [global, part embeddings]


@dataclass
class OptimConfig:
    name: str = _rule("adam", choices="pan_model.engine.optim:OPTIMIZERS")
    lr: float = _rule(3.5e-4, above=0.0)
    weight_decay: float = _rule(5e-4, low=0.0)
    momentum: float = _rule(0.9, low=0.0)  # sgd only
    warmup_epochs: int = _rule(20, low=0)
    warmup_factor: float = _rule(0.1, above=0.0, high=1.0)  # the first epoch's lr is lr * warmup_factor (3.5e-5)
    milestones: list[int] = _rule(factory=lambda: [60, 90], low=1)
    gamma: float = _rule(0.1, above=0.0)
    mask_lr_factor: float = _rule(1.0, above=0.0)  # not in the paper: the PAN mask generator's lr is lr * this


@dataclass
class TrainConfig:
    epochs: int = _rule(120, low=1)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: str = _rule("auto", choices="pan_model.engine.trainer:AMP_MODES")  # auto (bf16 on GPUs that support it) | none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    cpu_threads: Optional[int] = _rule(None, low=1)  # torch.set_num_threads for CPU runs (null: PyTorch's default)
    max_steps_per_epoch: Optional[int] = _rule(None, low=1)  # cut epochs short (quick runs)
    grad_clip: Optional[float] = _rule(None, above=0.0)  # max global gradient norm
    checkpoint_every: int = _rule(10, low=0)  # epochs
    eval_every: int = _rule(10, low=0)  # epochs; the last epoch is always evaluated
    best_metric: str = _rule("mAP", choices="pan_model.engine.trainer:SCORES")  # rank1 | mAP | mINP: which score picks the best model
    log_every: int = _rule(20, low=1)  # steps between loss records in log.jsonl
    progress: bool = True  # progress bars


@dataclass
class EvalConfig:
    metric: str = _rule("euclidean", choices="pan_model.evaluation.metrics:DISTANCE_METRICS")  # euclidean | sqeuclidean | cosine
    flip: bool = False  # average features of the image and its mirror
    rerank: bool = False  # k-reciprocal re-ranking


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self) -> "Config":
        """A copy with the model's defaults filled in (ModelConfig.resolved): what a run uses."""
        return dataclasses.replace(self, model=self.model.resolved())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_config(path: "str | Path | None" = None, overrides: Iterable[str] = ()) -> Config:
    """The defaults, updated by the YAML file at `path` (a file, or the name of a packaged
    recipe: see find_config) with its bases, then by `overrides`."""
    tree = _read_with_bases(find_config(path), chain=()) if path is not None else {}
    return apply_overrides(config_from_dict(tree), overrides)


def find_config(path: "str | Path", relative_to: "Path | None" = None) -> Path:
    """The config file `path` names: the file itself (relative to `relative_to` if given, else
    to the working directory) when it exists, else the packaged recipe of that name, with or
    without ``.yaml`` and a leading ``configs/`` or ``pan_model/configs/``."""
    path = Path(path)
    given = relative_to / path if relative_to is not None else path
    if given.is_file() or path.is_absolute():
        return given
    parts = path.parts
    for prefix in _PACKAGED_PREFIXES:
        if parts[: len(prefix)] == prefix:
            parts = parts[len(prefix) :]
            break
    if parts:
        packaged = CONFIG_DIR.joinpath(*parts)
        # (a name may hold dots of its own: ablations/gamma_0.875)
        packaged = packaged if packaged.suffix == ".yaml" else packaged.with_name(packaged.name + ".yaml")
        if packaged.is_file():
            return packaged
    return given


def packaged_configs() -> list[str]:
    """Names of the packaged recipes (``smoke``, ``ablations/gamma_14``, ...)."""
    return sorted(path.relative_to(CONFIG_DIR).with_suffix("").as_posix() for path in CONFIG_DIR.rglob("*.yaml"))


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """A copy of `config` with dotted ``key=value`` overrides applied (and checked)."""
    tree = config.to_dict()
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(tree, key, value)
    return config_from_dict(tree)


def config_from_dict(tree: dict) -> Config:
    """Check `tree` against the schema (keys and types) and fill in the defaults."""
    return _build(Config, tree, prefix="")


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-4"`` -> ``("optim.lr", 1e-4)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return key, value


def _read_with_bases(path: Path, chain: tuple) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config inheritance cycle: {cycle}")
    if not path.is_file():
        names = packaged_configs()
        # Matched on the file name alone: a folder prefix (ablations/) would dilute the match.
        by_stem = {Path(name).name: name for name in names}
        close = difflib.get_close_matches(path.stem, by_stem, n=1)
        hint = f"did you mean {by_stem[close[0]]}?" if close else f"packaged recipes: {', '.join(names)}"
        raise ConfigError(f"config file not found: {path} ({hint})")
    with open(path) as handle:
        tree = yaml.safe_load(handle) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
    bases = tree.pop(BASE_KEY, [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        _deep_update(merged, _read_with_bases(find_config(base, relative_to=path.parent), chain + (path,)))
    _deep_update(merged, tree)
    return merged


def _deep_update(target: dict, source: dict) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    *parents, leaf = dotted_key.split(".")
    node = tree
    for depth, name in enumerate(parents):
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            prefix = ".".join(parents[: depth + 1])
            raise ConfigError(f"override {dotted_key}: {prefix} is a value, not a section")
        node = child
    node[leaf] = value


def _build(cls: type, tree: Any, prefix: str):
    where = prefix.rstrip(".") or "the config"
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: expected a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in tree if key not in known]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key {prefix}{key}{hint}; valid keys of {where}: {', '.join(known)}")
    values = {}
    for spec in dataclasses.fields(cls):
        name = spec.name
        if name not in tree:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, tree[name], prefix=f"{prefix}{name}.")
        else:
            values[name] = _coerce(tree[name], kind, f"{prefix}{name}")
            _check_rule(values[name], spec.metadata, f"{prefix}{name}")
    built = cls(**values)
    if isinstance(built, DataConfig):  # the sampler's rule, checked at load time
        from .data import identities_per_process

        try:
            identities_per_process(built.batch_size, built.num_instances, prefix=prefix)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return built


def _check_rule(value: Any, rule: Mapping, key: str) -> None:
    """Raise ConfigError when `value` breaks its field's rule (see _rule); None always passes."""
    if value is None or not rule:
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_rule(item, rule, f"{key}[{index}]")
        return
    if "choices" in rule:
        module, name = rule["choices"].split(":")
        choices = [str(choice) for choice in getattr(importlib.import_module(module), name)]
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{key}: {value!r} is not a valid choice ({hint}valid: {', '.join(choices)})")
    bounds = [
        ("low", lambda limit: value >= limit, ">="),
        ("high", lambda limit: value <= limit, "<="),
        ("above", lambda limit: value > limit, ">"),
    ]
    for name, holds, sign in bounds:
        if name in rule and not holds(rule[name]):
            raise ConfigError(f"{key}: must be {sign} {rule[name]}, got {value!r}")


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """`value` checked against the annotation `kind`; ints widen to float, and strings such as
    "1e-4" (which YAML 1.1 reads as text) become floats."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_kind,) = typing.get_args(kind)
        return [_coerce(item, item_kind, f"{key}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
