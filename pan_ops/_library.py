"""How PyTorch knows the op (docs/DESIGN.md §3).

The compiled library pan_ops._C defines the schema of the one public op,
torch.ops.pan_ops.weighted_pool(features, masks, eps=DEFAULT_EPS, backend="auto"), and of its
private backward, torch.ops.pan_ops._weighted_pool_backward; it registers the C++ CPU and
CUDA kernels and the autocast rule. This module registers the rest, once each: the fake
kernels, the autograd formula, the FLOP formulas, and the Triton kernels on their
dispatch keys.
"""

import torch
from torch.utils.flop_counter import register_flop_formula

from . import triton_kernels
from ._validation import check_grad, check_inputs
from .reference import DEFAULT_EPS


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


# Dispatch keys the compiled library has kernels for, read once and before the Triton
# kernels take their place on the keys: torch.compile cannot trace the dispatcher query.
COMPILED_KEYS = frozenset(
    key
    for key in ("CPU", "CUDA")
    if HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("pan_ops::weighted_pool", key)
)


def has_kernel(dispatch_key: str) -> bool:
    """True when the compiled library registered a kernel for this dispatch key."""
    return dispatch_key in COMPILED_KEYS


def runs_triton(device: torch.device, backend: str) -> bool:
    """The one rule for which kernel serves a call, given that Triton is usable: Triton when
    asked for, and for backend="auto" on CUDA tensors (it is the GPU path measured and
    tested on a GPU so far, benchmarks/RESULTS.md); the compiled kernel of the device
    otherwise."""
    return backend == "triton" or (backend == "auto" and device.type == "cuda")


def pool_flops(features_shape, masks_shape) -> int:
    """Multiply-adds of the pooling counted as 2 FLOPs, as flop_counter counts matmuls."""
    b, c, h, w = features_shape
    return 2 * b * masks_shape[1] * c * h * w


def _save_for_backward(ctx, features, masks, eps=DEFAULT_EPS, backend="auto"):
    ctx.save_for_backward(features, masks)
    ctx.eps, ctx.backend = eps, backend


def setup_context(ctx, inputs, output):
    """Autograd context of the op and of pan_ops.WeightedPool (which may be applied to
    fewer arguments than the schema has)."""
    _save_for_backward(ctx, *inputs)


def backward(ctx, grad):
    """dL/dfeatures and dL/dmasks from the private backward op, on the forward's backend; None
    for an input that needs no gradient (the fused kernels compute both in one pass, so the
    saving is the memory the unneeded one would hold)."""
    features, masks = ctx.saved_tensors
    grad_features, grad_masks = torch.ops.pan_ops._weighted_pool_backward(grad, features, masks, ctx.eps, ctx.backend)
    needs_features, needs_masks = ctx.needs_input_grad[:2]
    return grad_features if needs_features else None, grad_masks if needs_masks else None, None, None


def _no_double_backward(ctx, grad_features, grad_masks):
    raise NotImplementedError(
        "weighted_pool: second derivatives are not implemented (backward of the backward, "
        "e.g. torch.autograd.grad(..., create_graph=True) followed by another backward)"
    )


def _register_fakes() -> None:
    """Shape-only kernels for FakeTensor tracing (torch.compile, export); they check the
    inputs, so that a bad call fails at trace time with the kernels' message."""

    @torch.library.register_fake("pan_ops::weighted_pool")
    def _(features, masks, eps=DEFAULT_EPS, backend="auto"):
        check_inputs(features, masks, eps)
        return features.new_empty((features.shape[0], masks.shape[1], features.shape[1]))

    @torch.library.register_fake("pan_ops::_weighted_pool_backward")
    def _(grad, features, masks, eps, backend="auto"):
        check_inputs(features, masks, eps)
        check_grad(grad, features, masks)
        return torch.empty_like(features), torch.empty_like(masks)


def _register_flops() -> None:
    @register_flop_formula(torch.ops.pan_ops.weighted_pool)
    def _(features_shape, masks_shape, *args, **kwargs):
        return pool_flops(features_shape, masks_shape)

    # Backward: G = (g/S) @ F and dF = (g/S)^T @ M, two products of forward size.
    @register_flop_formula(torch.ops.pan_ops._weighted_pool_backward)
    def _(grad_shape, features_shape, masks_shape, *args, **kwargs):
        return 2 * pool_flops(features_shape, masks_shape)


def _compiled_or_missing(name: str, key: str):
    """The compiled kernel of op `name` for `key`, to call where Triton does not serve the
    call; where this build has none, a kernel that says so."""
    if has_kernel(key):
        return torch.library.get_kernel(f"pan_ops::{name}", key).call_boxed

    def missing(keyset, *args):
        raise RuntimeError(
            f"weighted_pool: this build of pan_ops has no compiled {key} kernel (it was built without "
            f"{key}); backend='triton' runs on {key.lower()} tensors"
        )

    return missing


# Kept alive for the life of the process: the registrations end when it is destroyed.
_TRITON_LIBRARY = None


def _register_triton() -> None:
    """The Triton kernels as the op's implementation on the CUDA key (and on the CPU key
    under Triton's interpreter), in front of the compiled kernel they hand the other
    backends to."""
    global _TRITON_LIBRARY
    _TRITON_LIBRARY = torch.library.Library("pan_ops", "IMPL")
    keys = ["CUDA"] + (["CPU"] if triton_kernels.INTERPRET else [])
    for key in keys:
        compiled_forward = _compiled_or_missing("weighted_pool", key)
        compiled_backward = _compiled_or_missing("_weighted_pool_backward", key)

        def forward(keyset, features, masks, eps=DEFAULT_EPS, backend="auto", compiled=compiled_forward):
            if not runs_triton(features.device, backend):
                return compiled(keyset, features, masks, eps, backend)
            check_inputs(features, masks, eps)
            return triton_kernels.forward(features, masks, eps)

        def backward_kernel(keyset, grad, features, masks, eps, backend="auto", compiled=compiled_backward):
            if not runs_triton(features.device, backend):
                return compiled(keyset, grad, features, masks, eps, backend)
            check_inputs(features, masks, eps)
            check_grad(grad, features, masks)
            return triton_kernels.backward(grad, features, masks, eps)

        _TRITON_LIBRARY.impl("weighted_pool", forward, key, with_keyset=True)
        _TRITON_LIBRARY.impl("_weighted_pool_backward", backward_kernel, key, with_keyset=True)


HAS_TRITON = HAS_EXTENSION and triton_kernels.AVAILABLE and hasattr(torch.library, "get_kernel")

if HAS_EXTENSION:
    _register_fakes()
    _register_flops()
    torch.library.register_autograd("pan_ops::weighted_pool", backward, setup_context=setup_context)
    # Without a formula autograd would only warn and hand back no gradient.
    torch.library.register_autograd(
        "pan_ops::_weighted_pool_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None
    )
if HAS_TRITON:
    _register_triton()
