"""Text tables of scores and costs, as the CLI and the demo print them."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

TABLE_SCORES = (("Rank-1", "rank1"), ("Rank-5", "rank5"), ("mAP", "mAP"), ("mINP", "mINP"))


def scores_table(rows: Mapping[str, Mapping]) -> str:
    """A Markdown table, one row per named score dict (fractions, shown as percentages; "-"
    for a score a row lacks)."""
    lines = ["| model | " + " | ".join(label for label, _ in TABLE_SCORES) + " |"]
    lines.append("| --- |" + " ---: |" * len(TABLE_SCORES))
    for name, scores in rows.items():
        cells = [f"{100 * scores[key]:.1f}" if key in scores else "-" for _, key in TABLE_SCORES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(title: str, cost: Mapping, num_classes: int, feature_dim: int) -> str:
    """profile_model's counts, in millions and billions."""
    return "\n".join(
        [
            f"{title}:",
            f"  parameters (inference)      {cost['params'] / 1e6:8.2f} M",
            f"  parameters (+ classifiers)  {cost['params_with_classifiers'] / 1e6:8.2f} M  ({num_classes} identities)",
            f"  MACs per image              {cost['macs'] / 1e9:8.2f} G",
            f"  FLOPs per image             {cost['flops'] / 1e9:8.2f} G",
            f"  retrieval feature           {feature_dim} dims",
        ]
    )


def chance_rank1(query: Sequence, gallery: Sequence) -> float:
    """Expected Rank-1 of a random ranking under the protocol: the mean, over queries with a
    match, of (matches / gallery items left after dropping same identity + same camera)."""
    gallery_pids = np.array([pid for _, pid, _ in gallery])
    gallery_cams = np.array([cam for _, _, cam in gallery])
    rates = []
    for _, pid, cam in query:
        kept = ~((gallery_pids == pid) & (gallery_cams == cam))
        matches = int((gallery_pids[kept] == pid).sum())
        if matches:
            rates.append(matches / int(kept.sum()))
    return float(np.mean(rates))
