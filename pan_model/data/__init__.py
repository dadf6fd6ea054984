"""Data: datasets in the Market-1501 layout, the synthetic occluded dataset, transforms and
the PK identity sampler."""

from . import synthetic
from .datasets import DATASETS, ImageDataset, ReIDDataset, build_dataset
from .prepare import prepare_dataset
from .samplers import PKSampler, identities_per_process
from .transforms import build_transforms

__all__ = ["DATASETS", "ImageDataset", "PKSampler", "ReIDDataset", "build_dataset", "build_transforms", "identities_per_process", "prepare_dataset", "synthetic"]
