"""How different are a trained PAN's part masks? Loads a checkpoint, computes the P masks of
every query image of its dataset and prints the mean absolute correlation between different
masks (per image, over the mask's positions, then averaged over images) and how much of the
mean correlation matrix its leading eigenvalues hold. Fourteen distinct parts give small
correlations and a flat spectrum; masks that collapsed onto one pattern give |corr| near 1.

    python benchmarks/mask_diversity.py runs/demo/model_best.pt
"""

from __future__ import annotations

import argparse

import torch

from pan_model.engine import load_model
from pan_model.engine.loaders import build_test_loader, prepare_dataset
from pan_model.losses import mask_correlations
from pan_model.models import get_masks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a PAN checkpoint (model_best.pt or checkpoint_last.pt)")
    args = parser.parse_args(argv)

    model, config = load_model(args.checkpoint)
    queries = build_test_loader(config, prepare_dataset(config).query)
    masks = torch.cat([get_masks(model, images) for images, *_ in queries])
    corr = mask_correlations(masks.double()).mean(0)  # [P, P], averaged over the images
    parts = corr.shape[0]
    between = corr[~torch.eye(parts, dtype=torch.bool)].abs()
    spectrum = torch.linalg.eigvalsh(corr).flip(0)
    spectrum = spectrum / spectrum.sum()
    print(f"{masks.shape[0]} query images, masks {tuple(masks.shape[1:])}")
    above = (between > 0.9).float().mean()
    print(f"mean |correlation| between different masks: {between.mean():.3f} (pairs above 0.9: {above:.0%})")
    print("share of the leading eigenvalues: " + ", ".join(f"{v:.3f}" for v in spectrum[:5].tolist()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
