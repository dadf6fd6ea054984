"""Small GPU workloads for the tools of tools/gpu_check.sh that watch kernels from outside.

    compute-sanitizer --tool memcheck python -m tools.gpu_probe sanitize
    ncu --profile-from-start off ... python -m tools.gpu_probe profile

sanitize: the CUDA backend's forward and backward once on each kernel path (part tiers and
chunks, both layouts with and without 16-byte access, a strided view, float64 and half
types, a masks tile split), on small odd shapes so that the sanitizer's slowdown stays
small; each result is compared with the float64 reference, so a path that reads the wrong
memory without faulting still fails.

profile: one forward+backward of the CUDA and Triton backends at the PAN shape (fp32 NCHW and
channels_last, bf16 NCHW), inside torch.cuda.profiler.start()/stop() after a warm-up (so
Triton has autotuned and ncu sees only the measured calls).
"""

import sys

import torch

import pan_ops
from tools.op_check import check_backend, make_inputs

# (B, C, H, W, P, dtype, layout): every register tier and a chunked one, 16-byte and scalar
# access in both layouts, a strided view, large HW (the forward's mask tiles), double.
SANITIZE_CASES = [
    (2, 37, 5, 3, 4, torch.float32, "contiguous"),
    (2, 64, 4, 4, 14, torch.float32, "contiguous"),
    (3, 48, 3, 5, 30, torch.bfloat16, "channels_last"),
    (2, 40, 4, 2, 37, torch.float16, "contiguous"),
    (2, 33, 7, 3, 9, torch.float32, "strided"),
    (1, 24, 60, 40, 14, torch.float32, "contiguous"),
    (2, 20, 3, 3, 11, torch.float64, "channels_last"),
]


def sanitize(device: str = "cuda", backend: str = "cuda") -> None:
    for B, C, H, W, P, dtype, layout in SANITIZE_CASES:
        check_backend(backend, device, (B, C, H, W, P), dtype, layout, seed=B * C + P)
        print(f"ok {backend} {B},{C},{H},{W},{P} {dtype} {layout}", flush=True)


def profile() -> None:
    B, C, H, W, P = 64, 2048, 16, 8, 14
    backends = [name for name in ("cuda", "triton") if name in pan_ops.available_backends("cuda")]
    # channels_last fp32: the Triton forward measured at 36% of the floor there (benchmarks/RESULTS.md).
    for dtype, layout in ((torch.float32, "contiguous"), (torch.float32, "channels_last"), (torch.bfloat16, "contiguous")):
        features, masks = make_inputs(B, C, H, W, P, dtype, "cuda", layout, seed=0)
        features.requires_grad_(True)
        masks.requires_grad_(True)
        grad = torch.randn(B, P, C, device="cuda", dtype=dtype)
        for backend in backends:

            def step():
                out = pan_ops.weighted_pool(features, masks, backend=backend)
                torch.autograd.grad(out, (features, masks), grad)

            for _ in range(3):  # autotuning and caches before the profiled call
                step()
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
            step()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            print(f"profiled {backend} {dtype} {layout}", flush=True)


if __name__ == "__main__":
    modes = {"sanitize": sanitize, "profile": profile}
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        sys.exit(f"usage: python -m tools.gpu_probe {'|'.join(modes)}")
    modes[sys.argv[1]]()
