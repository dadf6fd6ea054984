"""A synthetic occluded person re-identification dataset, drawn procedurally.

Every identity is a pedestrian whose identity lives in body-part attributes: hair, skin,
upper-body colour and pattern, sleeves, lower-body colour and cut, shoes and bag. Each is
seen by a few of several cameras; a camera has its own background, illumination, colour
cast, blur, framing and viewpoint habits, and every image varies the pose (stride, arm
swing, front or back view, walking direction), scale, position and noise. Occluders
(cars, plants, poles, barriers, other pedestrians) cover parts of the body with
Occluded-Duke-like statistics: every query is occluded, about 10% of gallery and training
images are. The holistic variant draws the very same images without occluders.

The dataset is written in the Market-1501 layout (bounding_box_train, query,
bounding_box_test; names ``0001_c1s1_000123_00.jpg``), so the ordinary loaders read it
(``build_dataset("synthetic", root)``), together with ``synthetic.json`` (parameters,
counts) and ``annotations.csv`` (one row per image: split, file, pid, camera, occluder).

Generation is deterministic from the seed (images are identical given the same Pillow),
and every image has its own random streams, so the occluded and holistic variants of a
seed differ only where occluders are drawn. Numpy and Pillow only; a few thousand
128x64 images take seconds.

    python -m pan_model.data.synthetic data/synthetic --num-ids 200 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .datasets import SPLIT_FOLDERS

# Bump whenever the images of a parameter set change: existing folders are reused when
# their recorded format and parameters match.
FORMAT_VERSION = 1
DEFAULT_ROOT = "data/synthetic"
METADATA_NAME = "synthetic.json"
ANNOTATIONS_NAME = "annotations.csv"
OCCLUDER_KINDS = ("car", "plant", "pole", "barrier", "pedestrian")

PALETTE = np.array(
    [
        (25, 25, 28), (70, 70, 75), (128, 128, 130), (190, 190, 192), (238, 238, 235),  # black .. white
        (200, 30, 35), (120, 20, 30), (235, 120, 30), (235, 205, 40), (120, 120, 40),  # red, dark red, orange, yellow, olive
        (40, 150, 60), (25, 80, 40), (20, 130, 130), (110, 170, 230), (35, 70, 190),  # greens, teal, sky blue, blue
        (25, 35, 90), (110, 50, 150), (235, 130, 170), (110, 70, 40), (210, 185, 140),  # navy, purple, pink, brown, beige
    ],
    dtype=np.int64,
)
SKIN_TONES = np.array([(241, 204, 176), (224, 172, 140), (190, 134, 100), (140, 92, 64), (95, 62, 45)])
HAIR_COLOURS = np.array([(20, 18, 18), (60, 40, 25), (120, 80, 40), (200, 170, 100), (150, 150, 150), (140, 50, 30)])
UPPER_PATTERNS = ("plain", "stripes", "split", "band", "checks")
LOWER_CUTS = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "handbag", "shoulder")

# Independent random streams: an image's pixels never depend on how many other images exist.
_IDENTITY, _CAMERA, _LAYOUT, _SCENE, _OCCLUSION, _DISTRACTOR, _NOISE = range(7)


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


def _colour(rng, exclude: Sequence[int] = ()) -> int:
    """A random palette index, avoiding `exclude`."""
    return int(rng.choice([index for index in range(len(PALETTE)) if index not in exclude]))


def _clip_colour(values) -> tuple:
    return tuple(min(255, max(0, int(v))) for v in values)


def _shade(colour: tuple, factor: float) -> tuple:
    return _clip_colour(c * factor for c in colour)


def _jitter(colour: tuple, rng: np.random.Generator, amount: int) -> tuple:
    return _clip_colour(np.asarray(colour) + rng.integers(-amount, amount + 1, 3))


# ---- identities ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """What makes a pedestrian recognisable. Colours are palette indices."""

    skin: int
    hair: int
    hair_style: str  # short | long | cap
    cap_colour: int
    upper: int
    upper_accent: int
    pattern: str
    long_sleeves: bool
    lower: int
    lower_cut: str
    shoes: int
    bag: str
    bag_colour: int
    height: float  # relative body height
    build: float  # relative body width


def sample_identity(rng: np.random.Generator) -> Identity:
    upper = _colour(rng)
    lower = _colour(rng, exclude=(upper,))
    return Identity(
        skin=int(rng.integers(len(SKIN_TONES))),
        hair=int(rng.integers(len(HAIR_COLOURS))),
        hair_style=str(rng.choice(["short", "long", "cap"], p=[0.5, 0.3, 0.2])),
        cap_colour=_colour(rng),
        upper=upper,
        upper_accent=_colour(rng, exclude=(upper,)),
        pattern=str(rng.choice(UPPER_PATTERNS, p=[0.4, 0.2, 0.15, 0.15, 0.1])),
        long_sleeves=bool(rng.random() < 0.5),
        lower=lower,
        lower_cut=str(rng.choice(LOWER_CUTS, p=[0.6, 0.25, 0.15])),
        shoes=int(rng.choice([0, 1, 4, 5, 14, 18])),
        bag=str(rng.choice(BAGS, p=[0.4, 0.25, 0.2, 0.15])),
        bag_colour=_colour(rng),
        height=float(rng.uniform(0.9, 1.0)),
        build=float(rng.uniform(0.85, 1.15)),
    )


@dataclass(frozen=True)
class Pose:
    stride: float  # horizontal distance between the feet, in body heights
    arm_swing: float  # hand offset forwards/backwards, in body heights
    back_view: bool
    facing_left: bool  # mirror image


def sample_pose(rng: np.random.Generator, back_view_probability: float) -> Pose:
    return Pose(
        stride=float(rng.uniform(0.0, 0.09)),
        arm_swing=float(rng.uniform(-0.04, 0.04)),
        back_view=bool(rng.random() < back_view_probability),
        facing_left=bool(rng.random() < 0.5),
    )


class _Body:
    """Maps body coordinates (u: sideways, v: down from the top of the head; both in body
    heights) to canvas pixels, mirrored for pedestrians facing left."""

    def __init__(self, centre_x: float, top: float, height_px: float, mirror: bool):
        self.centre_x, self.top, self.scale, self.sign = centre_x, top, height_px, -1.0 if mirror else 1.0

    def xy(self, u: float, v: float) -> tuple:
        return (self.centre_x + self.sign * u * self.scale, self.top + v * self.scale)

    def box(self, u0: float, v0: float, u1: float, v1: float) -> list:
        (x0, y0), (x1, y1) = self.xy(u0, v0), self.xy(u1, v1)
        return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]

    def px(self, length: float) -> int:
        return max(1, round(length * self.scale))


def _rgb(palette: np.ndarray, index: int) -> tuple:
    return tuple(int(c) for c in palette[index])


def draw_pedestrian(draw: ImageDraw.ImageDraw, person: Identity, pose: Pose, body: _Body) -> None:
    """Back to front: backpack (front view: straps only), legs, shoes, torso, arms, head."""
    upper, accent, lower = _rgb(PALETTE, person.upper), _rgb(PALETTE, person.upper_accent), _rgb(PALETTE, person.lower)
    skin, hair = _rgb(SKIN_TONES, person.skin), _rgb(HAIR_COLOURS, person.hair)
    bag, shoes = _rgb(PALETTE, person.bag_colour), _rgb(PALETTE, person.shoes)
    half_width = 0.13 * person.build
    hip_v, foot_v = 0.5, 0.96
    if person.bag == "backpack" and not pose.back_view:  # behind the body: only its edges show
        draw.rectangle(body.box(-half_width - 0.02, 0.17, half_width + 0.02, 0.43), fill=bag)

    # Legs: lower-body colour down to the cut, skin below.
    cut_v = {"trousers": foot_v, "shorts": 0.66, "skirt": 0.7}[person.lower_cut]
    for side in (-1, 1):
        hip_u, foot_u = side * 0.055 * person.build, side * (0.04 + pose.stride / 2)
        knee = (hip_u + (foot_u - hip_u) * (cut_v - hip_v) / (foot_v - hip_v), cut_v)
        width = body.px(0.085 * person.build)
        draw.line([body.xy(hip_u, hip_v), body.xy(*knee)], fill=lower, width=width)
        draw.line([body.xy(*knee), body.xy(foot_u, foot_v)], fill=skin if cut_v < foot_v else lower, width=width)
        draw.ellipse(body.box(foot_u - 0.05, foot_v - 0.02, foot_u + 0.05, foot_v + 0.025), fill=shoes)
    if person.lower_cut == "skirt":
        draw.polygon([body.xy(-0.1, 0.46), body.xy(0.1, 0.46), body.xy(0.16, cut_v), body.xy(-0.16, cut_v)], fill=lower)
    else:
        draw.rectangle(body.box(-0.1 * person.build, 0.44, 0.1 * person.build, 0.54), fill=lower)

    # Torso with its pattern.
    torso = [body.xy(-half_width, 0.16), body.xy(half_width, 0.16), body.xy(0.1 * person.build, 0.5), body.xy(-0.1 * person.build, 0.5)]
    draw.polygon(torso, fill=upper)
    if person.pattern == "stripes":
        for v in np.arange(0.2, 0.48, 0.06):
            draw.rectangle(body.box(-half_width + 0.01, v, half_width - 0.01, v + 0.025), fill=accent)
    elif person.pattern == "split":
        draw.polygon([body.xy(0, 0.16), body.xy(half_width, 0.16), body.xy(0.1 * person.build, 0.5), body.xy(0, 0.5)], fill=accent)
    elif person.pattern == "band":
        draw.rectangle(body.box(-half_width + 0.01, 0.27, half_width - 0.01, 0.35), fill=accent)
    elif person.pattern == "checks":
        for row, v in enumerate(np.arange(0.18, 0.48, 0.06)):
            for u in np.arange(-half_width + 0.01 + 0.06 * (row % 2), half_width - 0.04, 0.12):
                draw.rectangle(body.box(u, v, u + 0.06, v + 0.06), fill=accent)

    # Bags in front of the torso (seen from behind, the backpack covers the back).
    if person.bag == "backpack" and pose.back_view:
        draw.rounded_rectangle(body.box(-0.09, 0.19, 0.09, 0.42), radius=body.px(0.03), fill=bag)
    elif person.bag == "backpack":
        for side in (-1, 1):
            draw.line([body.xy(side * 0.07, 0.16), body.xy(side * 0.08, 0.4)], fill=bag, width=body.px(0.025))
    elif person.bag == "shoulder":
        draw.line([body.xy(-half_width + 0.02, 0.17), body.xy(half_width, 0.46)], fill=bag, width=body.px(0.02))
        draw.rectangle(body.box(half_width - 0.03, 0.42, half_width + 0.09, 0.54), fill=bag)

    # Arms: sleeve colour to the elbow (or the wrist), skin below, a hand at the end.
    sleeve_end = 0.47 if person.long_sleeves else 0.3
    for side in (-1, 1):
        shoulder = (side * (half_width - 0.01), 0.18)
        hand = (side * (half_width + 0.03), 0.5)
        hand = (hand[0] + side * pose.arm_swing * 0.5, hand[1] - abs(pose.arm_swing))
        elbow = tuple(s + (h - s) * (sleeve_end - 0.18) / (0.5 - 0.18) for s, h in zip(shoulder, hand))
        width = body.px(0.055 * person.build)
        draw.line([body.xy(*shoulder), body.xy(*elbow)], fill=upper, width=width)
        draw.line([body.xy(*elbow), body.xy(*hand)], fill=skin if not person.long_sleeves else upper, width=width)
        draw.ellipse(body.box(hand[0] - 0.025, hand[1] - 0.02, hand[0] + 0.025, hand[1] + 0.03), fill=skin)
    if person.bag == "handbag":
        draw.rectangle(body.box(half_width + 0.01, 0.48, half_width + 0.11, 0.6), fill=bag)

    # Head: long hair behind, face (or the back of the head), hair or cap on top.
    if person.hair_style == "long":
        draw.rectangle(body.box(-0.065, 0.05, 0.065, 0.22), fill=hair)
    draw.rectangle(body.box(-0.025, 0.11, 0.025, 0.17), fill=skin)
    draw.ellipse(body.box(-0.055, 0.015, 0.055, 0.14), fill=hair if pose.back_view else skin)
    if person.hair_style == "cap":
        draw.chord(body.box(-0.06, 0.0, 0.06, 0.1), 180, 360, fill=_rgb(PALETTE, person.cap_colour))
        draw.rectangle(body.box(0.0, 0.045, 0.09, 0.06), fill=_rgb(PALETTE, person.cap_colour))
    else:
        draw.chord(body.box(-0.058, 0.005, 0.058, 0.1), 180, 360, fill=hair)


# ---- cameras and scenes ----------------------------------------------------------------------
@dataclass(frozen=True)
class Camera:
    background: str  # street | park | indoor | plaza
    wall: tuple
    ground: tuple
    gain: float  # overall brightness
    cast: tuple  # per-channel multipliers
    blur: float  # box blur radius in output pixels
    noise: float  # noise standard deviation (0-255 scale)
    person_height: float  # typical pedestrian height as a share of the image height
    back_view_probability: float


def sample_camera(rng: np.random.Generator) -> Camera:
    background = str(rng.choice(["street", "park", "indoor", "plaza"]))
    base_wall = {"street": (150, 140, 130), "park": (150, 190, 225), "indoor": (205, 200, 185), "plaza": (175, 165, 150)}
    base_ground = {"street": (95, 95, 100), "park": (80, 135, 60), "indoor": (160, 150, 140), "plaza": (200, 185, 160)}
    return Camera(
        background=background,
        wall=_jitter(base_wall[background], rng, 30),
        ground=_jitter(base_ground[background], rng, 30),
        gain=float(rng.uniform(0.7, 1.25)),
        cast=tuple(float(c) for c in rng.uniform(0.88, 1.12, 3)),
        blur=float(rng.choice([0.0, 0.0, 0.4, 0.7])),
        noise=float(rng.uniform(2.0, 7.0)),
        person_height=float(rng.uniform(0.8, 0.92)),
        back_view_probability=float(rng.uniform(0.2, 0.8)),
    )


def draw_background(draw: ImageDraw.ImageDraw, camera: Camera, size: tuple, rng: np.random.Generator) -> None:
    width, height = size
    horizon = height * rng.uniform(0.5, 0.72)
    draw.rectangle([0, 0, width, horizon], fill=_shade(camera.wall, rng.uniform(0.9, 1.1)))
    draw.rectangle([0, horizon, width, height], fill=_shade(camera.ground, rng.uniform(0.9, 1.1)))
    if camera.background in ("street", "indoor"):  # windows or doors on a facade
        step_x, step_y = width * rng.uniform(0.3, 0.5), height * rng.uniform(0.15, 0.25)
        offset_x, offset_y = rng.uniform(0, step_x), rng.uniform(0, step_y)
        window = _shade(camera.wall, 0.6)
        for x in np.arange(offset_x - step_x, width, step_x):
            for y in np.arange(offset_y - step_y, horizon - step_y * 0.3, step_y):
                draw.rectangle([x, y, x + step_x * 0.55, y + step_y * 0.6], fill=window)
    elif camera.background == "park":  # distant trees
        for _ in range(3):
            x, radius = rng.uniform(0, width), width * rng.uniform(0.15, 0.35)
            draw.ellipse([x - radius, horizon - 2.2 * radius, x + radius, horizon], fill=(50, int(rng.integers(90, 130)), 50))
    else:  # paving lines
        for y in np.arange(horizon, height, height * 0.06):
            draw.line([0, y, width, y], fill=_shade(camera.ground, 0.8), width=1)


# ---- occluders ---------------------------------------------------------------------------------
def draw_occluder(draw: ImageDraw.ImageDraw, kind: str, size: tuple, rng: np.random.Generator) -> None:
    """An occluder in front of the pedestrian, covering a band of the body."""
    width, height = size
    if kind == "car":  # lower body, edge to edge
        top = height * rng.uniform(0.5, 0.7)
        colour = _rgb(PALETTE, _colour(rng))
        draw.rounded_rectangle([-width * 0.2, top, width * 1.2, height * 1.05], radius=width * 0.1, fill=colour)
        draw.rectangle([width * rng.uniform(-0.1, 0.3), top + height * 0.03, width * rng.uniform(0.7, 1.1), top + height * 0.12], fill=(60, 75, 95))
        for x in (width * rng.uniform(0.0, 0.2), width * rng.uniform(0.8, 1.0)):
            draw.ellipse([x - width * 0.14, height * 0.9, x + width * 0.14, height * 1.1], fill=(20, 20, 20))
    elif kind == "plant":  # a bush from the ground up
        top = height * rng.uniform(0.45, 0.7)
        for _ in range(7):
            x, y = rng.uniform(-0.1, 1.1) * width, rng.uniform(top, height)
            rx, ry = width * rng.uniform(0.2, 0.4), (height - top) * rng.uniform(0.25, 0.5)
            green = (int(rng.integers(20, 70)), int(rng.integers(90, 160)), int(rng.integers(20, 70)))
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=green)
    elif kind == "pole":  # a vertical band over one side or the middle
        pole_width = width * rng.uniform(0.2, 0.4)
        x = width * rng.choice([rng.uniform(-0.05, 0.25), rng.uniform(0.35, 0.65), rng.uniform(0.75, 1.05)]) - pole_width / 2
        colour = [(110, 110, 115), (95, 70, 45), (160, 160, 150)][int(rng.integers(3))]
        draw.rectangle([x, -1, x + pole_width, height + 1], fill=colour)
    elif kind == "barrier":  # a striped board across the legs or the waist
        top = height * rng.uniform(0.45, 0.65)
        bottom = top + height * rng.uniform(0.15, 0.3)
        draw.rectangle([-1, top, width + 1, bottom], fill=(235, 235, 235))
        stripe = width * 0.25
        stripe_colour = (200, 30, 35) if rng.random() < 0.5 else (240, 180, 20)
        for x in np.arange(-stripe + rng.uniform(0, stripe), width, 2 * stripe):
            draw.polygon([(x, bottom), (x + stripe, top), (x + 2 * stripe, top), (x + stripe, bottom)], fill=stripe_colour)
    elif kind == "pedestrian":  # someone else walking past in front, covering one side
        other = sample_identity(rng)
        pose = sample_pose(rng, 0.5)
        side = 1 if rng.random() < 0.5 else -1
        body_height = height * rng.uniform(0.9, 1.1)
        centre = width * (0.5 + side * rng.uniform(0.25, 0.45))
        draw_pedestrian(draw, other, pose, _Body(centre, height * rng.uniform(0.0, 0.15), body_height, pose.facing_left))
    else:
        raise ValueError(f"unknown occluder kind {kind!r}; known: {OCCLUDER_KINDS}")


# ---- one image ---------------------------------------------------------------------------------
def render_image(
    person: Identity,
    camera: Camera,
    scene_rng: np.random.Generator,
    occluder: Optional[str],
    occluder_rng: Optional[np.random.Generator],
    noise_bank: np.ndarray,
    size: tuple,
    supersample: int = 2,
) -> Image.Image:
    """One crop (width, height) of `person` seen by `camera`, occluded by `occluder` (or not).
    scene_rng drives everything but the occluder, so an image with and without its
    occluder is otherwise the same. Sensor noise is a random window of noise_bank, a
    standard-normal array at least twice the size (drawing fresh noise per image costs
    more than drawing the image)."""
    width, height = size
    canvas_size = (width * supersample, height * supersample)
    canvas = Image.new("RGB", canvas_size)
    draw = ImageDraw.Draw(canvas)
    draw_background(draw, camera, canvas_size, scene_rng)
    pose = sample_pose(scene_rng, camera.back_view_probability)
    body_height = canvas_size[1] * camera.person_height * person.height * scene_rng.uniform(0.93, 1.07)
    centre = canvas_size[0] * (0.5 + scene_rng.uniform(-0.08, 0.08))
    top = (canvas_size[1] - body_height) * scene_rng.uniform(0.3, 0.9)
    draw_pedestrian(draw, person, pose, _Body(centre, top, body_height, pose.facing_left))
    if occluder is not None:
        draw_occluder(draw, occluder, canvas_size, occluder_rng)
    if supersample > 1:
        canvas = canvas.reduce(supersample)  # box filter: anti-aliasing

    if camera.blur > 0:
        canvas = canvas.filter(ImageFilter.BoxBlur(camera.blur))
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels *= np.float32(camera.gain * scene_rng.uniform(0.9, 1.1)) * np.asarray(camera.cast, dtype=np.float32)
    top, left = (int(scene_rng.integers(extent - length + 1)) for extent, length in zip(noise_bank.shape, (height, width)))
    pixels += np.float32(camera.noise) * noise_bank[top : top + height, left : left + width]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ---- the dataset ------------------------------------------------------------------------------
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


def file_name(spec: ImageSpec) -> str:
    return f"{spec.pid:04d}_c{spec.camera}s1_{spec.index:06d}_00.jpg"


class _World:
    """Everything images share: identities, cameras and the noise bank."""

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


def generate(
    root: "str | Path", overwrite: bool = False, progress: bool = False, workers: Optional[int] = None, **options
) -> Path:
    """Write the dataset described by SyntheticConfig(**options) into `root` and return it.

    A folder already holding this very dataset (same parameters and format) is reused
    as it is unless overwrite=True. One holding another synthetic dataset is replaced; one
    holding anything else in its split folders is never touched (FileExistsError).
    workers: processes drawing images (default: the CPU count, at most 8); the files do
    not depend on it.
    """
    config = SyntheticConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in options.items()})
    root = Path(root)
    parameters = _parameters(config)
    metadata = read_metadata(root)
    if metadata is not None and metadata.get("complete") and metadata["parameters"] == parameters and not overwrite:
        return root
    split_dirs = [root / folder for folder in SPLIT_FOLDERS.values()]
    if metadata is None and any(path.is_dir() and any(path.iterdir()) for path in split_dirs):
        raise FileExistsError(f"synthetic: {root} already holds images that this generator did not write; choose another root")
    for path in split_dirs:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    _write_metadata(root, {"format": FORMAT_VERSION, "complete": False, "parameters": parameters})

    specs = plan_images(config)
    folder_of = dict(zip(SPLIT_FOLDERS, split_dirs))
    jobs = [(spec, folder_of[spec.split] / file_name(spec)) for spec in specs]
    _run_jobs(config, jobs, workers or min(os.cpu_count() or 1, 8), f"synthetic -> {root}" if progress else None)

    with open(root / ANNOTATIONS_NAME, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "file", "pid", "camera", "occluder"])
        writer.writerows([spec.split, file_name(spec), spec.pid, spec.camera, spec.occluder or "none"] for spec in specs)
    counts = _counts(specs)
    _write_metadata(root, {"format": FORMAT_VERSION, "complete": True, "parameters": parameters, "counts": counts})
    return root


_worker_world: Optional[_World] = None  # the world of a generator worker process


def _start_worker(config: SyntheticConfig) -> None:
    global _worker_world
    _worker_world = _World(config)


def _write_images(jobs: list, world: Optional[_World] = None) -> int:
    world = world or _worker_world
    for spec, path in jobs:
        world.render(spec).save(path, quality=world.config.jpeg_quality)
    return len(jobs)


def _run_jobs(config: SyntheticConfig, jobs: list, workers: int, progress_label: Optional[str]) -> None:
    """Render and save (spec, path) jobs in batches, in worker processes when workers > 1."""
    batches = [jobs[start : start + 64] for start in range(0, len(jobs), 64)]
    bar = None
    if progress_label:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=progress_label, unit="img")
    if workers <= 1 or len(batches) <= 1:
        world = _World(config)
        done = (_write_images(batch, world) for batch in batches)
        pool = None
    else:
        # fork shares the imported modules; a spawned worker would re-import torch.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        pool = ProcessPoolExecutor(min(workers, len(batches)), mp_context=context, initializer=_start_worker, initargs=(config,))
        done = pool.map(_write_images, batches)
    try:
        for count in done:
            if bar is not None:
                bar.update(count)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()


def read_metadata(root: "str | Path") -> Optional[dict]:
    """The generator's record in `root` (parameters, and counts once complete), or None."""
    path = Path(root) / METADATA_NAME
    if not path.is_file():
        return None
    metadata = json.loads(path.read_text())
    return metadata if metadata.get("format") == FORMAT_VERSION else None


def _parameters(config: SyntheticConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))  # tuples become lists, as read back from JSON


def _write_metadata(root: Path, metadata: dict) -> None:
    (root / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n")


def _counts(specs: list) -> list:
    """[train ids, train images, query images, gallery images], as build_dataset counts them."""
    train = [spec for spec in specs if spec.split == "train"]
    return [len({spec.pid for spec in train}), len(train), sum(s.split == "query" for s in specs), sum(s.split == "gallery" for s in specs)]


# ---- command line ------------------------------------------------------------------------------
def build_parser(prog: str = "pan-reid synth") -> argparse.ArgumentParser:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(prog=prog, description="Write a synthetic occluded ReID dataset in the Market-1501 layout.")
    parser.add_argument("root", nargs="?", help=f"output folder for bounding_box_train, query, bounding_box_test (default {DEFAULT_ROOT})")
    parser.add_argument("--root", dest="root_option", metavar="ROOT", help="the output folder, as an option")
    parser.add_argument("--num-ids", type=int, default=defaults.num_ids, help="identities, half train and half test")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--holistic", action="store_true", help="no occluders (the same images otherwise)")
    parser.add_argument("--num-cameras", type=int, default=defaults.num_cameras)
    parser.add_argument("--cameras-per-id", type=int, nargs=2, default=defaults.cameras_per_id, metavar=("MIN", "MAX"))
    parser.add_argument("--images-per-camera", type=int, nargs=2, default=defaults.images_per_camera, metavar=("MIN", "MAX"))
    parser.add_argument("--queries-per-id", type=int, default=defaults.queries_per_id)
    parser.add_argument("--num-distractors", type=int, default=defaults.num_distractors)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--train-occlusion", type=float, default=defaults.train_occlusion)
    parser.add_argument("--gallery-occlusion", type=float, default=defaults.gallery_occlusion)
    parser.add_argument("--query-occlusion", type=float, default=defaults.query_occlusion)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if the folder already holds this dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`pan-reid synth [ROOT | --root ROOT] [options]`: generate, then print a summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.root and args.root_option and args.root != args.root_option:
        parser.error(f"two output folders given: {args.root} and --root {args.root_option}")
    root = args.root or args.root_option or DEFAULT_ROOT
    options = {
        name: getattr(args, name)
        for name in (
            "num_ids", "seed", "num_cameras", "cameras_per_id", "images_per_camera", "queries_per_id",
            "num_distractors", "height", "width", "train_occlusion", "gallery_occlusion", "query_occlusion",
        )
    }
    root = generate(root, overwrite=args.overwrite, progress=not args.quiet, occluded=not args.holistic, **options)
    if not args.quiet:
        from .datasets import build_dataset

        print(build_dataset("synthetic", root).summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
