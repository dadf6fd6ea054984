"""Inputs and float64 ground truth of pan_ops.weighted_pool: the op tests (through
tests/op_utils.py) and tools/gpu_probe.py check every backend with these."""

import torch

import pan_ops

# Relative (norm) error allowed against the float64 reference, per input dtype.
REL_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def make_tensor(shape, dtype, device, layout, generator):
    """Random normal values (both signs) in the requested memory layout."""
    b, c, h, w = shape
    if layout == "strided":
        # A view of every other channel and every other column: the innermost dimension of size > 1
        # always has a stride of at least 2, so the view is non-contiguous for any shape with numel > 1.
        base = torch.randn(b, 2 * c, h, 2 * w + 1, generator=generator, dtype=torch.float64)
        t = base.to(device=device, dtype=dtype)[:, ::2, :, 1::2]
        assert t.shape == shape and (not t.is_contiguous() or t.numel() <= 1)
        return t
    t = torch.randn(b, c, h, w, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t


def make_inputs(B, C, H, W, P, dtype=torch.float32, device="cpu", layout="contiguous", seed=0, zero_parts=()):
    g = torch.Generator().manual_seed(seed)
    features = make_tensor((B, C, H, W), dtype, device, layout, g)
    masks = make_tensor((B, P, H, W), dtype, device, layout, g)
    if zero_parts:
        with torch.no_grad():
            masks[:, list(zero_parts)] = 0
    return features, masks


def ground_truth(features, masks, eps, grad_out=None):
    """Literal formula in float64 (broadcast product), with autograd for the gradients."""
    f = features.detach().to(torch.float64).requires_grad_(grad_out is not None)
    m = masks.detach().to(torch.float64).requires_grad_(grad_out is not None)
    norm = m.abs().sum(dim=(2, 3)).clamp_min(eps)
    out = (f.unsqueeze(1) * m.unsqueeze(2)).sum(dim=(3, 4)) / norm.unsqueeze(-1)
    if grad_out is None:
        return out.detach(), None, None
    out.backward(grad_out.to(device=f.device, dtype=torch.float64))
    return out.detach(), f.grad, m.grad


def rel_error(actual, expected, floor=1e-3):
    """||actual - expected|| / max(||expected||, floor): relative error, except where the
    exact answer is (near) zero, e.g. dM at H = W = 1, which cancels to rounding noise."""
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    assert torch.isfinite(actual).all(), "non-finite values in the result"
    return ((actual - expected).norm() / expected.norm().clamp_min(floor)).item()


def grad_masks_scale(features, masks, eps, grad_out):
    """||G|| with G = (g/S) @ F, the first term of dM: the natural scale of dM. Where dM
    cancels to zero (H = W = 1), errors are relative to this."""
    f, m, g = (t.detach().to(torch.float64).cpu() for t in (features, masks, grad_out))
    norm = m.abs().sum(dim=(2, 3)).clamp_min(eps)
    return torch.einsum("bpc,bchw->bphw", g / norm.unsqueeze(-1), f).norm().item()


def assert_matches_float64(features, masks, eps, grad_out, out, grad_features, grad_masks, grad_masks_factor=2):
    """The forward output and both gradients of one forward+backward (upstream gradient
    `grad_out`) within the input dtype's tolerance of the float64 ground truth; dM relative
    to its natural scale, with `grad_masks_factor` times the tolerance."""
    ref, ref_df, ref_dm = ground_truth(features, masks, eps, grad_out)
    tol = REL_TOL[features.dtype]
    assert rel_error(out, ref) < tol, "forward"
    assert rel_error(grad_features, ref_df) < tol, "grad features"
    scale = grad_masks_scale(features, masks, eps, grad_out)
    assert rel_error(grad_masks, ref_dm, floor=scale) < grad_masks_factor * tol, "grad masks"


def check_backend(backend, device, shape, dtype, layout, eps=1e-6, zero_parts=(), seed=0):
    """One forward+backward of pan_ops.weighted_pool on `backend` through autograd, on random
    inputs of `shape` (B, C, H, W, P): output and gradient shapes and dtypes, and the values
    against the float64 ground truth."""
    B, C, H, W, P = shape
    features, masks = make_inputs(B, C, H, W, P, dtype, device, layout, seed=seed, zero_parts=zero_parts)
    features.requires_grad_(True)
    masks.requires_grad_(True)
    out = pan_ops.weighted_pool(features, masks, eps=eps, backend=backend)
    assert out.shape == (B, P, C) and out.dtype == dtype and out.device == features.device
    grad_out = torch.randn(B, P, C, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    out.backward(grad_out.to(device=device, dtype=dtype))
    assert features.grad.shape == features.shape and masks.grad.shape == masks.shape
    assert features.grad.dtype == dtype and masks.grad.dtype == dtype
    assert_matches_float64(features, masks, eps, grad_out, out, features.grad, masks.grad)
