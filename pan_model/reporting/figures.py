"""The figures of a trained model on its dataset, drawn with reporting.plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..engine.loaders import build_test_loaders
from ..engine.run_log import read_log
from ..evaluation import evaluate_as_configured
from . import plots


def write_figures(
    model,
    config: Config,
    folder: "str | Path",
    device: torch.device,
    run_log: "Path | None" = None,
    num_images: int = 6,
    top_k: int = 8,
) -> list[Path]:
    """masks.png (PAN only), cmc.png, retrieval.png and, from a run's log.jsonl when there
    is one, curves.png; returns the paths written. The CMC and the retrieval strips come
    from one evaluation run as config.eval sets it (flip, rerank), so they show the scores
    that evaluation reports."""
    folder = Path(folder)
    dataset, query_loader, gallery_loader = build_test_loaders(config)
    size = (config.data.height, config.data.width)
    chosen = np.linspace(0, len(dataset.query) - 1, min(num_images, len(dataset.query))).round().astype(int).tolist()
    written = []
    if model.num_parts and hasattr(model, "compute_masks"):
        items = [dataset.query[i] for i in chosen]
        written.append(plots.plot_query_masks(model, items, size, folder / "masks.png", device))
    evaluation = evaluate_as_configured(
        model, config.eval, query_loader, gallery_loader, device, return_distances=True
    )
    written.append(plots.plot_cmc({config.model.arch.upper(): evaluation["cmc"]}, folder / "cmc.png"))
    written.append(
        plots.plot_retrieval(
            evaluation["distances"], dataset.query, dataset.gallery, folder / "retrieval.png", chosen[:4], top_k, size
        )
    )
    if run_log is not None and run_log.is_file():
        written.append(plots.plot_training_curves(read_log(run_log), folder / "curves.png"))
    return written
