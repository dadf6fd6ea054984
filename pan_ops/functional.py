"""`weighted_pool`: the public entry point (the op, or the pure-PyTorch reference)."""

import torch

from . import _library, reference, triton_kernels
from ._validation import check_inputs
from .reference import DEFAULT_EPS

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")


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
    if backend == "reference" or (backend == "auto" and not _library.HAS_EXTENSION):
        check_inputs(features, masks, eps)
        return reference.weighted_pool(features, masks, eps)
    if not _library.HAS_EXTENSION:
        raise RuntimeError(
            f"weighted_pool: backend={backend!r} needs the compiled extension pan_ops._C, which did not "
            f"load ({_library.EXTENSION_ERROR}); backend='reference' needs nothing"
        )
    return torch.ops.pan_ops.weighted_pool(features, masks, eps, backend)


class WeightedPool(torch.autograd.Function):
    """The op as an autograd.Function, for code that composes Functions:
    ``WeightedPool.apply(features, masks, eps, backend)``, with the arguments of
    weighted_pool, backend="reference" included. Its backward is the op's own autograd
    formula (on the reference backend: autograd through the reference)."""

    @staticmethod
    def forward(features, masks, eps=DEFAULT_EPS, backend="auto"):
        if backend == "reference":
            check_inputs(features, masks, eps)
            return reference.weighted_pool(features, masks, eps)
        return torch.ops.pan_ops.weighted_pool(features, masks, eps, backend)

    setup_context = staticmethod(_library.setup_context)

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
