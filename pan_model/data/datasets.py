"""Person re-identification datasets in the Market-1501 folder layout.

A dataset folder holds three sub-folders of cropped images, bounding_box_train (training
identities), query and bounding_box_test (the gallery), with file names starting with
``<pid>_c<camera>``: Market-1501 ``0002_c1s1_000451_03.jpg``, DukeMTMC-reID and
Occluded-Duke ``0001_c2_f0046182.jpg``, CUHK03-NP ``0003_c1s1_01.jpg`` (a Market-style
layout of it) or ``0001_c1_1.png`` (the public release's ``cuhk03-np/detected`` and
``cuhk03-np/labeled`` folders). Parsing rules, the same for every dataset:

  * pid -1 (Market's "junk" detections) is dropped; pid 0 (distractors) is kept;
  * cameras become 0-based (c1 -> 0);
  * training pids are relabelled 0..N-1 in sorted order (query and gallery keep theirs);
  * files that are not images are ignored; an image whose name does not parse, or a split
    without images, is an error that names the folder and one such file.

Each split is a list of (img_path, pid, camid) sorted by file name; `ImageDataset` turns
one into (image, pid, camid, img_path) samples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from PIL import Image
from torch.utils.data import Dataset

from .layout import IMAGE_EXTENSIONS, JUNK_PID, NAME_PATTERN, SPLIT_FOLDERS, read_synthetic_metadata


class Item(NamedTuple):
    img_path: str
    pid: int
    camid: int


class SplitCounts(NamedTuple):
    train_ids: int
    train_images: int
    query_images: int
    gallery_images: int


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and what its official split sizes are."""

    folder_names: tuple  # accepted names of the dataset folder under a parent root
    num_cameras: Optional[int]  # camera numbers must lie in 1..num_cameras (None: any >= 1)
    official_counts: Optional[SplitCounts]
    how_to_get: str = ""  # said when the folder is missing


# CUHK03-NP (Zhong et al., CVPR 2017): CUHK03's 1,467 identities, each seen by the two cameras
# of one of five camera pairs, in a Market-like split. Camera numbers are 1|2 within the pair;
# since an identity lives in one pair, same pid and same camera number is the same camera.
_CUHK03_NP_HOW_TO_GET = (
    "CUHK03-NP is CUHK03 (research use only, cuhk.edu.hk) under the split of "
    "github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP; point data.root at its "
    "cuhk03-np/{variant} folder (or a parent of cuhk03-np), or at any folder laid out like Market-1501"
)


DATASETS = {
    "market1501": DatasetSpec(
        ("Market-1501-v15.09.15", "Market-1501", "market1501"), 6, SplitCounts(751, 12936, 3368, 15913)
    ),
    "dukemtmcreid": DatasetSpec(("DukeMTMC-reID", "dukemtmcreid"), 8, SplitCounts(702, 16522, 2228, 17661)),
    "occluded_duke": DatasetSpec(("Occluded_Duke", "occluded_duke", "Occluded-DukeMTMC"), 8, SplitCounts(702, 15618, 2210, 17661)),
    "cuhk03_np": DatasetSpec(
        ("cuhk03_np_detected", "cuhk03-np/detected", "CUHK03-NP/detected", "detected"), 2,
        SplitCounts(767, 7365, 1400, 5332), _CUHK03_NP_HOW_TO_GET.format(variant="detected"),
    ),
    "cuhk03_np_labeled": DatasetSpec(
        ("cuhk03_np_labeled", "cuhk03-np/labeled", "CUHK03-NP/labeled", "labeled"), 2,
        SplitCounts(767, 7368, 1400, 5328), _CUHK03_NP_HOW_TO_GET.format(variant="labeled"),
    ),  # fmt: skip
    "custom": DatasetSpec((), None, None),
    # Written by pan_model.data.synthetic.generate; its counts are checked against the
    # metadata file the generator leaves next to the splits.
    "synthetic": DatasetSpec(("synthetic",), None, None),
}


class ReIDDataset:
    """The three splits of a dataset and the sizes a model needs (num_train_pids classes)."""

    def __init__(self, name: str, root: Path, train: list, query: list, gallery: list):
        self.name = name
        self.root = root
        self.train = train
        self.query = query
        self.gallery = gallery
        self.num_train_pids = len({item.pid for item in train})
        self.num_train_cams = len({item.camid for item in train})

    def counts(self) -> SplitCounts:
        return SplitCounts(self.num_train_pids, len(self.train), len(self.query), len(self.gallery))

    def summary(self) -> str:
        """A small table of identities, images and cameras per split."""
        lines = [f"{self.name} ({self.root})", "  split   | ids   | images | cameras"]
        for split in ("train", "query", "gallery"):
            items = getattr(self, split)
            ids, cams = len({item.pid for item in items}), len({item.camid for item in items})
            lines.append(f"  {split:<7} | {ids:5d} | {len(items):6d} | {cams:7d}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        counts = self.counts()
        return (
            f"ReIDDataset({self.name!r}, train={counts.train_images} images of {counts.train_ids} ids, "
            f"query={counts.query_images}, gallery={counts.gallery_images})"
        )


def build_dataset(name: str, root: "str | Path") -> ReIDDataset:
    """Read dataset `name` (a key of DATASETS: "market1501", "cuhk03_np", "custom", ...) from
    `root`, which may be the dataset folder itself or its parent."""
    if name not in DATASETS:
        raise ValueError(f"build_dataset: unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    try:
        folder = find_dataset_folder(Path(root), spec.folder_names, name)
    except FileNotFoundError as error:
        if spec.how_to_get:
            raise FileNotFoundError(f"{error}. {spec.how_to_get}") from None
        raise
    train = relabel(parse_split(folder / SPLIT_FOLDERS["train"], spec.num_cameras))
    query = parse_split(folder / SPLIT_FOLDERS["query"], spec.num_cameras)
    gallery = parse_split(folder / SPLIT_FOLDERS["gallery"], spec.num_cameras)
    dataset = ReIDDataset(name, folder, train, query, gallery)
    expected = spec.official_counts if name != "synthetic" else _synthetic_counts(folder)
    if expected is not None and dataset.counts() != expected:
        warnings.warn(
            f"{name} at {folder}: found {_describe(dataset.counts())}, expected {_describe(expected)}; "
            "the copy may be incomplete or modified",
            stacklevel=2,
        )
    return dataset


def find_dataset_folder(root: Path, folder_names: tuple, name: str) -> Path:
    """`root` if it holds the three split folders, else the first `root/<folder_name>` that does."""
    candidates = [root] + [root / folder_name for folder_name in folder_names]
    for candidate in candidates:
        if all((candidate / split).is_dir() for split in SPLIT_FOLDERS.values()):
            return candidate
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: dataset root {root} does not exist")
    for candidate in candidates:  # a folder that looks like the dataset but lacks a split
        missing = [split for split in SPLIT_FOLDERS.values() if not (candidate / split).is_dir()]
        if candidate.is_dir() and len(missing) < len(SPLIT_FOLDERS):
            raise FileNotFoundError(f"{name}: {candidate} has no {' or '.join(missing)} folder")
    looked_in = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(
        f"{name}: no folder with {', '.join(SPLIT_FOLDERS.values())} found (looked in {looked_in})"
    )


def parse_split(folder: Path, num_cameras: Optional[int] = None) -> list:
    """(img_path, pid, camid) of the images in `folder`, junk (pid -1) dropped."""
    items, unparsed = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        match = NAME_PATTERN.match(path.name)
        if match is None:
            unparsed.append(path.name)
            continue
        pid, camera = int(match.group(1)), int(match.group(2))
        if pid == JUNK_PID:
            continue
        if pid < 0:
            raise ValueError(f"{path}: pid {pid} is negative (only -1, junk, is allowed)")
        if camera < 1 or (num_cameras is not None and camera > num_cameras):
            limit = f"1..{num_cameras}" if num_cameras is not None else ">= 1"
            raise ValueError(f"{path}: camera c{camera} is outside {limit}")
        items.append(Item(str(path), pid, camera - 1))
    if unparsed:  # a stray image is more likely a mistake than something to leave out silently
        raise ValueError(
            f"{folder}: {len(unparsed)} image(s) whose names do not start with <pid>_c<camera>, e.g. "
            f"{unparsed[0]!r}; rename or remove them"
        )
    if not items:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)} named <pid>_c<camera>...)")
    return items


def relabel(items: list) -> list:
    """Training pids mapped to 0..N-1 in sorted order (the classifier's labels)."""
    label_of = {pid: label for label, pid in enumerate(sorted({item.pid for item in items}))}
    return [Item(item.img_path, label_of[item.pid], item.camid) for item in items]


def _synthetic_counts(folder: Path) -> Optional[SplitCounts]:
    """The counts the generator recorded (None for a folder it did not write)."""
    metadata = read_synthetic_metadata(folder)
    if metadata is None:
        return None
    if not metadata.get("complete"):
        warnings.warn(f"synthetic at {folder}: generation did not finish; generate it again", stacklevel=3)
        return None
    return SplitCounts(*metadata["counts"])


def _describe(counts: SplitCounts) -> str:
    return (
        f"{counts.train_ids} train ids / {counts.train_images} train images, {counts.query_images} query, "
        f"{counts.gallery_images} gallery"
    )


class ImageDataset(Dataset):
    """Samples (transform(image), pid, camid, img_path) of a split's (img_path, pid, camid) items."""

    def __init__(self, items: list, transform: Optional[Callable] = None):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        img_path, pid, camid = self.items[index]
        try:
            with Image.open(img_path) as image:
                image = image.convert("RGB")
        except (OSError, ValueError) as error:
            raise OSError(f"cannot read image {img_path}: {error}") from error
        if self.transform is not None:
            image = self.transform(image)
        return image, pid, camid, img_path
