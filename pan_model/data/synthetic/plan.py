"""What a synthetic dataset holds, before any file: its parameters (SyntheticConfig), which
image goes to which split with which identity, camera and occluder (plan_images), and the
pixels of each planned image (World.render).

Every image has its own random streams, keyed by the seed and the image's running number,
so an image's pixels never depend on how many other images exist, nor on which process
draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from .render import OCCLUDER_KINDS, render_image, sample_camera, sample_identity

# Independent random streams: an image's pixels never depend on how many other images exist.
_IDENTITY, _CAMERA, _LAYOUT, _SCENE, _OCCLUSION, _DISTRACTOR, _NOISE = range(7)


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


@dataclass(frozen=True)
class SyntheticConfig:
    num_ids: int = 200  # identities: the first half trains, the second half is tested
    seed: int = 0
    occluded: bool = True
    num_cameras: int = 6
    cameras_per_id: tuple = (2, 4)  # each identity walks past this many cameras (min, max)
    images_per_camera: tuple = (2, 4)  # images of an identity per camera (min, max)
    queries_per_id: int = 2  # test identities: query images, from different cameras
    num_distractors: int = 100  # gallery images of strangers (pid 0)
    height: int = 128
    width: int = 64
    train_occlusion: float = 0.1  # share of occluded images per split (Occluded-Duke-like)
    gallery_occlusion: float = 0.1
    query_occlusion: float = 1.0
    supersample: int = 2  # drawn at this multiple of the size, then box-filtered
    jpeg_quality: int = 92

    def __post_init__(self):
        problems = []
        if self.num_ids < 2:
            problems.append(f"num_ids={self.num_ids} (need >= 2: half train, half test)")
        low, high = self.cameras_per_id
        if not 2 <= low <= high <= self.num_cameras:
            problems.append(f"cameras_per_id={self.cameras_per_id} with num_cameras={self.num_cameras} (need 2 <= min <= max <= num_cameras)")
        if not 2 <= self.images_per_camera[0] <= self.images_per_camera[1]:
            problems.append(f"images_per_camera={self.images_per_camera} (need 2 <= min <= max)")
        if not 1 <= self.queries_per_id <= low:
            problems.append(f"queries_per_id={self.queries_per_id} (need 1 <= it <= cameras_per_id min={low})")
        if self.height < 16 or self.width < 8:
            problems.append(f"size {self.height}x{self.width} (need at least 16x8)")
        for name in ("train_occlusion", "gallery_occlusion", "query_occlusion"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}={getattr(self, name)} (need a share in [0, 1])")
        if self.num_distractors < 0 or self.supersample < 1 or not 1 <= self.jpeg_quality <= 100:
            problems.append(f"num_distractors={self.num_distractors}, supersample={self.supersample}, jpeg_quality={self.jpeg_quality}")
        if problems:
            raise ValueError("synthetic dataset: invalid " + "; ".join(problems))

    @property
    def num_train_ids(self) -> int:
        return self.num_ids // 2


@dataclass(frozen=True)
class ImageSpec:
    split: str  # train | query | gallery
    pid: int  # 0 for distractors
    camera: int  # 1-based, as in file names
    index: int  # running number of the image, its frame number in the file name
    occluder: Optional[str]


def plan_images(config: SyntheticConfig) -> list:
    """Which image goes where: identities, cameras, splits and occluders, before any pixel."""
    layout = _rng(config.seed, _LAYOUT)
    specs = []
    for pid in range(1, config.num_ids + 1):
        is_test = pid > config.num_train_ids
        cameras = layout.choice(config.num_cameras, int(layout.integers(config.cameras_per_id[0], config.cameras_per_id[1] + 1)), replace=False)
        query_cameras = set(cameras[: config.queries_per_id].tolist()) if is_test else set()
        for camera in sorted(cameras.tolist()):
            count = int(layout.integers(config.images_per_camera[0], config.images_per_camera[1] + 1))
            for shot in range(count):
                split = "train" if not is_test else "query" if shot == 0 and camera in query_cameras else "gallery"
                specs.append((split, pid, camera + 1))
    specs += [("gallery", 0, int(layout.integers(config.num_cameras)) + 1) for _ in range(config.num_distractors)]

    # Exactly round(share x count) occluded images per split, chosen at random.
    occluded = np.zeros(len(specs), dtype=bool)
    if config.occluded:
        for split, share in (("train", config.train_occlusion), ("query", config.query_occlusion), ("gallery", config.gallery_occlusion)):
            members = np.array([i for i, spec in enumerate(specs) if spec[0] == split], dtype=np.int64)
            chosen = layout.permutation(members)[: round(share * len(members))]
            occluded[chosen] = True
    return [
        ImageSpec(split, pid, camera, index, str(_rng(config.seed, _OCCLUSION, index).choice(OCCLUDER_KINDS)) if occluded[index] else None)
        for index, (split, pid, camera) in enumerate(specs)
    ]


class World:
    """Everything the images of a dataset share (identities, cameras and the noise bank),
    and the pixels of each of them."""

    def __init__(self, config: SyntheticConfig):
        self.config = config
        self.identities = {pid: sample_identity(_rng(config.seed, _IDENTITY, pid)) for pid in range(1, config.num_ids + 1)}
        self.cameras = {camera: sample_camera(_rng(config.seed, _CAMERA, camera)) for camera in range(1, config.num_cameras + 1)}
        self.noise_bank = _rng(config.seed, _NOISE).standard_normal((2 * config.height, 2 * config.width, 3), dtype=np.float32)

    def render(self, spec: ImageSpec) -> Image.Image:
        config = self.config
        person = self.identities[spec.pid] if spec.pid else sample_identity(_rng(config.seed, _DISTRACTOR, spec.index))
        occluder_rng = _rng(config.seed, _OCCLUSION, spec.index, 1) if spec.occluder else None
        return render_image(
            person, self.cameras[spec.camera], _rng(config.seed, _SCENE, spec.index), spec.occluder, occluder_rng,
            self.noise_bank, (config.width, config.height), config.supersample,
        )
