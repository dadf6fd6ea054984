"""Pictures of a run: PAN's part masks over images (paper Fig. 4), training curves, the CMC
curve and ranked-retrieval strips. All functions write a PNG and return its path; they use
matplotlib's object API (no pyplot), so they run headless and leave global state alone."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import ImageDataset, build_transforms
from ..models import get_masks

MATCH_COLOUR = (0.1, 0.7, 0.2)
MISMATCH_COLOUR = (0.85, 0.1, 0.1)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: "str | Path") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    return path


def _show_image(axis, image: np.ndarray, title: str = "", border: Optional[tuple] = None) -> None:
    axis.imshow(image)
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=8)
    for spine in axis.spines.values():
        spine.set_visible(border is not None)
        if border is not None:
            spine.set_color(border)
            spine.set_linewidth(4)


def load_rgb(path: "str | Path", size: tuple[int, int]) -> np.ndarray:
    """The image at `path` resized to `size` (H, W), as float RGB in [0, 1]."""
    height, width = size
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0


def mask_heatmaps(masks: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Masks [B, P, h, w] -> (individual [B, P, H, W], fused [B, H, W]) heat maps in [0, 1].

    Each mask is upsampled to `size` and scaled to its own range (min -> 0, max -> 1), so the
    map shows where the mask weighs a location more or less, whatever its offset; the fused
    map is the mean of the scaled part maps, rescaled the same way."""
    upsampled = F.interpolate(masks.detach().float().cpu(), size=size, mode="bilinear", align_corners=False)

    def scaled(maps: torch.Tensor) -> torch.Tensor:
        flat = maps.flatten(-2)
        low, high = flat.amin(-1)[..., None, None], flat.amax(-1)[..., None, None]
        return (maps - low) / (high - low).clamp_min(1e-12)

    parts = scaled(upsampled)
    return parts.numpy(), scaled(parts.mean(1)).numpy()


def plot_masks(
    images: Sequence[np.ndarray],
    masks: torch.Tensor,
    path: "str | Path",
    titles: Sequence[str] = (),
    alpha: float = 0.5,
) -> Path:
    """Paper Fig. 4: one row per image, with the image, its fused mask and each part mask
    overlaid. `images`: RGB arrays [H, W, 3] in [0, 1] (all the same size); `masks` [B, P, h, w]."""
    from matplotlib import colormaps

    if len(images) != masks.shape[0]:
        raise ValueError(
            f"plot_masks: {len(images)} images but masks for {masks.shape[0]} (masks {tuple(masks.shape)})"
        )
    height, width = images[0].shape[:2]
    parts, fused = mask_heatmaps(masks, (height, width))
    colour = colormaps["jet"]
    rows, columns = len(images), parts.shape[1] + 2
    figure = _figure(columns * 0.9, rows * 1.9)
    axes = figure.subplots(rows, columns, squeeze=False)
    for row, image in enumerate(images):
        _show_image(axes[row, 0], image, titles[row] if row < len(titles) else "")
        overlays = [fused[row], *parts[row]]
        names = ["fused", *(f"part {p + 1}" for p in range(parts.shape[1]))]
        for column, (heat, name) in enumerate(zip(overlays, names), start=1):
            blended = (1 - alpha) * image + alpha * colour(heat)[..., :3]
            _show_image(axes[row, column], blended, name if row == 0 else "")
    figure.suptitle("PAN part masks (each scaled to its own range) and their mean", fontsize=10)
    return _save(figure, path)


def plot_query_masks(model: torch.nn.Module, items: Sequence, size: tuple[int, int], path: "str | Path", device="cpu") -> Path:
    """plot_masks for a PAN model's masks on dataset items ((img_path, pid, camid) triples),
    each image fed to the model as the test transform at `size` (H, W) prepares it."""
    samples = ImageDataset(list(items), build_transforms(*size, is_train=False))
    images = torch.stack([samples[i][0] for i in range(len(samples))]).to(device)
    pictures = [load_rgb(img_path, size) for img_path, _, _ in items]
    return plot_masks(pictures, get_masks(model, images), path, [f"id {pid}" for _, pid, _ in items])


def plot_training_curves(records: Sequence[Mapping], path: "str | Path") -> Path:
    """Loss components per step, learning rate and evaluation scores per epoch, from the
    records of a run's log.jsonl (see pan_model.engine.run_log)."""
    steps = [r for r in records if r["kind"] == "step"] or [r for r in records if r["kind"] == "train"]
    epochs = [r for r in records if r["kind"] == "train"]
    evaluations = [r for r in records if r["kind"] == "eval"]
    if not steps:
        raise ValueError("plot_training_curves: the log holds no training records")
    figure = _figure(13, 3.4)
    loss_axis, lr_axis, score_axis = figure.subplots(1, 3)
    x = [r["global_step"] for r in steps]
    for name in ("total", "id_global", "id_local", "triplet"):
        if name in steps[0]:
            loss_axis.plot(x, [r[name] for r in steps], label=name, linewidth=1)
    loss_axis.set(xlabel="step", ylabel="loss", title="training loss")
    loss_axis.legend(fontsize=8)
    lr_axis.plot([r["epoch"] for r in epochs], [r["lr"] for r in epochs], marker=".")
    lr_axis.set(xlabel="epoch", ylabel="learning rate", title="schedule")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for name in ("rank1", "mAP", "mINP"):
        if evaluations and name in evaluations[0]:
            score_axis.plot(
                [r["epoch"] for r in evaluations], [100 * r[name] for r in evaluations], marker="o", label=name
            )
    score_axis.set(xlabel="epoch", ylabel="%", title="evaluation (query vs gallery)")
    if evaluations:
        score_axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def plot_cmc(curves: Mapping[str, Sequence[float]], path: "str | Path", max_rank: int = 20) -> Path:
    """CMC curves {label: [cmc@1, cmc@2, ...] in [0, 1]} up to `max_rank`."""
    figure = _figure(5, 3.6)
    axis = figure.subplots()
    for label, cmc in curves.items():
        ranks = np.arange(1, min(max_rank, len(cmc)) + 1)
        axis.plot(ranks, 100 * np.asarray(cmc[: len(ranks)]), marker=".", label=f"{label} (rank-1 {100 * cmc[0]:.1f}%)")
    axis.set(xlabel="rank", ylabel="matching rate (%)", title="CMC", ylim=(0, 100))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def ranked_gallery(distances: np.ndarray, query: Sequence, gallery: Sequence, top_k: int) -> list[list[int]]:
    """For each query, the indices of its `top_k` nearest gallery items, leaving out those
    of the same identity seen by the same camera (the evaluation protocol)."""
    ranked = []
    for row, (_, pid, camid) in enumerate(query):
        order = np.argsort(distances[row], kind="stable")
        kept = [g for g in order if not (gallery[g][1] == pid and gallery[g][2] == camid)]
        ranked.append(kept[:top_k])
    return ranked


def plot_retrieval(
    distances: np.ndarray,
    query: Sequence,
    gallery: Sequence,
    path: "str | Path",
    query_indices: Sequence[int],
    top_k: int = 8,
    size: tuple[int, int] = (128, 64),
) -> Path:
    """Ranked-retrieval strips: each chosen query, then its top-k gallery images framed green
    (same identity) or red. `query`/`gallery`: (path, pid, camid) items; `distances`
    [num_query, num_gallery]."""
    distances = np.asarray(distances)
    if distances.shape != (len(query), len(gallery)):
        raise ValueError(
            f"plot_retrieval: distances {distances.shape} do not match {len(query)} queries x {len(gallery)} gallery items"
        )
    rows = list(query_indices)
    ranked = ranked_gallery(distances[rows], [query[i] for i in rows], gallery, top_k)
    figure = _figure((top_k + 1) * 0.9, len(rows) * 1.9)
    axes = figure.subplots(len(rows), top_k + 1, squeeze=False)
    for axis_row, (index, hits) in enumerate(zip(rows, ranked)):
        query_path, query_pid, _ = query[index]
        _show_image(axes[axis_row, 0], load_rgb(query_path, size), f"query {query_pid}")
        for column in range(1, top_k + 1):
            axis = axes[axis_row, column]
            if column > len(hits):
                axis.axis("off")
                continue
            gallery_path, pid, _ = gallery[hits[column - 1]]
            border = MATCH_COLOUR if pid == query_pid else MISMATCH_COLOUR
            _show_image(axis, load_rgb(gallery_path, size), f"#{column}", border)
    figure.suptitle("ranked retrieval (green: same identity)", fontsize=10)
    return _save(figure, path)
