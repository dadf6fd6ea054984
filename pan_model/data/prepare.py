"""The dataset a run's data section names, generated first when it is the synthetic one."""

from __future__ import annotations

from pathlib import Path

from . import synthetic
from .datasets import ReIDDataset, build_dataset


def prepare_dataset(data_config) -> ReIDDataset:
    """The dataset named by `data_config` (a config's ``data`` section). A synthetic one is
    generated when ``synthetic`` describes it (the generator reuses a folder already holding
    exactly that dataset), or with the generator's defaults when ``root`` is still empty."""
    root = Path(data_config.root)
    if data_config.dataset == "synthetic" and (data_config.synthetic or not any(root.glob("*/*.jpg"))):
        synthetic.generate(root, **data_config.synthetic)
    return build_dataset(data_config.dataset, root)
