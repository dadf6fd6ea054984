"""Input checks of the op's Python-side kernels (Triton, fake) and of the reference
backend. The compiled kernels make the same checks, with the same messages, in
csrc/weighted_pool.cpp; every call is checked once, by the kernel that serves it.

The backend names are checked here, for every Python entry point (pan_ops.weighted_pool,
WeightedPool, MaskedWeightedPool, force_backend, PAN's pool_backend); the compiled op
rejects a name it cannot serve itself only for callers of torch.ops.pan_ops.weighted_pool."""

import torch

# "auto" lets the op choose the kernel by the tensors' device (docs/DESIGN.md §3); the
# others are explicit overrides, "reference" the pure-PyTorch formula outside the op.
BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_backend(backend: str, argument: str = "backend") -> str:
    """`backend` if it is one of BACKENDS, else a ValueError naming `argument`."""
    if backend not in BACKENDS:
        raise ValueError(f"weighted_pool: {argument} must be one of {BACKENDS}, got {backend!r}")
    return backend


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def check_inputs(features: torch.Tensor, masks: torch.Tensor, eps: float) -> None:
    for name, t in (("features", features), ("masks", masks)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"weighted_pool: {name} must be a torch.Tensor, got {type(t).__name__}")
    if features.dim() != 4:
        raise ValueError(f"weighted_pool: features must be 4-D [B,C,H,W], got shape {_shape(features)}")
    if masks.dim() != 4:
        raise ValueError(f"weighted_pool: masks must be 4-D [B,P,H,W], got shape {_shape(masks)}")
    if features.shape[0] != masks.shape[0]:
        raise ValueError(
            "weighted_pool: features and masks must have the same batch size, got features "
            f"{_shape(features)} and masks {_shape(masks)}"
        )
    if features.shape[2:] != masks.shape[2:]:
        raise ValueError(
            "weighted_pool: features and masks must have the same spatial size (H, W), got features "
            f"{_shape(features)} and masks {_shape(masks)}"
        )
    for name, t in (("features", features), ("masks", masks)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"weighted_pool: {name} must be float16, bfloat16, float32 or float64, got {t.dtype} "
                f"({name} shape {_shape(t)})"
            )
    if features.dtype != masks.dtype:
        raise TypeError(
            f"weighted_pool: features and masks must have the same dtype, got features {features.dtype} "
            f"and masks {masks.dtype}"
        )
    if features.device != masks.device:
        raise RuntimeError(
            f"weighted_pool: features and masks must be on the same device, got features on "
            f"{features.device} and masks on {masks.device}"
        )
    if not eps > 0:
        raise ValueError(f"weighted_pool: eps must be > 0, got {eps}")


def check_grad(grad: torch.Tensor, features: torch.Tensor, masks: torch.Tensor) -> None:
    """grad [B,P,C] of the backward, in features' dtype and on its device."""
    expected = [features.shape[0], masks.shape[1], features.shape[1]]
    if list(grad.shape) != expected:
        raise ValueError(
            f"weighted_pool backward: grad must have shape [B,P,C] = {expected}, got {_shape(grad)} "
            f"(features {_shape(features)}, masks {_shape(masks)})"
        )
    if grad.dtype != features.dtype:
        raise TypeError(
            f"weighted_pool backward: grad must have the dtype of features ({features.dtype}), got {grad.dtype}"
        )
    if grad.device != features.device:
        raise RuntimeError(
            f"weighted_pool backward: grad must be on the device of features ({features.device}), got {grad.device}"
        )
