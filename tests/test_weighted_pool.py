"""The contract of pan_ops.weighted_pool (docs/DESIGN.md §2), for every backend
that can run here, against a float64 ground truth on random inputs."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pan_ops
from op_utils import DTYPES, LAYOUTS, check_backend, ground_truth, make_inputs, rel_error, shape_strategies

CUDA = torch.cuda.is_available()


def _backends():
    """(backend, device) pairs; Triton on CPU runs in the (slow) interpreter."""
    pairs = [("reference", "cpu")]
    pairs += [("cpu", "cpu")] if "cpu" in pan_ops.available_backends("cpu") else []
    pairs += [("triton", "cpu")] if "triton" in pan_ops.available_backends("cpu") else []
    if CUDA:
        pairs += [(b, "cuda") for b in pan_ops.available_backends("cuda")]
    return pairs


BACKENDS = _backends()
IDS = [f"{b}-{d}" for b, d in BACKENDS]
FAST_BACKENDS = [(b, d) for b, d in BACKENDS if not (b == "triton" and d == "cpu")]
FAST_IDS = [f"{b}-{d}" for b, d in FAST_BACKENDS]
COMPILED = [(b, d) for b, d in BACKENDS if b != "reference"]
COMPILED_IDS = [f"{b}-{d}" for b, d in COMPILED]

# (B, C, H, W, P): unit sizes, primes, the PAN shape scaled down, the PCB-like 24x8, large P.
SHAPES = [
    (1, 1, 1, 1, 1),
    (2, 3, 5, 7, 1),
    (3, 17, 7, 5, 14),
    (2, 64, 16, 8, 14),
    (2, 7, 24, 8, 6),
    (2, 9, 3, 3, 33),
    (1, 130, 2, 3, 5),
]


def _needs_skip(backend, device, dtype, shape):
    if backend == "triton" and device == "cpu" and math.prod(shape) > 20000:
        pytest.skip("shape too large for Triton's interpreter")


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_backward_matches_float64(backend, device, shape, dtype):
    _needs_skip(backend, device, dtype, shape)
    check_backend(backend, device, shape, dtype, "contiguous")


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layouts(backend, device, layout, dtype):
    shape = (2, 24, 6, 5, 7) if device == "cpu" and backend == "triton" else (3, 67, 16, 8, 14)
    check_backend(backend, device, shape, dtype, layout)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_all_zero_mask_rows(backend, device):
    """A part whose mask is all zero pools to 0 and gets dM = G (the clamp term vanishes)."""
    check_backend(backend, device, (2, 11, 5, 3, 4), torch.float32, "contiguous", zero_parts=(0, 2))
    B, C, H, W, P = 2, 11, 5, 3, 4
    features, masks = make_inputs(B, C, H, W, P, zero_parts=(1,), device=device)
    out = pan_ops.weighted_pool(features, masks, backend=backend)
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("eps", [1e-6, 0.5, 40.0])
def test_eps_clamp(backend, device, eps):
    """Small-magnitude masks make some sums fall below eps: S = eps there, no clamp gradient."""
    B, C, H, W, P = 2, 9, 4, 3, 6
    features, masks = make_inputs(B, C, H, W, P, torch.float64, device)
    scale = torch.tensor([1.0, 1e-3, 0.1, 3.0, 1e-8, 0.02], dtype=torch.float64, device=device)
    masks = (masks * scale.view(1, P, 1, 1)).requires_grad_(True)
    features.requires_grad_(True)
    out = pan_ops.weighted_pool(features, masks, eps=eps, backend=backend)
    grad_out = torch.randn(B, P, C, dtype=torch.float64)
    out.backward(grad_out.to(device))
    ref, ref_df, ref_dm = ground_truth(features, masks, eps, grad_out)
    assert rel_error(out, ref) < 1e-12
    assert rel_error(features.grad, ref_df) < 1e-12
    assert rel_error(masks.grad, ref_dm) < 1e-12


@pytest.mark.parametrize("backend,device", FAST_BACKENDS, ids=FAST_IDS)
def test_gradcheck_float64(backend, device):
    features, masks = make_inputs(2, 5, 3, 4, 3, torch.float64, device, seed=3)
    features.requires_grad_(True)
    masks.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, m: pan_ops.weighted_pool(f, m, backend=backend), (features, masks))


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_empty_batch(backend, device):
    features, masks = make_inputs(0, 5, 3, 4, 3, device=device)
    features.requires_grad_(True)
    masks.requires_grad_(True)
    out = pan_ops.weighted_pool(features, masks, backend=backend)
    assert out.shape == (0, 3, 5)
    out.sum().backward()
    assert features.grad.shape == features.shape and masks.grad.shape == masks.shape


@pytest.mark.parametrize("backend,device", COMPILED, ids=COMPILED_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bitwise_deterministic(backend, device, dtype, layout):
    # C = 300 spans several channel tiles of the CPU kernel, whose partial sums of dM meet
    # in a fixed order whichever thread ran each tile; 3 threads oversubscribe 2 cores.
    # Thread counts mean nothing to Triton's interpreter, which also needs small sizes.
    interpreted = backend == "triton" and device == "cpu"
    C = 40 if interpreted else 300
    features, masks = make_inputs(3, C, 7, 5, 6, dtype, device, layout, seed=7)
    grad = torch.randn(3, 6, C, generator=torch.Generator().manual_seed(8)).to(device=device, dtype=dtype)
    threads_before = torch.get_num_threads()
    results = []
    try:
        for threads in (threads_before,) if interpreted else (1, 2, 3):
            torch.set_num_threads(threads)
            for _ in range(2):
                f, m = features.clone().requires_grad_(True), masks.clone().requires_grad_(True)
                out = pan_ops.weighted_pool(f, m, backend=backend)
                out.backward(grad)
                results.append((out, f.grad, m.grad))
    finally:
        torch.set_num_threads(threads_before)
    for run in results[1:]:
        for a, b in zip(results[0], run):
            assert torch.equal(a, b)


@given(**shape_strategies(), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_hypothesis_shapes(B, C, H, W, P, layout, seed):
    backend = "cuda" if CUDA and "cuda" in pan_ops.available_backends("cuda") else "auto"
    device = "cuda" if backend == "cuda" else "cpu"
    check_backend(backend, device, (B, C, H, W, P), torch.float32, layout, seed=seed)


def test_reference_on_a_case_worked_by_hand():
    """f = [1, 3] and m = [2, -1] over a 1 x 2 map: sum f m = 2 - 3 = -1, sum |m| = 3, so -1/3;
    a second part m = [1e-8, 0] sums to less than eps = 1e-6, which floors its divisor:
    (1 x 1e-8) / 1e-6 = 1e-2; an all-zero third part pools to 0."""
    features = torch.tensor([1.0, 3.0], dtype=torch.float64).reshape(1, 1, 1, 2)
    masks = torch.tensor([[2.0, -1.0], [1e-8, 0.0], [0.0, 0.0]], dtype=torch.float64).reshape(1, 3, 1, 2)
    expected = torch.tensor([-1 / 3, 1e-2, 0.0], dtype=torch.float64).reshape(1, 3, 1)
    for pool in (pan_ops.reference.weighted_pool, pan_ops.reference.weighted_pool_naive):
        torch.testing.assert_close(pool(features, masks, 1e-6), expected, rtol=1e-15, atol=0)


def test_reference_matches_a_loop_over_parts_and_channels():
    """The einsum reference and the broadcast form against sums written out element by element
    in Python floats (a computation shared with neither), on odd sizes with signed masks."""
    features, masks = make_inputs(2, 5, 3, 7, 3, torch.float64)
    B, C, H, W = features.shape
    P = masks.shape[1]
    f, m = features.tolist(), masks.tolist()
    expected = torch.empty(B, P, C, dtype=torch.float64)
    for b in range(B):
        for p in range(P):
            weight = max(sum(abs(m[b][p][y][x]) for y in range(H) for x in range(W)), 1e-6)
            for c in range(C):
                total = sum(f[b][c][y][x] * m[b][p][y][x] for y in range(H) for x in range(W))
                expected[b, p, c] = total / weight
    assert (masks < 0).any() and (masks > 0).any()  # both signs take part
    for pool in (pan_ops.reference.weighted_pool, pan_ops.reference.weighted_pool_naive):
        assert rel_error(pool(features, masks), expected) < 1e-14


def test_module_matches_float64():
    """The nn.Module passes its eps and backend on: eps=0.5 clamps the (all-small) masks' sums."""
    features, masks = make_inputs(2, 13, 5, 3, 4, torch.float64)
    masks = masks * 1e-2
    pool = pan_ops.MaskedWeightedPool(eps=0.5, backend="reference")
    ref, _, _ = ground_truth(features, masks, 0.5)
    assert rel_error(pool(features, masks), ref) < 1e-12
    assert "eps=0.5" in repr(pool) and "backend='reference'" in repr(pool)


def test_available_backends():
    names = pan_ops.available_backends()
    assert "reference" in names
    assert "cpu" in names, f"the C++ CPU kernel is not built: {pan_ops._library.EXTENSION_ERROR}"
    assert set(names) <= set(pan_ops.BACKENDS)
