"""GPU timing table of pan_ops.weighted_pool against eager PyTorch and torch.compile.

For each shape and dtype: median forward and forward+backward times (CUDA events,
inputs rotated so the L2 cache does not hold them), achieved GB/s over the fewest
bytes the op must move, that figure as a share of the measured device-to-device copy
bandwidth, and peak extra memory of forward+backward. Then, at the PAN shape, the device
time of each kernel of the CUDA and Triton backends and the Triton configs autotuning chose.

    python benchmarks/op_timing.py                # full table
    python benchmarks/op_timing.py --quick        # main shape only
"""

import argparse
import datetime
import re
import statistics

import torch

import pan_ops
from pan_ops.reference import weighted_pool_naive

# (B, C, H, W, P): the PAN shape, a large batch, the PCB-like 24x8 with 6 stripes.
SHAPES = {"pan": (64, 2048, 16, 8, 14), "pan-b256": (256, 2048, 16, 8, 14), "pcb": (64, 2048, 24, 8, 6)}


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_cuda(lambda i: dst.copy_(src), rounds=20)
    return 2 * nbytes / (ms * 1e-3)


def time_cuda(fn, rounds: int = 50, warmup: int = 5) -> float:
    """Median milliseconds of one fn(i) call. The calls are captured in a CUDA graph and
    timed by replay with CUDA events, because at these sizes the host launches slower
    than the kernels run; the sets of inputs fn(i) rotates over keep L2 cold."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(warmup):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(rounds):
            fn(i)
    graph.replay()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / rounds)
    return statistics.median(times)


def min_bytes(shape, dtype, backward: bool) -> int:
    """Each input read once, each output written once (forward); plus backward's reads of
    F, M and g and writes of dF and dM."""
    B, C, H, W, P = shape
    e = torch.empty((), dtype=dtype).element_size()
    f, m, o = B * C * H * W * e, B * P * H * W * e, B * P * C * e
    return (f + m + o) + ((f + m + o) + (f + m) if backward else 0)


def implementations(dtype, with_compile: bool):
    impls = {}
    for name in ("cuda", "triton"):
        if name in pan_ops.available_backends("cuda"):
            impls[name] = lambda f, m, b=name: pan_ops.weighted_pool(f, m, backend=b)
    impls["einsum"] = lambda f, m: pan_ops.weighted_pool(f, m, backend="reference")
    impls["naive"] = weighted_pool_naive
    if with_compile:
        impls["compile(naive)"] = torch.compile(weighted_pool_naive, dynamic=False)
    return impls


def input_sets(shape, dtype, sets: int) -> list[tuple]:
    """`sets` random (features, masks, upstream gradient) triples on the GPU, the first two
    requiring grad."""
    B, C, H, W, P = shape
    inputs = []
    for _ in range(sets):
        f = torch.randn(B, C, H, W, device="cuda", dtype=dtype)
        m = torch.randn(B, P, H, W, device="cuda", dtype=dtype)
        g = torch.randn(B, P, C, device="cuda", dtype=dtype)
        inputs.append((f.requires_grad_(True), m.requires_grad_(True), g))
    return inputs


def forward_backward(fn, inputs, i: int) -> None:
    f, m, g = inputs[i % len(inputs)]
    torch.autograd.grad(fn(f, m), (f, m), g)


def measure(shape, dtype, impls, bw, sets: int):
    inputs = input_sets(shape, dtype, sets)
    rows = []
    for name, fn in impls.items():
        with torch.no_grad():
            fwd = time_cuda(lambda i: fn(inputs[i % sets][0], inputs[i % sets][1]))

        def fwd_bwd(i):
            forward_backward(fn, inputs, i)

        both = time_cuda(fwd_bwd)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd(0)
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append((name, fwd, both, peak_mib))
    return rows, [min_bytes(shape, dtype, b) / bw * 1e3 for b in (False, True)]


def kernel_split(fn, inputs, calls: int = 20) -> list[tuple[str, float]]:
    """Device time per kernel of one forward+backward call, in us, by kernel name (template
    arguments dropped), from the torch profiler: where the time of each implementation goes."""
    activity = torch.profiler.ProfilerActivity.CUDA
    with torch.profiler.profile(activities=[activity]) as prof:
        for i in range(calls):
            forward_backward(fn, inputs, i)
        torch.cuda.synchronize()
    totals = {}
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", 0.0)
        if us > 0:
            name = re.sub(r"<.*", "", event.key).split("::")[-1].split("(")[0].strip()
            name = name.removeprefix("void ") or event.key[:60]
            totals[name] = totals.get(name, 0.0) + us / calls
    return sorted(totals.items(), key=lambda item: -item[1])


def print_kernel_split(shape, dtype) -> None:
    inputs = input_sets(shape, dtype, 4)
    dname = str(dtype).replace("torch.", "")
    for name, fn in implementations(dtype, with_compile=False).items():
        if name not in ("cuda", "triton"):
            continue
        split = kernel_split(fn, inputs)
        print(f"- {name} {dname}: " + ", ".join(f"{kernel} {us:.1f} us" for kernel, us in split))
    if "triton" in pan_ops.available_backends("cuda"):
        from pan_ops import triton_kernels

        for kernel in (triton_kernels._forward_kernel, triton_kernels._backward_features_kernel):
            print(f"- triton {dname} {kernel.fn.__name__}: autotuned {getattr(kernel, 'best_config', None)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="main shape only, no torch.compile")
    args = parser.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, torch {torch.__version__}, {datetime.date.today()}, copy bandwidth {bw / 1e12:.2f} TB/s")
    print("| shape (B,C,H,W,P) | dtype | impl | fwd us | fwd GB/s | fwd % copy | fwd+bwd us | fwd+bwd GB/s | fwd+bwd % copy | peak extra MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    shapes = {"pan": SHAPES["pan"]} if args.quick else SHAPES
    for key, shape in shapes.items():
        for dtype in (torch.float32, torch.bfloat16):
            impls = implementations(dtype, with_compile=(key == "pan" and not args.quick))
            if key != "pan":
                impls.pop("naive")
            # enough input sets that they do not fit in L2 together
            sets = max(2, int(4 * props.L2_cache_size // max(1, min_bytes(shape, dtype, False))) + 1)
            rows, floors = measure(shape, dtype, impls, bw, min(sets, 8))
            dname = str(dtype).replace("torch.", "")
            for name, fwd, both, peak in rows:
                gbf = min_bytes(shape, dtype, False) / (fwd * 1e-3) / 1e9
                gbb = min_bytes(shape, dtype, True) / (both * 1e-3) / 1e9
                print(f"| {shape} | {dname} | {name} | {fwd * 1e3:.1f} | {gbf:.0f} | {100 * gbf * 1e9 / bw:.0f}% "
                      f"| {both * 1e3:.1f} | {gbb:.0f} | {100 * gbb * 1e9 / bw:.0f}% | {peak:.0f} |")
            print(f"| {shape} | {dname} | floor (min bytes / copy bw) | {floors[0] * 1e3:.1f} | | 100% | {floors[1] * 1e3:.1f} | | 100% | |")
    print(f"\nDevice time per kernel of one forward+backward at {SHAPES['pan']} (torch profiler):")
    for dtype in (torch.float32, torch.bfloat16):
        print_kernel_split(SHAPES["pan"], dtype)


if __name__ == "__main__":
    main()
