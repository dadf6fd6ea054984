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

    pan-reid synth data/synthetic --num-ids 200 --seed 0

render.py draws one image, plan.py decides what images a seed's dataset holds and draws
them, writer.py lays them out on disk.
"""

from ..layout import SYNTHETIC_METADATA_NAME as METADATA_NAME
from ..layout import read_synthetic_metadata as read_metadata
from .plan import ImageSpec, SyntheticConfig, World, plan_images
from .render import OCCLUDER_KINDS, render_image
from .writer import ANNOTATIONS_NAME, generate

__all__ = [
    "ANNOTATIONS_NAME",
    "METADATA_NAME",
    "OCCLUDER_KINDS",
    "ImageSpec",
    "SyntheticConfig",
    "World",
    "generate",
    "plan_images",
    "read_metadata",
    "render_image",
]
