"""Re-id models: PAN and its PCB and global-only baselines.

    model = build_model("pan", num_classes=751)            # paper defaults
    model.train(); out = model(images)   # dict: global_logits, local_logits, triplet_feature, feature, masks
    model.eval();  f_cat = model(images) # [B, model.feature_dim] = [B, 512 + 14 * 256]
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn

from ..registry import Registry
from .base import ReIDModel
from .global_model import GlobalModel
from .pan import PAN
from .pcb import PCB

# An architecture is a ReIDModel class taking (num_classes, **options). Registered here rather
# than in each module: this order is the one error messages list.
ARCHITECTURES: Registry[type[ReIDModel]] = Registry("arch")
ARCHITECTURES.add("pan", PAN)
ARCHITECTURES.add("pcb", PCB)
ARCHITECTURES.add("global", GlobalModel)


def architecture_defaults(arch: str) -> dict:
    """The options the architecture registered as `arch` accepts, with their defaults: its
    class's signature is their one home (the config's null options resolve to them)."""
    parameters = inspect.signature(ARCHITECTURES.get(arch)).parameters
    return {name: parameter.default for name, parameter in parameters.items() if name != "num_classes"}


# Every option any architecture accepts, at PAN's defaults. A shared config may pass all of
# them to every architecture: options an architecture does not use are dropped when left at
# these values and rejected otherwise, so a setting never silently does nothing.
OPTION_DEFAULTS = architecture_defaults("pan")


def build_model(arch: str, num_classes: int, **options) -> ReIDModel:
    """Build the architecture registered as `arch` (ARCHITECTURES) with `options` (see
    OPTION_DEFAULTS and each class)."""
    cls = ARCHITECTURES.get(arch)
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise TypeError(f"build_model: unknown option(s) {unknown}; valid options are {sorted(OPTION_DEFAULTS)}")
    accepted = list(architecture_defaults(arch))
    ignored = {name: value for name, value in options.items() if name not in accepted}
    misused = sorted(name for name, value in ignored.items() if value != OPTION_DEFAULTS[name])
    if misused:
        settings = ", ".join(f"{name}={ignored[name]!r}" for name in misused)
        raise ValueError(f"build_model: {settings} does not apply to arch {arch!r}, which accepts {sorted(accepted)}")
    return cls(num_classes, **{name: value for name, value in options.items() if name in accepted})


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers, in any nesting."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def get_masks(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """PAN's part masks [B, P, h, w] for `images`, computed in eval mode (BN running statistics)."""
    model = unwrap_model(model)
    if not hasattr(model, "compute_masks"):
        raise ValueError(f"get_masks: {type(model).__name__} has no part masks; only PAN models have them")
    with eval_mode(model):
        return model.compute_masks(images)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """`model` in eval mode inside the block, and back in the mode it came in afterwards (also
    when the block raises)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


__all__ = ["ARCHITECTURES", "GlobalModel", "OPTION_DEFAULTS", "PAN", "PCB", "ReIDModel", "architecture_defaults", "build_model", "eval_mode", "get_masks", "unwrap_model"]
