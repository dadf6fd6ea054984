"""Image transforms: resize, flip, pad + random crop and random erasing for training;
resize and normalisation for testing (torchvision, PIL image -> normalised tensor)."""

from __future__ import annotations

from typing import Sequence

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int = 256,
    width: int = 128,
    is_train: bool = False,
    flip_prob: float = 0.5,
    pad: int = 10,
    erasing_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """The transform of training (is_train=True) or test images, ending in a [3, height, width]
    normalised tensor. Training adds a horizontal flip (flip_prob), `pad` pixels of zero
    padding followed by a random crop back to size (pad=0: none) and random erasing of a
    rectangle with the mean colour (erasing_prob, applied after normalisation so the
    erased value 0 is the mean)."""
    if height < 1 or width < 1:
        raise ValueError(f"build_transforms: height and width must be positive, got {height}x{width}")
    for name, probability in (("flip_prob", flip_prob), ("erasing_prob", erasing_prob)):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"build_transforms: {name} must be in [0, 1], got {probability}")
    if pad < 0:
        raise ValueError(f"build_transforms: pad must be >= 0, got {pad}")
    steps = [T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)]
    if is_train:
        if flip_prob > 0:
            steps.append(T.RandomHorizontalFlip(flip_prob))
        if pad > 0:
            steps += [T.Pad(pad), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if is_train and erasing_prob > 0:
        steps.append(T.RandomErasing(p=erasing_prob, value=0))
    return T.Compose(steps)
