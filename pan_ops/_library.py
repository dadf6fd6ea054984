"""Loads the compiled kernels (pan_ops._C) and teaches PyTorch the rest of the op:
fake kernels for tracing, autograd, and the FLOP formula for
torch.utils.flop_counter. The schema and autocast rule live in
csrc/weighted_pool.cpp; device kernels in csrc/cpu and csrc/cuda."""

import torch
from torch.utils.flop_counter import register_flop_formula


def _schema_registered() -> bool:
    return hasattr(torch.ops.pan_ops, "weighted_pool")


EXTENSION_ERROR = None
# The library may already be loaded by other means: torch.ops.load_library on the
# CMake build, or a development build from torch.utils.cpp_extension.load. A
# namespace can be defined only once, so then the packaged _C is not loaded.
if not _schema_registered():
    try:
        from . import _C  # noqa: F401  (registers torch.ops.pan_ops.*)
    except ImportError as exc:  # a source checkout that was not built
        EXTENSION_ERROR = exc

HAS_EXTENSION = _schema_registered()


# Dispatch keys the compiled library has kernels for, read once: torch.compile cannot
# trace the dispatcher query, and the answer does not change after loading.
KERNEL_KEYS = frozenset(
    key
    for key in ("CPU", "CUDA")
    if HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("pan_ops::weighted_pool", key)
)


def has_kernel(dispatch_key: str) -> bool:
    """True when the compiled library registered a kernel for this dispatch key."""
    return dispatch_key in KERNEL_KEYS


def pool_flops(features_shape, masks_shape) -> int:
    """Multiply-adds of the pooling counted as 2 FLOPs, as flop_counter counts matmuls."""
    b, c, h, w = features_shape
    return 2 * b * masks_shape[1] * c * h * w


def setup_context(ctx, inputs, output):
    features, masks, eps = inputs
    ctx.save_for_backward(features, masks)
    ctx.eps = eps


def register_flops(forward_op, backward_op) -> None:
    """FLOP formulas for torch.utils.flop_counter, shared by the C++ and Triton ops."""

    @register_flop_formula(forward_op)
    def _(features_shape, masks_shape, *args, **kwargs):
        return pool_flops(features_shape, masks_shape)

    # Backward: G = (g/S) @ F and dF = (g/S)^T @ M, two products of forward size.
    @register_flop_formula(backward_op)
    def _(grad_shape, features_shape, masks_shape, *args, **kwargs):
        return 2 * pool_flops(features_shape, masks_shape)


def register_fakes() -> None:
    """Shape-only kernels of the C++ ops, for FakeTensor tracing (torch.compile, export)."""

    @torch.library.register_fake("pan_ops::weighted_pool")
    def _(features, masks, eps=1e-6):
        return features.new_empty((features.shape[0], masks.shape[1], features.shape[1]))

    @torch.library.register_fake("pan_ops::weighted_pool_backward")
    def _(grad, features, masks, eps):
        return torch.empty_like(features), torch.empty_like(masks)


def backward(ctx, grad):
    features, masks = ctx.saved_tensors
    grad_features, grad_masks = torch.ops.pan_ops.weighted_pool_backward(grad, features, masks, ctx.eps)
    return grad_features, grad_masks, None


if HAS_EXTENSION:
    register_fakes()
    register_flops(torch.ops.pan_ops.weighted_pool, torch.ops.pan_ops.weighted_pool_backward)
    torch.library.register_autograd("pan_ops::weighted_pool", backward, setup_context=setup_context)
