"""What a trained PAN (or PCB) checkpoint's local branch learned, on its dataset's queries:
are the P masks distinct parts or one map many times over, is each part feature more than
global average pooling, and what does each slice of the retrieval feature score on its own?
(pan_model.evaluation.diagnostics defines every figure.)

    python -m experiments.mask_diversity runs/demo/model_best.pt [more checkpoints ...]
"""

from __future__ import annotations

import argparse
import json

from pan_model.engine import load_model
from pan_model.engine.loaders import build_test_loaders
from pan_model.evaluation.diagnostics import part_diagnostics


def describe(stats: dict) -> str:
    lines = []
    if "mean_abs_corr" in stats:
        lines += [
            f"mean |correlation| between different masks: {stats['mean_abs_corr']:.3f} "
            f"(leading eigenvalue holds {stats['leading_eigenvalue']:.1%})",
            f"mean overlap of |masks| (uncentred): {stats['mean_overlap']:.3f}",
            f"constant component's share of a mask's energy: {stats['constant_share']:.1%} "
            f"(contrast {1 - stats['constant_share']:.1%}); single-signed masks: {stats['single_signed']:.0%}; "
            f"negative masks: {stats['negative_share']:.0%}",
            "pooling weight |m| / mean |m| by position (mean over queries and masks; 1 = uniform):",
            *("  " + " ".join(f"{value:5.2f}" for value in row) for row in stats["weight_map"]),
        ]
    if "cos_part_gap" in stats:
        lines.append(f"cosine(part feature, GAP of the same map): {stats['cos_part_gap']:.3f}")
    scores = stats["slice_scores"]
    cells = [f"{name} {100 * value['rank1']:.1f}" for name, value in scores.items()]
    lines.append("Rank-1 (%) by slice of f_cat: " + ", ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="PAN or PCB checkpoints (model_best.pt or checkpoint_last.pt)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    for path in args.checkpoints:
        model, config = load_model(path)
        _, queries, gallery = build_test_loaders(config)
        stats = part_diagnostics(model, queries, gallery)
        print(json.dumps({"checkpoint": path, **stats}) if args.json else f"{path}\n{describe(stats)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
