"""The pictures are written, have the expected layout, and reject mismatched inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from pan_model.reporting import plots


def _random_images(count, size=(64, 32), seed=0):
    generator = np.random.default_rng(seed)
    return [generator.random((*size, 3), dtype=np.float32) for _ in range(count)]


def _png_size(path):
    with Image.open(path) as image:
        return image.size


def test_mask_heatmaps_scale_each_part_to_its_range_and_fuse_by_the_mean():
    masks = torch.tensor([[[[1.0, -3.0], [0.5, 0.0]], [[2.0, 2.0], [4.0, 1.0]]]])  # [1, 2, 2, 2]
    parts, fused = plots.mask_heatmaps(masks, (2, 2))
    np.testing.assert_allclose(parts[0, 0], [[1.0, 0.0], [3.5 / 4, 3 / 4]], rtol=1e-6)
    np.testing.assert_allclose(parts[0, 1], [[1 / 3, 1 / 3], [1.0, 0.0]], rtol=1e-6)
    mean = (parts[0, 0] + parts[0, 1]) / 2
    np.testing.assert_allclose(fused[0], (mean - mean.min()) / (mean.max() - mean.min()), rtol=1e-6)
    assert parts.shape == (1, 2, 2, 2) and fused.shape == (1, 2, 2)


def test_plot_masks_writes_a_row_per_image(tmp_path):
    images = _random_images(3)
    masks = torch.randn(3, 5, 8, 4)
    three_rows = _png_size(plots.plot_masks(images, masks, tmp_path / "masks.png", ["a", "b", "c"]))
    one_row = _png_size(plots.plot_masks(images[:1], masks[:1], tmp_path / "mask.png", ["a"]))
    assert three_rows[0] == pytest.approx(one_row[0], rel=0.1)  # the same 7 columns: image, fused, 5 parts
    assert three_rows[1] > 2 * one_row[1]
    with pytest.raises(ValueError, match=r"2 images but masks for 3"):
        plots.plot_masks(images[:2], masks, tmp_path / "bad.png")


def test_training_curves_from_log_records(tmp_path):
    records = []
    for epoch in range(1, 4):
        for step in range(1, 3):
            records.append(
                {
                    "kind": "step",
                    "epoch": epoch,
                    "step": step,
                    "global_step": 2 * (epoch - 1) + step,
                    "total": 3.0 / epoch,
                    "id_global": 1.0,
                    "id_local": 1.5,
                    "triplet": 0.5,
                    "lr": 1e-4,
                }
            )
        records.append(
            {
                "kind": "train",
                "epoch": epoch,
                "step": 2,
                "global_step": 2 * epoch,
                "total": 3.0 / epoch,
                "lr": 1e-4 * epoch,
            }
        )
    records.append({"kind": "eval", "epoch": 3, "step": 0, "global_step": 6, "rank1": 0.5, "mAP": 0.3, "mINP": 0.1})
    drawn = _pixels(plots.plot_training_curves(records, tmp_path / "curves.png"))
    assert len(np.unique(drawn.reshape(-1, 3), axis=0)) > 10  # more than a blank canvas and text
    faster = [{**r, "total": r["total"] / 2} if r["kind"] != "eval" else r for r in records]
    assert not np.array_equal(drawn, _pixels(plots.plot_training_curves(faster, tmp_path / "other.png")))
    with pytest.raises(ValueError, match="no training records"):
        plots.plot_training_curves(records[-1:], tmp_path / "none.png")


def test_cmc_plot(tmp_path):
    assert plots.plot_cmc(
        {"PAN": [0.4, 0.6, 0.7, 0.9], "PCB": [0.3, 0.5, 0.8, 0.85]}, tmp_path / "cmc.png"
    ).is_file()


def _items(folder, pids, cams):
    items = []
    for index, (pid, cam) in enumerate(zip(pids, cams)):
        path = folder / f"{index}.jpg"
        Image.fromarray((_random_images(1, seed=index)[0] * 255).astype(np.uint8)).save(path)
        items.append((str(path), pid, cam))
    return items


def test_ranked_gallery_follows_the_protocol(tmp_path):
    query = [("q", 1, 0), ("q", 2, 1)]
    gallery = [("g", 1, 0), ("g", 1, 1), ("g", 2, 0), ("g", 3, 1)]
    distances = np.array([[0.1, 0.5, 0.3, 0.2], [0.4, 0.3, 0.9, 0.1]])
    # query 0 (pid 1, camera 0) never sees gallery 0 (same pid, same camera)
    assert plots.ranked_gallery(distances, query, gallery, top_k=3) == [[3, 2, 1], [3, 1, 0]]


def test_retrieval_strips(tmp_path):
    gallery = _items(tmp_path, [1, 1, 2, 2, 3], [0, 1, 0, 1, 0])
    query = _items(tmp_path, [1, 2], [2, 2])
    distances = np.random.default_rng(1).random((2, 5))
    path = plots.plot_retrieval(
        distances, query, gallery, tmp_path / "retrieval.png", [0, 1], top_k=3, size=(32, 16)
    )
    assert path.is_file()
    with pytest.raises(ValueError, match=r"\(2, 4\) do not match 2 queries x 5 gallery"):
        plots.plot_retrieval(distances[:, :4], query, gallery, tmp_path / "bad.png", [0])


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_mask_figure_shows_the_masks_it_is_given(tmp_path):
    """The same masks draw the same picture, pixel for pixel; changing one part's mask
    changes the picture, and only in that part's column (and the fused mean's)."""
    images = _random_images(2)
    masks = torch.randn(2, 4, 8, 4, generator=torch.Generator().manual_seed(0))
    changed = masks.clone()
    changed[:, 2] = changed[:, 2].flip(1)  # part 3 upside down
    first = _pixels(plots.plot_masks(images, masks, tmp_path / "a.png"))
    again = _pixels(plots.plot_masks(images, masks, tmp_path / "b.png"))
    other = _pixels(plots.plot_masks(images, changed, tmp_path / "c.png"))
    assert np.array_equal(first, again)
    columns = np.flatnonzero(np.abs(first - other).sum(axis=(0, 2)))
    # the figure's six columns: image, fused, parts 1-4. The changed pixels form two runs of
    # columns, around the second (fused) and the fifth (part 3) sixths of its width
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    centres = [run.mean() / first.shape[1] for run in runs if run.size]
    assert len(centres) == 2 and 1 / 6 < centres[0] < 2 / 6 and 4 / 6 < centres[1] < 5 / 6, centres


def test_cmc_plot_draws_its_curves(tmp_path):
    curves = {"PAN": [0.4, 0.6, 0.7, 0.9], "PCB": [0.3, 0.5, 0.8, 0.85]}
    drawn = _pixels(plots.plot_cmc(curves, tmp_path / "a.png"))
    moved = _pixels(plots.plot_cmc({**curves, "PCB": [0.1, 0.2, 0.3, 0.4]}, tmp_path / "b.png"))
    assert len(np.unique(drawn.reshape(-1, 3), axis=0)) > 10  # more than a blank canvas and text
    assert not np.array_equal(drawn, moved)
