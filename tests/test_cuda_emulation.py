"""The CUDA kernels, run on the CPU: tests/cuda_emulation compiles csrc/cuda's kernels and the
op's launch planning with a host emulation of CUDA threads, barriers and warp shuffles, so the
kernel code the GPU runs is checked against the float64 reference on every machine, GPU or not.
It shows indexing, tiling, layout, tier and reduction-order bugs; it cannot show what only
hardware shows (the memory model beyond barriers, register limits, speed)."""

import hashlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_utils import DTYPES, LAYOUTS, assert_matches_float64, ground_truth, make_inputs, shape_strategies

REPO = Path(__file__).resolve().parent.parent
EMULATOR = Path(__file__).resolve().parent / "cuda_emulation" / "emulator.cpp"
KERNEL_SOURCES = [EMULATOR, *sorted((REPO / "csrc" / "cuda").glob("*.cuh")), REPO / "csrc" / "weighted_pool.h"]


@pytest.fixture(scope="module")
def emulated():
    from torch.utils.cpp_extension import load

    # The name carries a digest of every source: torch's build cache does not see included headers.
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in KERNEL_SOURCES)).hexdigest()[:12]
    build = REPO / "build" / "cuda_emulation" / digest
    build.mkdir(parents=True, exist_ok=True)
    return load(
        name=f"pan_cuda_emulation_{digest}",
        sources=[str(EMULATOR)],
        extra_include_paths=[str(REPO / "csrc"), str(REPO / "csrc" / "cuda")],
        extra_cflags=["-std=c++20", "-O1"],
        build_directory=str(build),
    )


def _check(emulated, features, masks, eps=1e-6, multiprocessors=2, seed=0):
    """Forward and backward against the float64 reference; returns the three results."""
    B, P, C = features.shape[0], masks.shape[1], features.shape[1]
    grad = torch.randn(B, P, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grad = grad.to(features.dtype)
    out = emulated.forward(features, masks, eps, multiprocessors)
    grad_features, grad_masks = emulated.backward(grad, features, masks, eps, multiprocessors)
    assert out.shape == (B, P, C) and out.dtype == features.dtype
    assert grad_features.shape == features.shape and grad_masks.shape == masks.shape
    assert_matches_float64(features, masks, eps, grad, out, grad_features, grad_masks, grad_masks_factor=1)
    return out, grad_features, grad_masks


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_and_layout_matches_float64(emulated, dtype, layout):
    _check(emulated, *make_inputs(2, 37, 5, 7, 5, dtype, layout=layout, seed=1))


@pytest.mark.parametrize(
    "dtype,parts",
    [(torch.float32, 1), (torch.float32, 9), (torch.float32, 17), (torch.float32, 33), (torch.float64, 9),
     (torch.bfloat16, 33)],
    ids=str,
)  # fmt: skip
def test_part_tiers_and_part_chunks(emulated, dtype, parts):
    """Tiers of 8, 16 and 32 parts (double: 8); beyond the largest, chunks of it."""
    for layout in ("contiguous", "channels_last"):
        _check(emulated, *make_inputs(2, 19, 3, 5, parts, dtype, layout=layout, seed=parts))


@pytest.mark.parametrize("multiprocessors", [1, 3, 40])
def test_channel_tiles_split_over_any_number_of_ctas(emulated, multiprocessors):
    """Few SMs: several channel tiles per CTA, their count not dividing the tiles (1,201
    channels are 5 forward tiles of 256); many: several CTAs per sample (and G partials)."""
    for layout in ("contiguous", "channels_last"):
        _check(emulated, *make_inputs(1, 1201, 3, 3, 6, layout=layout, seed=2), multiprocessors=multiprocessors)


def test_large_maps_stage_the_masks_in_tiles(emulated):
    """More positions than one shared-memory tile of masks holds (1,089 here)."""
    _check(emulated, *make_inputs(1, 3, 33, 33, 5, seed=3))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_unaligned_storage_takes_the_scalar_path(emulated, layout):
    """A storage offset of one element rules out 16-byte loads; the scalar path must agree."""
    features, masks = make_inputs(2, 16, 4, 8, 5, layout=layout, seed=4)
    shifted = torch.empty(features.numel() + 1, dtype=features.dtype)[1:]
    if layout == "channels_last":
        shifted = shifted.view(2, 4, 8, 16).permute(0, 3, 1, 2)
    else:
        shifted = shifted.view(features.shape)
    shifted.copy_(features)
    assert shifted.data_ptr() % 16 != 0
    aligned = _check(emulated, features, masks)
    unaligned = _check(emulated, shifted, masks)
    for a, b in zip(aligned, unaligned):
        assert (a.double() - b.double()).abs().max() < 1e-5


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_zero_masks_and_the_eps_clamp(emulated, eps):
    features, masks = make_inputs(2, 11, 5, 3, 6, torch.float64, seed=5, zero_parts=(0, 3))
    masks = masks * torch.tensor([1.0, 1e-3, 0.1, 1.0, 1e-8, 0.02], dtype=torch.float64).view(1, 6, 1, 1)
    out, _, _ = _check(emulated, features, masks, eps=eps)
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (3, 2, 1, 1, 4), (2, 1, 7, 1, 3)], ids=str)
def test_degenerate_sizes(emulated, shape):
    _check(emulated, *make_inputs(*shape, seed=6))


def test_empty_inputs_give_empty_or_zero_results(emulated):
    features, masks = make_inputs(2, 5, 0, 3, 4)
    assert torch.equal(emulated.forward(features, masks, 1e-6, 2), torch.zeros(2, 4, 5))
    features, masks = make_inputs(0, 5, 2, 3, 4)
    assert emulated.forward(features, masks, 1e-6, 2).shape == (0, 4, 5)


@given(
    **shape_strategies(max_channels=70, max_parts=40),  # beyond 32 parts: chunks
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    multiprocessors=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=25, deadline=None)
def test_hypothesis_shapes(emulated, B, C, H, W, P, dtype, layout, multiprocessors, seed):
    _check(emulated, *make_inputs(B, C, H, W, P, dtype, layout=layout, seed=seed), multiprocessors=multiprocessors)


def test_bitwise_deterministic(emulated):
    features, masks = make_inputs(2, 131, 4, 5, 14, torch.bfloat16, seed=7)
    first = _check(emulated, features, masks, multiprocessors=5)
    second = _check(emulated, features, masks, multiprocessors=5)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("parts", [5, 40])
def test_half_precision_grad_features_is_rounded_once(emulated, dtype, parts):
    """dF accumulates in float over every part and is rounded to the input type once, also
    when the parts run in several chunks (more than 32): then nearly every element equals the
    float64 reference rounded to that type (a second rounding would change about a third)."""
    features, masks = make_inputs(2, 24, 4, 4, parts, dtype, seed=8)
    grad = torch.randn(2, parts, 24, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(dtype)
    grad_features, _ = emulated.backward(grad, features, masks, 1e-6, 2)
    _, ref_df, _ = ground_truth(features, masks, 1e-6, grad)
    mismatched = (grad_features != ref_df.to(dtype)).double().mean().item()
    assert mismatched < 0.01
