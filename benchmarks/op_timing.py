"""GPU timing of pan_ops.weighted_pool's backends side by side, at the PAN shapes.

Implementations: the eager reference (pan_ops.reference.weighted_pool: einsum, abs-sum,
divide), torch.compile of that reference (PAN shape, fp32 and bf16: each compile takes tens
of seconds), and the op's "cuda" and "triton" backends, called as
pan_ops.weighted_pool(features, masks, eps, backend=name), where available.

For each case (shape, dtype, layout) and implementation: median forward and forward+backward
time (benchmarks/cuda_timer.py: a CUDA graph of 50 calls replayed between CUDA events, input
sets rotated so that L2 does not hold them), each as a share of its floor (the fewest bytes
the op must move over the measured device-to-device copy bandwidth), and the peak extra
memory of forward+backward. Then, at the PAN shape, the device time of each kernel of the
CUDA and Triton backends (torch profiler) and the configs Triton's autotuning chose.

    python -m benchmarks.op_timing                          # every case
    python -m benchmarks.op_timing --quick                  # PAN shape, fp32 and bf16, no torch.compile
    python -m benchmarks.op_timing --json op_timing.json    # also the results as JSON

Prints a markdown table as it goes; the JSON file is rewritten after each case, so a run
stopped by a timeout keeps what it measured.
"""

import argparse
import datetime
import json
import re

import torch

import pan_ops
from benchmarks.cuda_timer import median_ms

# Calls per CUDA graph, and graph replays whose median is reported.
ROUNDS, REPEATS = 50, 5
from pan_ops import reference

try:
    import triton
except ImportError:  # the CUDA backend and the reference run without it
    triton = None

EPS = 1e-6
PAN = (64, 2048, 16, 8, 14)  # B, C, H, W, P
# In order of value, so that a run cut short has the first: the PAN shape in the model's
# dtypes and both layouts, a large batch, PCB's 24 x 8 map with 6 stripes, then fp16 and fp64.
CASES = [
    (PAN, torch.float32, "contiguous"),
    (PAN, torch.bfloat16, "contiguous"),
    (PAN, torch.float32, "channels_last"),
    (PAN, torch.bfloat16, "channels_last"),
    ((256, 2048, 16, 8, 14), torch.float32, "contiguous"),
    ((256, 2048, 16, 8, 14), torch.bfloat16, "contiguous"),
    ((64, 2048, 24, 8, 6), torch.float32, "contiguous"),
    ((64, 2048, 24, 8, 6), torch.bfloat16, "contiguous"),
    (PAN, torch.float16, "contiguous"),
    ((16, 2048, 16, 8, 14), torch.float64, "contiguous"),
]
COMPILED_CASES = CASES[:2]
QUICK_CASES = CASES[:2]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda i: dst.copy_(src), rounds=20, graph=True)
    return 2 * nbytes / (ms * 1e-3)


def min_bytes(shape, dtype, backward: bool) -> int:
    """Each input read once, each output written once (forward); plus backward's reads of
    F, M and g and writes of dF and dM."""
    B, C, H, W, P = shape
    e = torch.empty((), dtype=dtype).element_size()
    f, m, o = B * C * H * W * e, B * P * H * W * e, B * P * C * e
    return (f + m + o) + ((f + m + o) + (f + m) if backward else 0)


def implementations(compiled=None) -> dict:
    """name -> fn(features, masks)."""
    impls = {"reference": reference.weighted_pool}
    if compiled is not None:
        impls["compile(reference)"] = compiled
    for name in ("cuda", "triton"):
        if name in pan_ops.available_backends("cuda"):
            impls[name] = lambda f, m, backend=name: pan_ops.weighted_pool(f, m, EPS, backend=backend)
    return impls


def input_sets(shape, dtype, layout: str, count: int) -> list[tuple]:
    """`count` random (features, masks, upstream gradient) triples on the GPU, the first two
    in `layout` and requiring grad."""
    B, C, H, W, P = shape
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    sets = []
    for _ in range(count):
        f = torch.randn(B, C, H, W, device="cuda", dtype=dtype).contiguous(memory_format=memory_format)
        m = torch.randn(B, P, H, W, device="cuda", dtype=dtype).contiguous(memory_format=memory_format)
        g = torch.randn(B, P, C, device="cuda", dtype=dtype)
        sets.append((f.requires_grad_(True), m.requires_grad_(True), g))
    return sets


def steps(fn, inputs):
    """fn's forward and forward+backward on the i-th input set (modulo their number)."""

    def forward(i):
        f, m, _ = inputs[i % len(inputs)]
        fn(f, m)

    def forward_backward(i):
        f, m, g = inputs[i % len(inputs)]
        torch.autograd.grad(fn(f, m), (f, m), g)

    return forward, forward_backward


def peak_extra_mib(step) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(0)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_case(shape, dtype, layout: str, impls: dict, bandwidth: float) -> dict:
    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    # enough input sets that they do not fit in L2 together
    count = min(8, max(2, 4 * l2_bytes // min_bytes(shape, dtype, False) + 1))
    inputs = input_sets(shape, dtype, layout, count)
    case = {
        "shape": list(shape),
        "dtype": dtype_name(dtype),
        "layout": layout,
        "floor_us": {
            "forward": min_bytes(shape, dtype, False) / bandwidth * 1e6,
            "forward_backward": min_bytes(shape, dtype, True) / bandwidth * 1e6,
        },
        "impls": {},
    }
    for name, fn in impls.items():
        forward, forward_backward = steps(fn, inputs)
        with torch.no_grad():
            forward_ms = median_ms(forward, rounds=ROUNDS, repeats=REPEATS, graph=True)
        case["impls"][name] = {
            "forward_us": forward_ms * 1e3,
            "forward_backward_us": median_ms(forward_backward, rounds=ROUNDS, repeats=REPEATS, graph=True) * 1e3,
            "peak_extra_mib": peak_extra_mib(forward_backward),
        }
    return case


def markdown_rows(case: dict) -> list[str]:
    head = f"| {','.join(map(str, case['shape']))} | {case['dtype']} | {case['layout']}"
    floor = case["floor_us"]
    rows = []
    for name, r in case["impls"].items():
        fwd, both = r["forward_us"], r["forward_backward_us"]
        rows.append(
            f"{head} | {name} | {fwd:.1f} | {100 * floor['forward'] / fwd:.0f}% | {both:.1f} "
            f"| {100 * floor['forward_backward'] / both:.0f}% | {r['peak_extra_mib']:.1f} |"
        )
    rows.append(f"{head} | floor | {floor['forward']:.1f} | 100% | {floor['forward_backward']:.1f} | 100% | |")
    return rows


def kernel_split(fn, inputs, calls: int = 20) -> dict:
    """Device time per kernel of one forward+backward call, in us, by kernel name (template
    arguments dropped), from the torch profiler: where each backend's time goes."""
    _, forward_backward = steps(fn, inputs)
    forward_backward(0)  # autotuning outside the profile
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            forward_backward(i)
        torch.cuda.synchronize()
    totals = {}
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", 0.0)
        if us > 0:
            name = re.sub(r"<.*", "", event.key).split("::")[-1].split("(")[0].strip()
            name = name.removeprefix("void ") or event.key[:60]
            totals[name] = totals.get(name, 0.0) + us / calls
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def autotuned_configs() -> dict:
    """{kernel: {tuning key (sizes, dtypes): chosen config}} of the Triton kernels run so far."""
    if "triton" not in pan_ops.available_backends("cuda"):
        return {}
    from triton.runtime.autotuner import Autotuner

    from pan_ops import triton_kernels

    return {
        name: {str(key): str(config) for key, config in kernel.cache.items()}
        for name, kernel in vars(triton_kernels).items()
        if isinstance(kernel, Autotuner)
    }


def save(results: dict, path) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="PAN shape in fp32 and bf16 only, no torch.compile")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__ if triton else None,
        "date": str(datetime.date.today()),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "timer": f"median of {REPEATS} replays of a CUDA graph of {ROUNDS} calls, CUDA events "
        "(benchmarks/cuda_timer.py)",
        "cases": [],
        "kernels_us": {},
        "autotuned": {},
    }
    print(f"# {results['device']}, torch {torch.__version__}, triton {results['triton']}, {results['date']}, "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")  # fmt: skip
    print("| shape (B,C,H,W,P) | dtype | layout | impl | fwd us | fwd % of floor | fwd+bwd us | fwd+bwd % of floor | peak extra MiB |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    compiled = None if args.quick else torch.compile(reference.weighted_pool, dynamic=False)
    for shape, dtype, layout in QUICK_CASES if args.quick else CASES:
        impls = implementations(compiled if (shape, dtype, layout) in COMPILED_CASES else None)
        case = time_case(shape, dtype, layout, impls, bandwidth)
        results["cases"].append(case)
        print("\n".join(markdown_rows(case)), flush=True)
        save(results, args.json)

    print(f"\nDevice time per kernel of one forward+backward at {PAN} (torch profiler):")
    backends = {name: fn for name, fn in implementations().items() if name in ("cuda", "triton")}
    for dtype in (torch.float32, torch.bfloat16):
        inputs = input_sets(PAN, dtype, "contiguous", 4)
        for name, fn in backends.items():
            split = kernel_split(fn, inputs)
            results["kernels_us"][f"{name} {dtype_name(dtype)}"] = split
            print(f"- {name} {dtype_name(dtype)}: " + ", ".join(f"{k} {us:.1f} us" for k, us in split.items()))
    results["autotuned"] = autotuned_configs()
    print("\nTriton autotuning's choices (kernel, key: config):")
    for kernel, chosen in results["autotuned"].items():
        for key, config in chosen.items():
            print(f"- {kernel} {key}: {config}")
    save(results, args.json)


if __name__ == "__main__":
    main()
