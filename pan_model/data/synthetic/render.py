"""Drawing one image of the synthetic dataset: a pedestrian (identity and pose) seen by a
camera (scene, lighting, framing), optionally behind an occluder, as a PIL image.

Everything random comes from the generators the caller passes in (see plan.py for which
stream drives what), so the same generators give the same pixels. No file IO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
