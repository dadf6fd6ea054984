"""What the op tests share: dtypes, layouts and hypothesis sizes here; inputs and the float64
ground truth in tools/op_check.py (tools/gpu_probe.py checks with them too), imported here."""

import torch
from hypothesis import strategies as st

from tools.op_check import (  # noqa: F401 (re-exported to the tests)
    REL_TOL,
    assert_matches_float64,
    check_backend,
    ground_truth,
    make_inputs,
    rel_error,
)

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last", "strided")


def shape_strategies(max_channels: int = 40, max_parts: int = 20) -> dict:
    """hypothesis strategies for the sizes B, C, H, W, P of make_inputs (unit sizes included)."""
    return dict(
        B=st.integers(1, 3),
        C=st.integers(1, max_channels),
        H=st.integers(1, 9),
        W=st.integers(1, 9),
        P=st.integers(1, max_parts),
    )
