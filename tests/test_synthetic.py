"""The synthetic occluded dataset: determinism, layout, occlusion statistics, learnability."""

import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image

from pan_model import cli
from pan_model.data import build_dataset, synthetic
from pan_model.evaluation.metrics import compute_distance_matrix, evaluate_rank

SMALL = dict(num_ids=14, num_distractors=7, height=48, width=24, num_cameras=5)


def read_annotations(root):
    with open(root / synthetic.ANNOTATIONS_NAME) as handle:
        return list(csv.DictReader(handle))


def file_bytes(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def occluded_and_holistic(tmp_path_factory):
    """Same seed, both variants, with enough images for the statistics."""
    base = tmp_path_factory.mktemp("synthetic")
    options = dict(num_ids=40, num_distractors=20, height=64, width=32, seed=11)
    return synthetic.generate(base / "occluded", **options), synthetic.generate(base / "holistic", occluded=False, **options)


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    first = file_bytes(synthetic.generate(tmp_path / "a", seed=3, workers=1, **SMALL))
    second = file_bytes(synthetic.generate(tmp_path / "b", seed=3, workers=2, **SMALL))
    assert first == second and len(first) > 50
    other = file_bytes(synthetic.generate(tmp_path / "c", seed=4, workers=1, **SMALL))
    assert other != first


def test_market_layout_read_by_build_dataset(occluded_and_holistic):
    root, _ = occluded_and_holistic
    dataset = build_dataset("synthetic", root)  # the counts check against synthetic.json passes silently
    metadata = synthetic.read_metadata(root)
    assert metadata["complete"] and list(dataset.counts()) == metadata["counts"]
    assert dataset.num_train_pids == 20 and sorted({pid for _, pid, _ in dataset.train}) == list(range(20))
    test_pids = {pid for _, pid, _ in dataset.query}
    assert test_pids == set(range(21, 41))  # test identities are disjoint from training ones
    assert {pid for _, pid, _ in dataset.gallery} == test_pids | {0}  # plus distractors
    for path, _, _ in dataset.train + dataset.query + dataset.gallery:
        assert re.fullmatch(r"\d{4}_c[1-6]s1_\d{6}_00\.jpg", path.rsplit("/", 1)[1])
    with Image.open(dataset.query[0][0]) as image:
        assert image.size == (32, 64) and image.mode == "RGB"


def test_every_query_has_a_match_in_another_camera(occluded_and_holistic):
    dataset = build_dataset("synthetic", occluded_and_holistic[0])
    gallery_views = {(pid, camid) for _, pid, camid in dataset.gallery}
    for _, pid, camid in dataset.query:
        assert any(p == pid and c != camid for p, c in gallery_views)
    queries_per_id = np.bincount([pid for _, pid, _ in dataset.query])
    assert set(queries_per_id[queries_per_id > 0]) == {2}


def test_occlusion_statistics(occluded_and_holistic):
    occluded_root, holistic_root = occluded_and_holistic
    rows = read_annotations(occluded_root)
    by_split = {split: [row["occluder"] for row in rows if row["split"] == split] for split in ("train", "query", "gallery")}
    assert all(kind in synthetic.OCCLUDER_KINDS for kind in by_split["query"])  # every query occluded
    for split in ("train", "gallery"):
        occluded = sum(kind != "none" for kind in by_split[split])
        assert occluded == round(0.1 * len(by_split[split])) > 0
    assert len({kind for kinds in by_split.values() for kind in kinds} - {"none"}) >= 4  # varied occluders
    assert all(row["occluder"] == "none" for row in read_annotations(holistic_root))


def test_variants_differ_only_where_occluders_are_drawn(occluded_and_holistic):
    occluded_root, holistic_root = occluded_and_holistic
    occluded_files, holistic_files = file_bytes(occluded_root), file_bytes(holistic_root)
    assert occluded_files.keys() == holistic_files.keys()
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for row in read_annotations(occluded_root):
        name = f"{folders[row['split']]}/{row['file']}"
        assert (occluded_files[name] == holistic_files[name]) == (row["occluder"] == "none")


def strip_colour_features(items):
    """A hand-made descriptor: mean colours of 16 horizontal bands of the image's centre
    strip, after dividing out the image's mean colour (camera gain and colour cast)."""
    features = []
    for path, _, _ in items:
        pixels = np.asarray(Image.open(path), dtype=np.float32)
        pixels = pixels / pixels.reshape(-1, 3).mean(0)
        width = pixels.shape[1]
        strip = pixels[:, width * 2 // 5 : width * 3 // 5]
        features.append(strip.reshape(16, -1, 3).mean(1).ravel())
    return torch.tensor(np.stack(features))


def test_identity_is_learnable_and_occlusion_hurts(occluded_and_holistic):
    rank1 = {}
    for name, root in zip(("occluded", "holistic"), occluded_and_holistic):
        dataset = build_dataset("synthetic", root)
        distmat = compute_distance_matrix(strip_colour_features(dataset.query), strip_colour_features(dataset.gallery))
        labels = [np.array([item[field] for item in split]) for field in (1, 2) for split in (dataset.query, dataset.gallery)]
        cmc, _, _ = evaluate_rank(distmat, labels[0], labels[1], labels[2], labels[3])
        rank1[name] = cmc[0]
    chance = 1 / 20
    assert rank1["holistic"] > 6 * chance
    assert rank1["occluded"] < rank1["holistic"] - 0.1


def test_existing_dataset_is_reused_and_foreign_folders_are_refused(tmp_path):
    root = synthetic.generate(tmp_path / "d", seed=1, workers=1, **SMALL)
    stamp = {path: path.stat().st_mtime_ns for path in root.rglob("*.jpg")}
    assert synthetic.generate(root, seed=1, **SMALL) == root
    assert stamp == {path: path.stat().st_mtime_ns for path in root.rglob("*.jpg")}
    synthetic.generate(root, seed=2, workers=1, **SMALL)  # other parameters: regenerated
    assert synthetic.read_metadata(root)["parameters"]["seed"] == 2
    metadata_path = root / synthetic.METADATA_NAME
    metadata_path.write_text(metadata_path.read_text().replace('"complete": true', '"complete": false'))
    with pytest.warns(UserWarning, match="generation did not finish"):
        build_dataset("synthetic", root)
    synthetic.generate(root, seed=2, workers=1, **SMALL)  # an interrupted run is redone
    assert synthetic.read_metadata(root)["complete"]
    foreign = tmp_path / "market" / "query"
    foreign.mkdir(parents=True)
    (foreign / "0001_c1s1_000001_00.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="did not write"):
        synthetic.generate(tmp_path / "market", **SMALL)


def test_invalid_options_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"cameras_per_id=\(2, 7\) with num_cameras=5"):
        synthetic.generate(tmp_path, **{**SMALL, "cameras_per_id": (2, 7)})
    with pytest.raises(ValueError, match="query_occlusion=1.5"):
        synthetic.generate(tmp_path, query_occlusion=1.5)
    with pytest.raises(TypeError):
        synthetic.generate(tmp_path, colours=3)


def test_command_line(tmp_path, capsys):
    argv = [str(tmp_path / "cli"), "--num-ids", "6", "--num-distractors", "3", "--height", "32", "--width", "16", "--holistic", "--quiet"]
    assert cli.main(["synth", *argv]) == 0
    parameters = synthetic.read_metadata(tmp_path / "cli")["parameters"]
    assert parameters["num_ids"] == 6 and parameters["occluded"] is False and parameters["height"] == 32
    assert capsys.readouterr().out == ""
    assert cli.main(["synth", "--root", str(tmp_path / "cli2"), "--num-ids", "4", "--height", "32", "--width", "16"]) == 0
    assert "query" in capsys.readouterr().out and synthetic.read_metadata(tmp_path / "cli2")["complete"]
