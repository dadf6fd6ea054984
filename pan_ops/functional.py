"""`weighted_pool`: the public entry point, choosing a backend per call."""

import torch

from . import _library, reference, triton_kernels
from ._validation import check_inputs

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")


# GPU backends in the order "auto" tries them. Triton first: it is the GPU path measured
# and tested on a GPU so far (benchmarks/RESULTS.md); the CUDA C++ kernel is awaiting
# its first GPU run (benchmarks/gpu_check.sh).
AUTO_GPU_ORDER = ("triton", "cuda")


def available_backends(device: "str | torch.device | None" = None) -> list:
    """Backends that can run here (on `device`'s type when given); "auto" picks from these."""
    kinds = {"cpu", "cuda"} if device is None else {torch.device(device).type}
    names = []
    if "cuda" in kinds and torch.cuda.is_available():
        usable = {"cuda": _library.has_kernel("CUDA"), "triton": triton_kernels.AVAILABLE}
        names += [name for name in AUTO_GPU_ORDER if usable[name]]
    if "cpu" in kinds and triton_kernels.AVAILABLE and triton_kernels.INTERPRET:
        names.append("triton")
    if "cpu" in kinds and _library.has_kernel("CPU"):
        names.append("cpu")
    names.append("reference")
    return list(dict.fromkeys(names))


def _resolve(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"weighted_pool: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return next((n for n in available_backends("cuda") if n in AUTO_GPU_ORDER), "reference")
        return "cpu" if device.type == "cpu" and _library.has_kernel("CPU") else "reference"
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            raise RuntimeError(
                f"weighted_pool: backend={backend!r} needs {backend} tensors, got tensors on {device}"
            )
        if not _library.has_kernel(backend.upper()):
            raise RuntimeError(
                f"weighted_pool: the {backend} kernel is not available; the compiled extension "
                f"did not register it (extension error: {_library.EXTENSION_ERROR})"
            )
    if backend == "triton" and not triton_kernels.AVAILABLE:
        raise RuntimeError("weighted_pool: backend='triton' needs the triton package (pip install triton)")
    return backend


def _autocast(features, masks):
    """The autocast rule of the C++ op: under torch.autocast, floating inputs other than
    float64 go to the autocast dtype, as for a matmul."""
    if not (isinstance(features, torch.Tensor) and isinstance(masks, torch.Tensor)):
        return features, masks
    device_type = features.device.type
    if not torch.is_autocast_enabled(device_type):
        return features, masks
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t

    return cast(features), cast(masks)


def weighted_pool(features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """Mask-weighted average pooling of `features` [B,C,H,W] by `masks` [B,P,H,W] -> [B,P,C].

    out[b,p,c] = sum_hw F[b,c,h,w] M[b,p,h,w] / max(sum_hw |M[b,p,h,w]|, eps)

    Differentiable in both inputs. `backend` is "auto" (fastest for the device),
    "cpu", "cuda", "triton" or "reference" (pure PyTorch).
    """
    features, masks = _autocast(features, masks)
    check_inputs(features, masks, eps)
    name = _resolve(backend, features.device)
    if name in ("cpu", "cuda"):
        return torch.ops.pan_ops.weighted_pool(features, masks, eps)
    if name == "triton":
        return torch.ops.pan_ops.weighted_pool_triton(features, masks, eps)
    return reference.weighted_pool(features, masks, eps)


class WeightedPool(torch.autograd.Function):
    """The registered op as an autograd.Function, for code that composes Functions:
    ``WeightedPool.apply(features, masks, eps)`` (C++ kernels, no input checks beyond
    the op's own)."""

    @staticmethod
    def forward(features, masks, eps=1e-6):
        return torch.ops.pan_ops.weighted_pool(features, masks, eps)

    setup_context = staticmethod(_library.setup_context)
    backward = staticmethod(_library.backward)
