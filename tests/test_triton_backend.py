"""The Triton backend (pan_ops/triton_kernels.py) against a float64 ground truth.

Without a GPU the kernels run in Triton's interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1), so the shapes stay small and odd;
they still span several channel tiles and HW chunks of the interpreter's tile
sizes. Checks that need compiled kernels (torch.compile, opcheck, autotuning)
run only on a GPU.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pan_ops
from op_utils import REL_TOL, ground_truth, make_inputs, rel_error
from pan_ops import triton_kernels

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(not triton_kernels.AVAILABLE, reason="triton is not installed")
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _pool_and_grads(features, masks, grad_out, eps=1e-6):
    f = features.detach().clone().requires_grad_(True)
    m = masks.detach().clone().requires_grad_(True)
    out = pan_ops.weighted_pool(f, m, eps=eps, backend="triton")
    out.backward(grad_out)
    return out, f.grad, m.grad


def _assert_matches_float64(features, masks, eps=1e-6, tol=None, seed=1):
    B, C = features.shape[:2]
    P = masks.shape[1]
    grad_out = torch.randn(B, P, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(DEVICE)
    out, grad_f, grad_m = _pool_and_grads(features, masks, grad_out.to(features), eps)
    assert out.shape == (B, P, C) and out.dtype == features.dtype and out.device == features.device
    assert grad_f.stride() == torch.empty_like(features).stride()  # the layout the fake kernel promises
    assert grad_m.stride() == torch.empty_like(masks).stride()
    ref, ref_f, ref_m = ground_truth(features, masks, eps, grad_out)
    tol = REL_TOL[features.dtype] if tol is None else tol
    assert rel_error(out, ref) < tol, "forward"
    assert rel_error(grad_f, ref_f) < tol, "grad features"
    assert rel_error(grad_m, ref_m) < 2 * tol, "grad masks"


# (B, C, H, W, P), dtype, layout. C > 16 spans channel tiles and HW > 16 spans
# HW chunks of the interpreter's tile sizes; P=17 pads to 32 rows.
CASES = [
    ((2, 3, 5, 7, 1), torch.float32, "contiguous"),
    ((2, 19, 5, 7, 17), torch.float32, "channels_last"),
    ((3, 1, 2, 3, 14), torch.float32, "contiguous"),
    ((1, 5, 1, 13, 3), torch.float32, "strided"),
    ((2, 37, 3, 11, 5), torch.float64, "strided"),
    ((2, 23, 6, 4, 6), torch.float64, "channels_last"),
    ((2, 21, 5, 3, 7), torch.float16, "contiguous"),
    ((2, 21, 5, 3, 7), torch.bfloat16, "channels_last"),
    ((1, 17, 9, 2, 2), torch.bfloat16, "strided"),
]


@pytest.mark.parametrize("shape,dtype,layout", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_matches_float64(shape, dtype, layout):
    B, C, H, W, P = shape
    features, masks = make_inputs(B, C, H, W, P, dtype, DEVICE, layout, seed=sum(shape))
    _assert_matches_float64(features, masks)


@pytest.mark.parametrize(
    "parts,dtype,block_c,block_hw", [(20, torch.float32, 32, 64), (40, torch.float32, 16, 32), (20, torch.float64, 16, 64)]
)
def test_tiles_shrink_with_the_part_count(monkeypatch, parts, dtype, block_c, block_hw):
    """The host halves the backward's channel tile and the forward's HW chunk as P_PAD (and the
    accumulator width) grow; the kernels and the partials' reduction follow those sizes. The
    interpreter's largest tiles are raised here so that the shrinking happens at test sizes."""
    monkeypatch.setattr(triton_kernels, "BACKWARD_BLOCK_C", 64)
    monkeypatch.setattr(triton_kernels, "MAX_BLOCK_HW", 64)
    p_pad = triton_kernels._padded_parts(parts)
    assert triton_kernels._backward_block_c(p_pad, dtype) == block_c  # 64 halved per doubling past 16 x 4 bytes
    assert triton_kernels._forward_block_hw(200, p_pad) == block_hw  # 64 halved per doubling past 32
    features, masks = make_inputs(2, 2 * block_c + 3, 10, 20, parts, dtype, DEVICE, seed=parts)
    _assert_matches_float64(features, masks)


def test_single_pixel():
    """HW = 1: f = F * sign(M) and dM = 0 exactly in real arithmetic (so only rounding remains)."""
    features, masks = make_inputs(3, 20, 1, 1, 5, torch.float32, DEVICE, seed=11)
    grad_out = torch.randn(3, 5, 20, generator=torch.Generator().manual_seed(12)).to(DEVICE)
    out, grad_f, grad_m = _pool_and_grads(features, masks, grad_out)
    ref, ref_f, _ = ground_truth(features, masks, 1e-6, grad_out.double())
    assert rel_error(out, ref) < REL_TOL[torch.float32]
    assert rel_error(grad_f, ref_f) < REL_TOL[torch.float32]
    assert grad_m.abs().max() < 1e-5 * grad_out.abs().sum(dim=2).max() * features.abs().max() / masks.abs().min()


def test_mixed_layouts_and_broadcast_grad():
    """channels_last features with NCHW masks, and the zero-stride grad of out.sum()."""
    features, _ = make_inputs(2, 18, 4, 5, 3, torch.float32, DEVICE, "channels_last", seed=2)
    _, masks = make_inputs(2, 18, 4, 5, 3, torch.float32, DEVICE, "contiguous", seed=3)
    _assert_matches_float64(features, masks)
    f, m = features.clone().requires_grad_(True), masks.clone().requires_grad_(True)
    pan_ops.weighted_pool(f, m, backend="triton").sum().backward()
    _, ref_f, ref_m = ground_truth(features, masks, 1e-6, torch.ones(2, 3, 18, dtype=torch.float64, device=DEVICE))
    assert rel_error(f.grad, ref_f) < REL_TOL[torch.float32]
    assert rel_error(m.grad, ref_m) < 2 * REL_TOL[torch.float32]


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_zero_mask_rows_and_eps_clamp(eps):
    """Parts whose |M| sum is 0 or below eps: S = eps there and the clamp passes no gradient."""
    B, C, H, W, P = 2, 20, 4, 5, 6
    features, masks = make_inputs(B, C, H, W, P, torch.float64, DEVICE, seed=4, zero_parts=(2,))
    scale = torch.tensor([1.0, 1e-3, 1.0, 3.0, 1e-8, 0.02], dtype=torch.float64, device=DEVICE)
    _assert_matches_float64(features, masks * scale.view(1, P, 1, 1), eps=eps, tol=1e-12)
    out = pan_ops.weighted_pool(features, masks, eps=eps, backend="triton")
    assert torch.equal(out[:, 2], torch.zeros_like(out[:, 2]))


def test_empty_batch():
    features, masks = make_inputs(0, 5, 3, 4, 3, torch.float32, DEVICE)
    out, grad_f, grad_m = _pool_and_grads(features, masks, torch.ones(0, 3, 5, device=DEVICE))
    assert out.shape == (0, 3, 5)
    assert grad_f.shape == features.shape and grad_m.shape == masks.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bitwise_deterministic(dtype):
    features, masks = make_inputs(2, 35, 4, 5, 5, dtype, DEVICE, seed=5)
    grad_out = torch.randn(2, 5, 35, generator=torch.Generator().manual_seed(6)).to(features)
    first = _pool_and_grads(features, masks, grad_out)
    second = _pool_and_grads(features, masks, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_gradcheck_float64():
    features, masks = make_inputs(1, 3, 2, 3, 2, torch.float64, DEVICE, seed=7)
    inputs = (features.requires_grad_(True), masks.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda f, m: pan_ops.weighted_pool(f, m, backend="triton"), inputs, fast_mode=True)


def test_flop_counter_counts_forward_and_backward():
    B, C, H, W, P = 2, 7, 3, 4, 5
    features, masks = make_inputs(B, C, H, W, P, torch.float32, DEVICE)
    features.requires_grad_(True)
    forward = 2 * B * P * C * H * W
    with FlopCounterMode(display=False) as counter:
        pan_ops.weighted_pool(features, masks, backend="triton").sum().backward()
    assert counter.get_total_flops() == 3 * forward


def test_backward_rejects_a_mismatched_grad():
    features, masks = make_inputs(2, 4, 3, 3, 5, torch.float32, DEVICE)
    grad = torch.ones(2, 4, 5, device=DEVICE)
    with pytest.raises(ValueError, match=r"grad must have shape \[B,P,C\] = \[2, 5, 4\]"):
        torch.ops.pan_ops._weighted_pool_backward(grad, features, masks, 1e-6, "triton")


def test_one_op_serves_triton(monkeypatch):
    """backend="triton" is an argument of the one op, not a second op: a direct op call runs
    the Triton kernels (counted) and matches float64; on CUDA tensors "auto" runs them too."""
    assert not hasattr(torch.ops.pan_ops, "weighted_pool_triton")
    launches = []
    launch_forward = triton_kernels.forward
    monkeypatch.setattr(triton_kernels, "forward", lambda *args: launches.append(1) or launch_forward(*args))
    features, masks = make_inputs(2, 19, 5, 3, 4, torch.float32, DEVICE, seed=3)
    direct = torch.ops.pan_ops.weighted_pool(features, masks, 1e-6, "triton")
    assert launches == [1]
    assert rel_error(direct, ground_truth(features, masks, 1e-6)[0]) < REL_TOL[torch.float32]
    pan_ops.weighted_pool(features, masks)
    assert launches == ([1, 1] if CUDA else [1])  # CPU tensors: "auto" is the C++ kernel


@needs_gpu
def test_opcheck():
    features, masks = make_inputs(2, 70, 5, 3, 4, torch.float32, "cuda", "channels_last", seed=8)
    grad = torch.randn(2, 4, 70, device="cuda")
    op = torch.ops.pan_ops
    torch.library.opcheck(op.weighted_pool.default, (features.requires_grad_(True), masks, 1e-6, "triton"))
    torch.library.opcheck(op._weighted_pool_backward.default, (grad, features.detach(), masks, 1e-6, "triton"))


@needs_gpu
def test_torch_compile_fullgraph_forward_backward():
    torch._dynamo.reset()
    features, masks = make_inputs(3, 67, 6, 5, 7, torch.float32, "cuda", seed=9)

    @torch.compile(fullgraph=True)
    def loss(f, m):
        return (pan_ops.weighted_pool(f, m, backend="triton") * 2).square().sum()

    f, m = features.clone().requires_grad_(True), masks.clone().requires_grad_(True)
    loss(f, m).backward()
    fe, me = features.clone().requires_grad_(True), masks.clone().requires_grad_(True)
    (pan_ops.weighted_pool(fe, me, backend="triton") * 2).square().sum().backward()
    torch.testing.assert_close(f.grad, fe.grad)
    torch.testing.assert_close(m.grad, me.grad)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autotuned_kernels_at_the_pan_shape(dtype):
    """The PAN shape (C=2048, 16x8, P=14) runs whichever configs autotuning picks."""
    if triton_kernels.AUTOTUNE:
        assert len(triton_kernels._forward_kernel.configs) > 1
    features, masks = make_inputs(4, 2048, 16, 8, 14, dtype, "cuda", seed=10)
    _assert_matches_float64(features, masks)
