"""Evaluation of trained models: retrieval (features, distances, CMC / mAP / mINP under the
standard protocol), the metrics themselves, and diagnostics of PAN's parts."""

from .retrieval import (
    BLOCK_BYTES,
    REPORTED_RANKS,
    evaluate,
    evaluate_as_configured,
    evaluate_features,
    extract_features,
)

__all__ = [
    "BLOCK_BYTES",
    "REPORTED_RANKS",
    "evaluate",
    "evaluate_as_configured",
    "evaluate_features",
    "extract_features",
]
