"""Dataset parsing on generated folders with the real naming conventions, ImageDataset and
the transforms."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pan_model.data import DATASETS, ImageDataset, build_dataset, build_transforms

SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def pid_text(pid):
    return "-1" if pid == -1 else f"{pid:04d}"  # Market's junk files: -1_c1s1_000401_03.jpg


def market_name(pid, camera, index):
    return f"{pid_text(pid)}_c{camera}s{index % 6 + 1}_{index * 37 % 999999:06d}_{index % 7:02d}.jpg"


def duke_name(pid, camera, index):
    return f"{pid_text(pid)}_c{camera}_f{index * 7919:07d}.jpg"


def cuhk03_prepared_name(pid, camera, index):
    return f"{pid_text(pid)}_c{camera}s{index % 5 + 1}_{index % 100:02d}.jpg"  # Market-style, camera pair s1..s5


def cuhk03_release_name(pid, camera, index):
    return f"{pid_text(pid)}_c{camera}_{index}.png"  # the public CUHK03-NP release


def write_tiny_image(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 3, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_dataset_folder(folder, name_of, num_cameras, seed):
    """Random images with junk (-1), distractors (0) and stray files; returns the expected
    (file name, pid, camid) per split, following the documented rules."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split, sub in SPLITS.items():
        (folder / sub).mkdir(parents=True)
        pids = rng.integers(1, 40, 17 + 6 * len(split))
        if split == "gallery":
            pids = np.concatenate([pids, [0, 0, 0, -1, -1]])
        if split == "query":
            pids = np.concatenate([pids, [-1]])
        records = []
        for index, pid in enumerate(pids.tolist()):
            camera = int(rng.integers(1, num_cameras + 1))
            file = name_of(pid, camera, index + 1000 * len(split))
            write_tiny_image(folder / sub / file, index)
            if pid != -1:
                records.append((file, pid, camera - 1))
        (folder / sub / "Thumbs.db").write_bytes(b"\0\1")
        (folder / sub / "notes.txt").write_text("not an image")
        (folder / sub / "nested_dir.jpg").mkdir()
        expected[split] = sorted(records)
    train_labels = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in expected["train"]}))}
    expected["train"] = [(file, train_labels[pid], camid) for file, pid, camid in expected["train"]]
    return expected


def as_records(items):
    return [(path.split("/")[-1], pid, camid) for path, pid, camid in items]


@pytest.mark.parametrize(
    "name, folder_name, name_of, num_cameras",
    [
        ("market1501", "Market-1501-v15.09.15", market_name, 6),
        ("dukemtmcreid", "DukeMTMC-reID", duke_name, 8),
        ("occluded_duke", "Occluded_Duke", duke_name, 8),
        ("cuhk03_np", "cuhk03_np_detected", cuhk03_prepared_name, 2),
        ("cuhk03_np", "cuhk03-np/detected", cuhk03_release_name, 2),
        ("cuhk03_np_labeled", "cuhk03-np/labeled", cuhk03_release_name, 2),
    ],
)
def test_official_layouts_parse_from_folder_or_parent(tmp_path, name, folder_name, name_of, num_cameras):
    expected = make_dataset_folder(tmp_path / folder_name, name_of, num_cameras, seed=len(name))
    for root in (tmp_path, tmp_path / folder_name):
        with pytest.warns(UserWarning, match=f"{name} at .*found .* expected {DATASETS[name].official_counts.train_ids} train ids"):
            dataset = build_dataset(name, root)
        assert dataset.root == tmp_path / folder_name
        for split in SPLITS:
            assert as_records(getattr(dataset, split)) == expected[split]
            assert all(isinstance(path, str) for path, _, _ in getattr(dataset, split))
        assert dataset.num_train_pids == len({pid for _, pid, _ in expected["train"]})
        assert dataset.num_train_cams == len({camid for _, _, camid in expected["train"]})
        assert sorted({pid for _, pid, _ in dataset.train}) == list(range(dataset.num_train_pids))
        assert 0 in {pid for _, pid, _ in dataset.gallery}  # distractors kept


def test_custom_layout_has_no_count_check_and_any_camera(tmp_path):
    expected = make_dataset_folder(tmp_path / "mine", duke_name, 11, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = build_dataset("custom", tmp_path / "mine")
    assert as_records(dataset.query) == expected["query"]
    assert "train" in dataset.summary() and "custom" in repr(dataset)


def test_matching_counts_give_no_warning(tmp_path, monkeypatch):
    expected = make_dataset_folder(tmp_path / "Market-1501", market_name, 6, seed=4)
    counts = (len({pid for _, pid, _ in expected["train"]}), len(expected["train"]), len(expected["query"]), len(expected["gallery"]))
    spec = DATASETS["market1501"]
    monkeypatch.setitem(DATASETS, "market1501", type(spec)(spec.folder_names, 6, type(spec.official_counts)(*counts)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_dataset("market1501", tmp_path)


def test_unparsed_image_names_and_empty_splits_are_errors_naming_them(tmp_path):
    make_dataset_folder(tmp_path / "data", market_name, 6, seed=5)
    write_tiny_image(tmp_path / "data" / "query" / "person.jpg", 0)
    with pytest.raises(ValueError, match=r"data/query: 1 image\(s\) whose names do not start with <pid>_c<camera>, e.g. 'person.jpg'"):
        build_dataset("custom", tmp_path / "data")
    for split in SPLITS.values():
        (tmp_path / "empty" / split).mkdir(parents=True)
    (tmp_path / "empty" / "query" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="empty/bounding_box_train holds no images"):
        build_dataset("custom", tmp_path / "empty")


def test_camera_out_of_range_names_the_file(tmp_path):
    make_dataset_folder(tmp_path / "Market-1501", market_name, 6, seed=6)
    write_tiny_image(tmp_path / "Market-1501" / "query" / "0005_c7s1_000001_00.jpg", 0)
    with pytest.raises(ValueError, match=r"0005_c7s1_000001_00.jpg: camera c7 is outside 1..6"):
        build_dataset("market1501", tmp_path)


def test_unknown_name_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'msmt17'.*market1501"):
        build_dataset("msmt17", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("market1501", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no folder with bounding_box_train"):
        build_dataset("dukemtmcreid", tmp_path)
    (tmp_path / "DukeMTMC-reID" / "query").mkdir(parents=True)
    (tmp_path / "DukeMTMC-reID" / "bounding_box_train").mkdir()
    with pytest.raises(FileNotFoundError, match="DukeMTMC-reID has no bounding_box_test folder"):
        build_dataset("dukemtmcreid", tmp_path)
    # where a dataset is not a plain download, the error says how to get it
    with pytest.raises(FileNotFoundError, match=r"looked in .*cuhk03-np/labeled.*zhunzhong07/person-re-ranking.*cuhk03-np/labeled folder"):
        build_dataset("cuhk03_np_labeled", tmp_path)


def test_cuhk03_np_cameras_are_the_two_of_a_pair(tmp_path):
    make_dataset_folder(tmp_path / "cuhk03-np" / "detected", cuhk03_release_name, 2, seed=9)
    write_tiny_image(tmp_path / "cuhk03-np" / "detected" / "query" / "0005_c3_1.png", 0)
    with pytest.raises(ValueError, match=r"0005_c3_1.png: camera c3 is outside 1..2"):
        build_dataset("cuhk03_np", tmp_path)


# ---- ImageDataset --------------------------------------------------------------------------
def test_image_dataset_returns_transformed_samples(tmp_path):
    make_dataset_folder(tmp_path / "d", duke_name, 8, seed=7)
    dataset = build_dataset("custom", tmp_path / "d")
    samples = ImageDataset(dataset.gallery, build_transforms(12, 5))
    image, pid, camid, path = samples[3]
    assert len(samples) == len(dataset.gallery)
    assert image.shape == (3, 12, 5) and image.dtype == torch.float32
    assert (path, pid, camid) == tuple(dataset.gallery[3])
    raw, *_ = ImageDataset(dataset.gallery)[3]
    assert isinstance(raw, Image.Image) and raw.mode == "RGB"


def test_unreadable_image_names_its_file(tmp_path):
    broken = tmp_path / "0001_c1_f0000001.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    with pytest.raises(OSError, match="cannot read image .*0001_c1_f0000001.jpg"):
        ImageDataset([(str(broken), 1, 0)])[0]


# ---- transforms ----------------------------------------------------------------------------
def reference_test_transform(image, height, width):
    resized = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).astype(np.float32))


def test_test_transform_is_resize_and_normalise():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 19, 3), dtype=np.uint8))
    result = build_transforms(23, 11, is_train=False)(image)
    torch.testing.assert_close(result, reference_test_transform(image, 23, 11), atol=2e-2, rtol=0)


def test_train_transform_flips_crops_and_erases():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (37, 19, 3), dtype=np.uint8))
    test_output = build_transforms(23, 11)(image)
    flipped = build_transforms(23, 11, is_train=True, flip_prob=1.0, pad=0, erasing_prob=0.0)(image)
    torch.testing.assert_close(flipped, test_output.flip(2))
    torch.manual_seed(0)
    padded = build_transforms(23, 11, is_train=True, flip_prob=0.0, pad=3, erasing_prob=0.0)
    outputs = [padded(image) for _ in range(8)]
    assert all(output.shape == (3, 23, 11) for output in outputs)
    assert any(not torch.equal(output, test_output) for output in outputs)  # shifted crops
    erased = build_transforms(23, 11, is_train=True, flip_prob=0.0, pad=0, erasing_prob=1.0)(image)
    changed = (erased != test_output).any(0)
    assert changed.any() and (erased[:, changed] == 0).all()


def test_transform_arguments_are_checked():
    with pytest.raises(ValueError, match="erasing_prob must be in"):
        build_transforms(10, 10, erasing_prob=1.5)
    with pytest.raises(ValueError, match="height and width must be positive, got 0x4"):
        build_transforms(0, 4)
    with pytest.raises(TypeError):
        build_transforms(10, 10, colour_jitter=0.2)


PREPARED_CUHK03 = Path(__file__).resolve().parent.parent / "data" / "cuhk03_np_detected"


@pytest.mark.skipif(not PREPARED_CUHK03.is_dir(), reason="CUHK03-NP is not prepared in data/ (research use only; see notes/accuracy_cuhk03.md)")
def test_prepared_cuhk03_np_has_the_official_split():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official counts match
        dataset = build_dataset("cuhk03_np", PREPARED_CUHK03.parent)
    assert dataset.counts() == (767, 7365, 1400, 5332)
    assert {pid for _, pid, _ in dataset.query} == {pid for _, pid, _ in dataset.gallery}  # 700 test identities
    for split in (dataset.query, dataset.gallery):
        assert {camid for _, _, camid in split} == {0, 1}
    # every query identity is queried once from each of its two cameras
    assert sorted((pid, camid) for _, pid, camid in dataset.query) == sorted({(pid, c) for _, pid, _ in dataset.query for c in (0, 1)})
