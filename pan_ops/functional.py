"""`weighted_pool`: the public entry point (the op, or the pure-PyTorch reference)."""

import contextlib
from typing import Iterator

import torch

from . import _library, reference, triton_kernels
from ._validation import check_backend, check_inputs
from .reference import DEFAULT_EPS

# The backend every call runs on inside force_backend(), whatever it asked for; None outside.
# A module global (not a context variable) so that torch.compile guards on it.
_forced_backend = None


@contextlib.contextmanager
def force_backend(backend: str) -> Iterator[None]:
    """Run every pan_ops.weighted_pool call in the block on `backend`, whatever backend the
    caller (e.g. a model's pool_backend) asked for, as torch.nn.attention.sdpa_kernel does for
    attention: export_onnx uses force_backend("reference") so that the file holds standard ops.
    Process-wide, not per thread."""
    global _forced_backend
    saved, _forced_backend = _forced_backend, check_backend(backend)
    try:
        yield
    finally:
        _forced_backend = saved


def available_backends(device: "str | torch.device | None" = None) -> list:
    """Backends that can run here (on `device`'s type when given), the one "auto" picks first."""
    kinds = {"cpu", "cuda"} if device is None else {torch.device(device).type}
    names = []
    if "cuda" in kinds and torch.cuda.is_available():
        names += ["triton"] if _library.HAS_TRITON else []
        names += ["cuda"] if _library.has_kernel("CUDA") else []
    if "cpu" in kinds:
        names += ["cpu"] if _library.has_kernel("CPU") else []
        names += ["triton"] if _library.HAS_TRITON and triton_kernels.INTERPRET else []
    names.append("reference")
    return list(dict.fromkeys(names))


def cpu_capability() -> "str | None":
    """The instruction-set level the C++ CPU kernel runs at in this process (docs/DESIGN.md §4):
    "default" (the architecture's baseline: SSE2 on x86-64), "avx2" or "avx512". It is chosen
    once, as torch chooses its own CPU kernels: the best level this build compiled that
    torch.backends.cpu.get_cpu_capability() allows, so ATEN_CPU_CAPABILITY=default|avx2|avx512,
    set before the process starts, forces both. A PAN_OPS_MARCH build has one level,
    "march=<its value>". None without the compiled CPU kernel."""
    if not _library.has_kernel("CPU"):
        return None
    return torch.ops.pan_ops._cpu_capability()


def weighted_pool(features: torch.Tensor, masks: torch.Tensor, eps: float = DEFAULT_EPS, backend: str = "auto") -> torch.Tensor:
    """Mask-weighted average pooling of `features` [B,C,H,W] by `masks` [B,P,H,W] -> [B,P,C]
    (contract: docs/DESIGN.md §2). Differentiable in both inputs.

    `backend`: "auto" (CPU tensors: the C++ kernel; CUDA tensors: Triton when installed,
    else the CUDA C++ kernel), "cpu", "cuda", "triton", or "reference" (pure PyTorch).
    Every backend but "reference" is torch.ops.pan_ops.weighted_pool.
    """
    backend = _chosen_backend(backend)
    if backend == "reference":
        check_inputs(features, masks, eps)
        return reference.weighted_pool(features, masks, eps)
    return torch.ops.pan_ops.weighted_pool(features, masks, eps, backend)


def _chosen_backend(backend: str) -> str:
    """The backend a call runs on: force_backend's if one is in force, else the checked
    `backend`, with "auto" meaning the reference where the extension did not load."""
    backend = _forced_backend or check_backend(backend)
    if _library.HAS_EXTENSION or backend == "reference":
        return backend
    if backend == "auto":
        return "reference"
    raise RuntimeError(
        f"weighted_pool: backend={backend!r} needs the compiled extension pan_ops._C, which did not "
        f"load ({_library.EXTENSION_ERROR}); backend='reference' needs nothing"
    )


class WeightedPool(torch.autograd.Function):
    """The op as an autograd.Function, for code that composes Functions:
    ``WeightedPool.apply(features, masks, eps, backend)``, with the arguments of
    weighted_pool, backend="reference" included. Its backward is the op's own autograd
    formula (on the reference backend: autograd through the reference)."""

    @staticmethod
    def forward(features, masks, eps=DEFAULT_EPS, backend="auto"):
        return weighted_pool(features, masks, eps, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _library.setup_context(ctx, inputs, output)
        ctx.backend = _chosen_backend(ctx.backend)  # the one forward ran on

    @staticmethod
    def backward(ctx, grad):
        if ctx.backend != "reference":
            return _library.backward(ctx, grad)
        features, masks = ctx.saved_tensors
        wanted = [i for i in (0, 1) if ctx.needs_input_grad[i]]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(i in wanted) for i, t in enumerate((features, masks))]
            out = reference.weighted_pool(*inputs, ctx.eps)
            grads = iter(torch.autograd.grad(out, [inputs[i] for i in wanted], grad))
        return (*(next(grads) if i in wanted else None for i in (0, 1)), None, None)
